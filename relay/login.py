"""``qwen-relay login``: sign an account in at the auth host and keep its jar in the accounts file.

Qwen Chat signs in at ``{auth-origin}/api/v2/auths/signin`` with the password's
sha256 hex (docs/qwen-protocol.md §7.1); the answer's ``Set-Cookie`` headers are the
login's jar (``token``, ``refresh_token``, ``acw_tc``, ``x-ap``…), which must travel
together from then on. The jar goes into ``[[operator.accounts]]`` of the accounts
file (mode 0600, written atomically), where the relay's pool keeps it signed in.

Why one attempt and no retry: every sign-in counts toward the service's rate wall
(about 12 in 6 minutes end in the WAF page), and the WAF or the risk-control JSON
means the service wants a browser. Then the manual steps are printed: the same jar,
and the bx-* bundle a plain client cannot make, copied from the browser.

The password is read from a TTY prompt or one line of stdin, never from an
argument (shell history, ``ps``); neither it nor any token is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import hashlib
import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from .accounts.credential import CookieJar, Credential
from .accounts.store import write_private
from .config import DEFAULT_AUTH_ORIGIN, Config
from .dialects.v2_errors import payload_error
from .dialects.v2_errors import refusal as v2_refusal
from .dialects.web_headers import WebHeaders
from .errors import AuthenticationFailed, RelayError, UpstreamChallenge, UpstreamUnavailable
from .operator.config import check_private_file, parse_accounts
from .upstream import UpstreamClient

__all__ = ["SIGNIN_PATH", "LoginFailed", "main", "manual_steps", "relay_config"]

SIGNIN_PATH = "/api/v2/auths/signin"
_DEFAULT_ACCOUNTS_FILE = "accounts.toml"
_ENV_CONFIG = "QWEN_RELAY_CONFIG"
#: the relay flags these commands also take, forwarded to the relay's own parser.
_FORWARDED = ("config", "proxy", "auth_origin", "upstream", "record")
_HEADER = ("# Qwen Chat logins of qwen-relay (written by `qwen-relay login`). Secrets: keep this file\n"
           "# at mode 0600; point [operator] accounts_file at it.\n")


class LoginFailed(Exception):
    """A sign-in that did not produce a jar; the message says what to do instead."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-relay login",
        description="Sign a Qwen Chat account in and add its cookie jar to the accounts file. The password "
                    "is read from a prompt, or from one line of stdin when stdin is not a terminal.",
        epilog="Any other relay flag (--web-version, --timeout, --state-dir …) is accepted as well.")
    parser.add_argument("--email", required=True, help="the Qwen Chat account's email address")
    parser.add_argument("--name", required=True, help="the account's name in [[operator.accounts]]")
    parser.add_argument("--proxy", help="sign in through this proxy, and give the account this egress")
    parser.add_argument("--config", metavar="FILE", help="the relay's config file (env QWEN_RELAY_CONFIG)")
    parser.add_argument("--auth-origin", metavar="URL", help=f"the auth host (default {DEFAULT_AUTH_ORIGIN})")
    parser.add_argument("--accounts-file", metavar="PATH",
                        help="where to write (default: the config's [operator] accounts_file, else "
                             f"./{_DEFAULT_ACCOUNTS_FILE})")
    return parser


def relay_config(args: argparse.Namespace, rest: Sequence[str]) -> Config:
    """The relay's Config from the forwarded flags and the rest (exit 2 on bad input, as the relay)."""
    from .cli import parse_config

    argv = [*rest]
    for name in _FORWARDED:
        value = getattr(args, name, None)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), value]
    return parse_config(argv)


def manual_steps(name: str, path: str, proxy: str | None) -> str:
    """The browser route to the same jar, and the exact block to paste."""
    shown_proxy = None
    if proxy is not None:
        shown_proxy = "<your proxy URL>" if "@" in urlsplit(proxy).netloc else proxy  # never echo a password
    block = [
        "[[operator.accounts]]",
        f"name = {json.dumps(name)}",
        'cookies = "<the whole Cookie value>"',
        'bx_ua = "<the bx-ua value>"',
        'bx_umidtoken = "<the bx-umidtoken value>"',
        'bx_v = "<the bx-v value>"',
        *([f"proxy = {json.dumps(shown_proxy)}"] if shown_proxy is not None else []),
    ]
    return "\n".join([
        "  1. Sign in at https://chat.qwen.ai in a desktop browser.",
        "  2. Open the developer tools (F12) → Network, and reload the page.",
        ("  3. Click any request to chat.qwen.ai/api/… → Request Headers: copy the whole `Cookie:` value "
        "(it must contain token= and refresh_token=)."),
        ("  4. Send one message in the chat, then click a POST request such as chat/completions → Request "
        "Headers: copy the `bx-ua`, `bx-umidtoken` and `bx-v` values."),
        f"  5. Add this block to {path} (mode 0600: chmod 600 {path}), the copied values pasted in:",
        "",
        *block,
        "",
        f'  6. Point [operator] accounts_file at {path}, set mode = "pool", and reload the relay.',
    ])


def _accounts_path(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, bool]:
    """``--accounts-file``, else the config's ``[operator] accounts_file``, else ./accounts.toml;
    and whether the config named it.

    Read from the raw TOML: the relay's loader would refuse a file that does not exist yet.
    """
    if args.accounts_file:
        return str(args.accounts_file), False
    config_path = args.config or environ.get(_ENV_CONFIG)
    if config_path:
        try:
            operator = tomllib.loads(Path(config_path).read_text(encoding="utf-8")).get("operator")
        except (OSError, UnicodeDecodeError, ValueError):
            operator = None  # the relay's loader reports it, with the line
        named = operator.get("accounts_file") if isinstance(operator, dict) else None
        if isinstance(named, str) and named:
            return named, True
    return _DEFAULT_ACCOUNTS_FILE, False


def _read_accounts(path: str) -> list[dict[str, Any]]:
    """The ``[[operator.accounts]]`` tables of an existing 0600 file ([] when there is none)."""
    if not os.path.lexists(path):
        return []
    try:
        check_private_file(path)
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise LoginFailed(f"{exc}; nothing was written.") from exc
    operator = data.get("operator", {})
    accounts = operator.get("accounts", []) if isinstance(operator, dict) else None
    if set(data) - {"operator"} or not isinstance(operator, dict) or set(operator) - {"accounts"} \
            or not isinstance(accounts, list):
        raise LoginFailed(f"{path} is not an accounts file (it may hold only [[operator.accounts]] tables); "
                          "nothing was written.")
    return [dict(item) for item in accounts if isinstance(item, dict)]


def _render(accounts: Sequence[Mapping[str, str]]) -> bytes:
    """TOML for the accounts: JSON string literals are valid TOML basic strings (all ASCII here)."""
    blocks = ["[[operator.accounts]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in item.items())
              for item in accounts]
    return (_HEADER + "\n" + "\n".join(blocks)).encode("utf-8")


def write_account(path: str, entry: Mapping[str, str]) -> None:
    """Replace (or append) the entry of the same name; atomic, the file 0600 throughout."""
    accounts = [item for item in _read_accounts(path) if item.get("name") != entry["name"]]
    accounts.append(dict(entry))
    write_private(Path(path), _render(accounts))


async def sign_in(config: Config, email: str, password: str, proxy: str | None) -> CookieJar:
    """One sign-in at the auth host; the login's whole jar, or ``LoginFailed`` / a ``RelayError``."""
    origin = config.auth_origin or DEFAULT_AUTH_ORIGIN
    # One attempt: each sign-in counts toward the rate wall (§7.1 [S]).
    client = UpstreamClient(origin, dataclasses.replace(config, retries=1), refusal=v2_refusal,
                            follow_redirects=True)
    cookies: dict[str, str] = {}
    headers = [(name, value) for name, value in
               WebHeaders(origin, config).for_refresh(Credential("login", CookieJar()))
               if not (name.lower() == "cookie" and not value)]
    body = {"email": email, "password": hashlib.sha256(password.encode("utf-8")).hexdigest()}
    try:
        payload = await client.send_json("POST", SIGNIN_PATH, headers, body, proxy=proxy,
                                         on_cookies=cookies.update)
    finally:
        await client.close()
    error = payload_error(payload)
    if error is not None:
        raise error
    data = payload.get("data") if isinstance(payload, dict) else None
    access = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(access, str) or not access:
        raise UpstreamChallenge("the sign-in answer carried no data.access_token")
    jar = CookieJar(cookies)
    jar.update({"token": access})
    if not jar.get("refresh_token"):
        raise UpstreamChallenge("the sign-in answer set no refresh_token cookie")
    return jar


def _read_password(email: str, stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass(f"Qwen Chat password for {email}: ")
    return stdin.readline().rstrip("\r\n")


def _explain(exc: RelayError, name: str, path: str, proxy: str | None) -> str:
    steps = manual_steps(name, path, proxy)
    if isinstance(exc, AuthenticationFailed):
        return ("Qwen Chat refused the sign-in: wrong email or password. Check them at https://chat.qwen.ai; "
                "an account without a password (Google, GitHub sign-in) is added by hand:\n" + steps)
    if isinstance(exc, UpstreamChallenge):
        return "Qwen Chat wants a browser for this sign-in (challenge). Do it by hand:\n" + steps
    if isinstance(exc, UpstreamUnavailable):
        hint = "check the proxy" if proxy else "sign in through a proxy with --proxy URL"
        return f"{exc.message} Nothing was written; {hint}, or add the account by hand:\n{steps}"
    return f"The sign-in failed: {exc.message} Nothing was written. Add the account by hand:\n{steps}"


def main(argv: Sequence[str], stdin: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    args, rest = _parser().parse_known_args(list(argv))
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin

    def fail(field: str, message: str, line: str | None = None) -> Exception:
        return ValueError(f"{field.rpartition('.')[2]}: {message}")

    try:  # the entry as the relay will read it: the name and the proxy checked before any sign-in
        parse_accounts([{"name": args.name, "cookies": "token=x", **({"proxy": args.proxy} if args.proxy else {})}],
                       fail)
    except ValueError as exc:
        print(f"qwen-relay login: --{exc}", file=sys.stderr)
        return 2
    path, configured = _accounts_path(args, environ)
    try:
        _read_accounts(path)  # refuse a loose or foreign file before signing in
    except LoginFailed as exc:
        print(f"qwen-relay login: {exc}", file=sys.stderr)
        return 1
    placeholder = configured and _hold_place(path)
    try:
        return _login(args, rest, path, stdin)
    finally:
        if placeholder and Path(path).exists() and not Path(path).stat().st_size:
            Path(path).unlink()


def _hold_place(path: str) -> bool:
    """Create an empty 0600 file where the config's ``accounts_file`` points and nothing is yet.

    The relay's config loader refuses a missing accounts file; the login is about to
    fill it (and removes it again if it fails).
    """
    if os.path.lexists(path):
        return False
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return False  # the loader or the write reports it
    return True


def _login(args: argparse.Namespace, rest: Sequence[str], path: str, stdin: TextIO) -> int:
    config = relay_config(args, rest)
    password = _read_password(args.email, stdin)
    if not password:
        print("qwen-relay login: no password given", file=sys.stderr)
        return 2
    try:
        jar = asyncio.run(sign_in(config, args.email, password, args.proxy))
        del password
        entry = {"name": args.name, "cookies": jar.header(), **({"proxy": args.proxy} if args.proxy else {})}
        write_account(path, entry)
    except RelayError as exc:
        print(_explain(exc, args.name, path, args.proxy), file=sys.stderr)
        return 1
    except (LoginFailed, OSError) as exc:
        print(f"qwen-relay login: {exc}", file=sys.stderr)
        return 1
    shown = os.path.abspath(path)
    print(f"Signed in {args.email}: account {args.name!r} written to {shown} (mode 0600). Next: set "
          f'accounts_file = "{shown}" and mode = "pool" under [operator] in the config, then reload the relay '
          "(kill -HUP its pid, or systemctl reload qwen-relay).")
    return 0
