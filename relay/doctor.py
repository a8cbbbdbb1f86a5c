"""``qwen-relay doctor``: check the way to Qwen Chat and one account, one step at a time.

Steps, in the order a relayed request needs them: the egress (DNS, TCP, TLS; or
the proxy and its tunnel), the API without a login (``GET /api/models``: a WAF
page here means the egress IP is flagged), the access token's ``exp``, a refresh
at the auth host, chat creation, a one-word streamed completion, chat deletion.
Each prints ``✓``/``✗``, its name, its duration and a diagnosis; the first failure
ends the run (exit 1), all passing exits 0. ``--json`` prints the same as one object.

The refresh is real, and a refresh token is single-use (docs/qwen-protocol.md
§7.1): the doctor first resumes the jar the relay persisted (``--state-dir`` or
``--state redis://``), refreshes through the relay's own ``Refresher`` (which
takes the fleet's refresh lock and saves the rotated jar), so neither the relay
nor the next doctor run is left holding a spent refresh token.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .accounts.credential import CookieJar, Credential
from .accounts.refresh import Refresher
from .accounts.store import AccountStore, default_state_dir, source_digest
from .calls import Calls
from .config import DEFAULT_AUTH_ORIGIN, EMULATOR_UPSTREAM, Config
from .dialects import UpstreamCall, get_dialect
from .dialects.v2_errors import payload_error
from .dialects.web_headers import WebHeaders
from .doctor_checks import (
    CheckFailed,
    RefreshLog,
    Seen,
    account_credential,
    any_answer,
    bare_headers,
    chat_request,
    diagnose,
    dns,
    models_anonymously,
    split_address,
    split_origin,
    stream_answer,
    tcp,
    tls,
    token_expiry_check,
    tunnel,
)
from .errors import RelayError
from .login import relay_config
from .operator.config import AccountSpec
from .state import StateBackend, open_state
from .upstream import Egress, UpstreamClient
from .upstream.recording import Recorder

__all__ = ["main"]

Step = Callable[[], Awaitable[str]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-relay doctor",
        description="Check the egress, the login and one chat against Qwen Chat, step by step.",
        epilog="Any other relay flag (--state-dir, --state, --web-version, --timeout …) is accepted as well.")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--account", metavar="NAME", help="the [[operator.accounts]] entry (default: the first)")
    who.add_argument("--token", metavar="TOKEN", help="a bare access token instead (no refresh check)")
    parser.add_argument("--config", metavar="FILE", help="the relay's config file (env QWEN_RELAY_CONFIG)")
    parser.add_argument("--upstream", metavar="URL", help="Qwen Chat's origin (default https://chat.qwen.ai)")
    parser.add_argument("--auth-origin", metavar="URL", help=f"the auth host (default {DEFAULT_AUTH_ORIGIN})")
    parser.add_argument("--proxy", metavar="URL", help="egress proxy for a token or account without its own")
    parser.add_argument("--model", help="the model to ask (default: the first one listed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--record", metavar="DIR",
                        help="write this run's upstream exchanges, secrets replaced, into DIR (as the relay's --record)")
    return parser


@dataclasses.dataclass(slots=True)
class _Report:
    as_json: bool
    config: Config
    seen: Seen
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks)

    async def run(self, name: str, step: Step) -> bool:
        """Run, time and print one check; False when it failed."""
        started = time.perf_counter()
        try:
            detail, ok = await step(), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except (RelayError, OSError, ValueError) as exc:  # OSError: TimeoutError too
            detail, ok = diagnose(exc, self.seen, self.config), False
        ms = round((time.perf_counter() - started) * 1000, 1)
        self.checks.append({"name": name, "ok": ok, "ms": ms, "detail": detail})
        if not self.as_json:
            print(f"{'✓' if ok else '✗'} {name:<12} {ms:>7.1f} ms  {detail}", flush=True)
        return ok

    def render_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": self.checks}, ensure_ascii=False)


async def _diagnose_all(config: Config, credential: Credential, account: AccountSpec | None,
                        model: str | None, report: _Report, log: RefreshLog) -> None:
    origin = config.upstream
    egress = Egress.from_config(config)
    seen = report.seen
    dialect = get_dialect(config.dialect, config)
    # --record (Config.record_dir): every exchange of this run, as the relay records its own.
    recorder = Recorder(config.record_dir) if config.record_dir is not None else None
    client = UpstreamClient(origin, config, refusal=seen.refusal, egress=egress, recorder=recorder)
    probe = UpstreamClient(origin, config, refusal=any_answer, egress=egress, recorder=recorder)
    auth_origin = config.auth_origin or DEFAULT_AUTH_ORIGIN
    auth_client = UpstreamClient(auth_origin, config, refusal=seen.refusal, egress=egress, follow_redirects=True,
                                 recorder=recorder)
    web = WebHeaders(origin, config)
    calls = Calls(client, dialect, config)
    state: StateBackend = open_state(config.state, config.state_timeout_s, config.state_lease_s)
    state_dir = config.state_dir or default_state_dir()
    store = AccountStore(state, state_dir)
    source = source_digest(account.cookies.reveal()) if account is not None else ""
    anonymous = bare_headers(web.for_call(dialect.models_call(), Credential("doctor", CookieJar())))
    chat: list[UpstreamCall] = []
    deleted = False
    timeout_s = config.timeouts.upstream_s
    try:
        if account is not None:  # resume the jar the relay rotated: its refresh token is the live one
            stored = await store.load(account.name, source)
            if stored is not None:
                credential.jar.update(stored.as_dict())

        route_proxy: list[str | None] = []

        async def route() -> str:
            route_proxy.append(egress.route(origin, credential.proxy).proxy)
            return f"through the proxy {route_proxy[0]}" if route_proxy[0] else "direct (no proxy)"

        if not await report.run("egress", route):
            return
        if route_proxy[0] is None:
            host, port = split_origin(origin)
            resolved: list[str] = []

            async def resolve() -> str:
                detail, addresses = await dns(host, port, timeout_s)
                resolved.extend(addresses)
                return detail

            steps: list[tuple[str, Step]] = [("dns", resolve), ("tcp", lambda: tcp(resolved, port, timeout_s))]
            if origin.startswith("https://"):
                steps.append(("tls", lambda: tls(host, port, config)))
        else:
            proxy_host, proxy_port = split_address(route_proxy[0])
            addresses_p: list[str] = []

            async def resolve_proxy() -> str:
                detail, addresses = await dns(proxy_host, proxy_port, timeout_s)
                addresses_p.extend(addresses)
                return detail

            steps = [("proxy_dns", resolve_proxy),
                     ("proxy_tcp", lambda: tcp(addresses_p, proxy_port, timeout_s, "the proxy at ")),
                     ("tunnel", lambda: tunnel(probe, credential.proxy, anonymous))]
        for name, step in steps:
            if not await report.run(name, step):
                return

        first_model: list[str | None] = [model]

        async def models() -> str:
            detail, listed = await models_anonymously(client, dialect.models_call().path, anonymous, seen, config)
            first_model[0] = first_model[0] or listed
            return detail

        async def token() -> str:
            return token_expiry_check(credential, account is None)

        async def refresh() -> str:
            if account is None:
                return "skipped: a bare --token has no refresh token"
            if not credential.can_refresh:
                return "skipped: the account's jar has no refresh_token"
            seen.clear()
            outcome = await Refresher(auth_client, web.for_refresh, store).refresh(
                account.name, source, credential)
            if outcome == "ok":
                kept = "in the state backend" if state.keeps_accounts else f"under {state_dir}/accounts"
                return (f"new access token, valid {credential.expires_in_s() or 0:.0f} s; the rotated jar is "
                        f"saved {kept}")
            if outcome == "rejected":
                raise CheckFailed("the auth host refused the refresh token (spent or revoked): the login is "
                                  "gone: run `qwen-relay login`")
            if outcome == "challenged":
                raise CheckFailed(diagnose(_challenge(), seen, config))
            raise CheckFailed(f"the refresh at {auth_origin} failed ({log.refresh_error()}); check --auth-origin "
                              "and the egress")

        async def new_chat() -> str:
            seen.clear()
            if first_model[0] is None:
                listed = dialect.models(await calls.send_json(dialect.models_call(), credential))
                first_model[0] = listed[0]["id"] if listed else None
            if first_model[0] is None:
                raise CheckFailed("Qwen Chat lists no models for this login")
            request, options = chat_request(first_model[0])
            chat.append(await dialect.prepare(request, options, calls.sender(credential)))
            return f"chat {chat[0].chat_id} created for {first_model[0]}"

        async def complete() -> str:
            seen.clear()
            return await stream_answer(calls, chat[0], credential, config)

        async def delete() -> str:
            nonlocal deleted
            seen.clear()
            call = dialect.delete_call(chat[0])
            if call is None:
                return "skipped: this dialect makes no chats"
            deleted = True
            error = payload_error(await calls.send_json(call, credential))
            if error is not None:
                raise error
            return f"chat {chat[0].chat_id} deleted"

        for name, step in (("models", models), ("token", token), ("refresh", refresh), ("chat_new", new_chat),
                           ("completion", complete), ("chat_delete", delete)):
            if not await report.run(name, step):
                return
    finally:
        if chat and not deleted and (call := dialect.delete_call(chat[0])) is not None:
            try:  # best effort: a failed run should not leave its chat in the account
                await calls.send_json(call, credential)
            except RelayError:
                pass
        for closing in (client, probe, auth_client):
            await closing.close()
        await egress.close()
        if recorder is not None:
            await recorder.close()  # the last files are written before the report ends
        await state.close()


def _challenge() -> RelayError:
    from .dialects.v2_errors import challenge

    return challenge("the refresh")


def _select(config: Config, args: argparse.Namespace) -> tuple[Credential, AccountSpec | None]:
    if args.token:
        return Credential.bare(args.token), None
    accounts = config.operator.accounts
    if not accounts:
        raise ValueError("no account to check: give --token, or --config with [[operator.accounts]] "
                         "(`qwen-relay login` writes one)")
    chosen = accounts[0] if args.account is None else next((a for a in accounts if a.name == args.account), None)
    if chosen is None:
        raise ValueError(f"no account {args.account!r}; configured: {', '.join(a.name for a in accounts)}")
    return account_credential(chosen), chosen


def main(argv: Sequence[str]) -> int:
    args, rest = _parser().parse_known_args(list(argv))
    config = relay_config(args, rest)
    if config.upstream == EMULATOR_UPSTREAM or config.dialect != "qwen-v2":
        print("qwen-relay doctor: checks a qwen-v2 upstream by its URL (--upstream https://chat.qwen.ai)",
              file=sys.stderr)
        return 2
    try:
        credential, account = _select(config, args)
    except ValueError as exc:
        print(f"qwen-relay doctor: {exc}", file=sys.stderr)
        return 2
    # One attempt per call: a diagnosis at once, not after the relay's backoff.
    config = dataclasses.replace(config, retries=1)
    report = _Report(args.json, config, Seen())
    log = RefreshLog()
    upstream_log = logging.getLogger("relay.upstream")
    upstream_log.addHandler(log)
    propagated = upstream_log.propagate
    upstream_log.propagate = False  # the report says what these say: no stderr noise
    try:
        asyncio.run(_diagnose_all(config, credential, account, args.model, report, log))
    finally:
        upstream_log.removeHandler(log)
        upstream_log.propagate = propagated
    if args.json:
        print(report.render_json())
    return 0 if report.ok else 1
