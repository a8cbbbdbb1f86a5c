"""The checks of ``qwen-relay doctor``, each one step of the way a relayed request goes.

Strategy: every check is a coroutine that returns a one-line diagnosis or raises
``CheckFailed`` with one; ``doctor.py`` times them, prints them and stops at the
first failure. Each step is taken the way the relay takes it: the same ``Egress``
(proxy choice included), ``UpstreamClient`` (exception mapping), header builder,
``QwenV2.prepare``, stream stages, ``Refresher`` and ``AccountStore``. So what
passes here passes in the relay, and a failure names the step that broke.

What the service's refusals mean is read by ``diagnose``, from the errors of
``dialects/v2_errors.py`` and the transport (docs/qwen-protocol.md §7.5, §9);
``Seen`` remembers the media type of the last refused answer, which tells the
WAF page (the egress IP is flagged) from the risk-control JSON (the login's
bx-* bundle).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from .accounts.credential import BX_HEADERS, CookieJar, Credential
from .calls import Calls
from .config import Config
from .dialects import ChatOptions, UpstreamCall
from .dialects.v2_errors import Refusal, payload_error
from .dialects.v2_errors import refusal as v2_refusal
from .errors import AuthenticationFailed, RelayError, UpstreamChallenge, UpstreamError
from .openai_wire import ChatRequest
from .operator.config import AccountSpec
from .pipeline._util import close_source
from .pipeline.frames import StreamStats
from .pipeline.parse import parse_payloads
from .upstream import UpstreamClient

__all__ = ["CheckFailed", "RefreshLog", "Seen", "account_credential", "any_answer", "bare_headers", "chat_request",
           "diagnose", "dns", "models_anonymously", "split_address", "split_origin", "stream_answer", "tcp", "tls",
           "token_expiry_check", "tunnel"]

#: a one-word answer is enough to see the whole way work.
PROMPT = "Reply with exactly one word: ready"
#: an access token closer than this to its ``exp`` is a warning (the relay refreshes ~60 s before).
_SOON_S = 60.0
_REFRESH_ADVICE = "run `qwen-relay login`"


class CheckFailed(Exception):
    """A check's diagnosis, when the check failed."""


class _Answered(RelayError):
    """Any HTTP answer through the tunnel: the proxy got us to the upstream (``tunnel``)."""


class Seen:
    """The dialect's ``refusal``, remembering the last refused answer's status and media type."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.content_type: str | None = None

    def clear(self) -> None:
        self.status = self.content_type = None

    def refusal(self, status: int, headers: Mapping[str, str], content_type: str, body: bytes) -> Refusal | None:
        self.status, self.content_type = status, content_type
        return v2_refusal(status, headers, content_type, body)


def diagnose(exc: BaseException, seen: Seen, config: Config) -> str:
    """What a failed call means, in the operator's terms."""
    if isinstance(exc, UpstreamChallenge):
        if seen.content_type == "text/html":
            return "the WAF slider page: the egress IP is flagged; use another proxy"
        return ("risk control (FAIL_SYS_USER_VALIDATE): the bx-* bundle is missing or stale; re-capture it from "
                "the browser (see `qwen-relay login`'s manual steps)")
    if isinstance(exc, AuthenticationFailed):
        return f"Qwen Chat answered Unauthorized: the login is gone: {_REFRESH_ADVICE}"
    if isinstance(exc, UpstreamError) and exc.instance_code == "upstream_bad_request":
        return (f"Bad_Request: the `version` header ({config.web.version!r}) is missing or outdated: set "
                "--web-version to the web app's current version")
    if isinstance(exc, RelayError):
        return exc.message
    if isinstance(exc, ValueError):  # a malformed proxy URL: the message never quotes it
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {config.timeouts.upstream_s:g} s (--timeout)"
    return f"{type(exc).__name__}: {exc}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def dns(host: str, port: int, timeout_s: float) -> tuple[str, list[str]]:
    """Resolve ``host``; the diagnosis and the addresses."""
    if is_ip(host):
        return f"{host} is an IP address: nothing to resolve", [host]
    try:
        async with asyncio.timeout(timeout_s):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CheckFailed(f"DNS cannot resolve {host}: {exc.strerror or exc}") from exc
    except TimeoutError as exc:
        raise CheckFailed(f"DNS did not resolve {host} within {timeout_s:g} s") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return f"{host} → {', '.join(addresses[:3])}{' …' if len(addresses) > 3 else ''}", addresses


def _connect_error(exc: OSError, where: str, timeout_s: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {timeout_s:g} s (a firewall, or the host is down)"
    return f"cannot connect to {where}: {exc.strerror or exc}"


async def tcp(addresses: list[str], port: int, timeout_s: float, what: str = "") -> str:
    """Open (and close) a TCP connection to the first address that takes one."""
    failure: OSError | None = None
    for address in addresses:
        shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(address, port)
        except OSError as exc:  # TimeoutError included
            failure = exc
            where = shown
            continue
        writer.close()
        return f"connected to {what}{shown}"
    assert failure is not None  # at least one address was tried
    raise CheckFailed(_connect_error(failure, what + where, timeout_s))


async def tls(host: str, port: int, config: Config) -> str:
    """A TLS handshake with ``host``, verified as the relay verifies (system CAs + ``ca_file``)."""
    context = ssl.create_default_context()
    if config.ca_file is not None:
        context.load_verify_locations(cafile=config.ca_file)
    timeout_s = config.timeouts.upstream_s
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(f"a TLS certificate error ({exc.verify_message}): the certificate of {host} is not "
                          "trusted. Behind a TLS-inspecting proxy, name its CA in the config file's "
                          "[upstream] ca_file") from exc
    except ssl.SSLError as exc:
        raise CheckFailed(f"the TLS handshake with {host} failed: {exc.reason or exc}") from exc
    except OSError as exc:
        raise CheckFailed(_connect_error(exc, f"{host}:{port}", timeout_s)) from exc
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return f"{version} with {host}, certificate trusted"


async def tunnel(client: UpstreamClient, proxy: str | None, headers: list[tuple[str, str]]) -> str:
    """``GET /`` through the proxy: any HTTP answer means the CONNECT/SOCKS tunnel works."""
    try:
        async with client.open("GET", "/", headers=headers, proxy=proxy) as response:
            status = response.status
    except _Answered as answered:
        status = int(answered.message)
    return f"the proxy reached {client.origin} (HTTP {status} for /)"


def any_answer(status: int, headers: Mapping[str, str], content_type: str, body: bytes) -> Refusal:
    """The ``refusal`` of the tunnel check's client: every answer is proof enough."""
    return Refusal(_Answered(str(status)))


async def models_anonymously(client: UpstreamClient, path: str, headers: list[tuple[str, str]], seen: Seen,
                             config: Config) -> tuple[str, str | None]:
    """``GET /api/models`` without a login; the diagnosis and the first model id (if listed)."""
    seen.clear()
    try:
        payload = await client.send_json("GET", path, headers, None)
    except AuthenticationFailed as exc:
        if seen.content_type == "application/json":  # the API itself answered: not a WAF, not a proxy page
            return f"HTTP {seen.status} JSON without a login: the API answers (models need the login)", None
        raise CheckFailed(diagnose(exc, seen, config)) from exc
    except RelayError as exc:
        raise CheckFailed(diagnose(exc, seen, config)) from exc
    error = payload_error(payload)
    if error is not None:
        raise CheckFailed(diagnose(error, seen, config))
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    ids = [entry["id"] for entry in data or [] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
    return f"HTTP 200 JSON, {len(ids)} models", ids[0] if ids else None


def token_expiry_check(credential: Credential, is_bare: bool) -> str:
    """The access token's ``exp``: a warning when a refresh will renew it, a failure when nothing can."""
    left = credential.expires_in_s()
    can_refresh = credential.can_refresh and not is_bare
    if not credential.token:
        if can_refresh:
            return "warning: no access token in the jar; the refresh below gets one"
        raise CheckFailed(f"no access token and no refresh token: {_REFRESH_ADVICE}")
    if left is None:
        return "warning: the token's expiry cannot be read (not a JWT)"
    if left < _SOON_S:
        state = f"expired {-left:.0f} s ago" if left < 0 else f"expires in {left:.0f} s"
        if can_refresh:
            return f"warning: {state}; the refresh below renews it"
        if left < 0:
            raise CheckFailed(f"the access token {state} and there is no refresh token: {_REFRESH_ADVICE}")
        return f"warning: {state} and there is no refresh token: {_REFRESH_ADVICE} soon"
    return f"valid for {left // 60:.0f} min {left % 60:.0f} s"


def chat_request(model: str) -> tuple[ChatRequest, ChatOptions]:
    """The one-word question, as the handler would build it (the web app's default gear)."""
    messages = [{"role": "user", "content": PROMPT}]
    request = ChatRequest(model=model, messages=messages, stream=True, include_usage=False,
                          body={"model": model, "messages": messages, "stream": True})
    return request, ChatOptions(upstream_model=model)


async def stream_answer(calls: Calls, call: UpstreamCall, credential: Credential, config: Config) -> str:
    """Stream the completion through the relay's own stages; some answer text must arrive."""
    stats = StreamStats()
    text: list[str] = []
    async with calls.open(call, credential) as response:
        payloads = parse_payloads(response.iter_bytes(), config.limits.max_line_bytes, stats)
        frames = calls.dialect.stream_frames(payloads, stats)
        try:
            async for frame in frames:
                text.append(frame.content)
        finally:
            await close_source(frames)  # closes the stages under it, and so the response
    answer = "".join(text)
    if not answer.strip():
        raise CheckFailed(f"the stream ended without answer text ({stats.events} events)")
    return f"{len(answer)} characters of answer in {stats.events} events"


class RefreshLog(logging.Handler):
    """Keeps the ``relay.upstream`` records of this run: the refresh's error name is in them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def refresh_error(self) -> str:
        for record in reversed(self.records):
            fields = getattr(record, "fields", None)
            if record.getMessage() == "account_refresh" and isinstance(fields, dict):
                return str(fields.get("error") or fields.get("result"))
        return "unknown"


def account_credential(spec: AccountSpec) -> Credential:
    """The account's credential, as the pool builds it (jar, bx-* bundle, own proxy)."""
    bundle = {"bx_ua": spec.bx_ua.reveal() if spec.bx_ua else None,
              "bx_umidtoken": spec.bx_umidtoken.reveal() if spec.bx_umidtoken else None, "bx_v": spec.bx_v}
    bx = tuple((header, value) for field_name, header in BX_HEADERS if (value := bundle[field_name]))
    return Credential(spec.name, CookieJar.parse(spec.cookies.reveal()), bx=bx,
                      proxy=spec.proxy.reveal() if spec.proxy else None, is_account=True)


def bare_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A call's headers without any login: no Authorization, no empty Cookie."""
    return [(name, value) for name, value in headers
            if name.lower() != "authorization" and not (name.lower() == "cookie" and not value)]


def split_origin(origin: str) -> tuple[str, int]:
    parts = urlsplit(origin)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (``egress.proxy_address``) → its parts."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
