"""UpstreamClient over aiohttp's client, and the Egress it leaves through (relay/upstream/).

Real sockets on 127.0.0.1 only: aiohttp test servers, raw asyncio servers for
what a well-behaved server cannot do (never answer, fail a TLS handshake), and
real proxies started for the test: tinyproxy (HTTP CONNECT) and microsocks
(SOCKS5). Each proxy binds its outgoing connections to an address of its own
(127.0.0.2 / 127.0.0.3), so the target server seeing that peer proves the call
went through the proxy. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from relay.config import Config, Timeouts
from relay.errors import (
    RelayError,
    UpstreamInterrupted,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from relay.pipeline.frames import SILENT_CHUNK
from relay.upstream import Egress, UpstreamClient

#: the bound on every wait that should end at once; generous for a loaded CI machine.
WAIT_S = 5.0
#: where each proxy's outgoing connections come from, so the target can tell who called.
TINYPROXY_EGRESS = "127.0.0.3"
MICROSOCKS_EGRESS = "127.0.0.2"
PROXY_USER, PROXY_PASSWORD = "alice", "s3cret-pw"
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
              "all_proxy")


@dataclass(frozen=True)
class Refused:
    error: RelayError
    retryable: bool
    retry_after_s: float | None = None


def refusal(status: int, headers: Mapping[str, str], content_type: str, body: bytes) -> Refused | None:
    """A dialect's refusal check in miniature: 5xx may pass on retry, the rest never."""
    if status >= 500:
        return Refused(UpstreamUnavailable(f"HTTP {status}"), retryable=True)
    if not 200 <= status < 300 or content_type == "text/html":
        return Refused(UpstreamRejected(f"HTTP {status}: {body[:100]!r}", status=400), retryable=False)
    return None


def config(origin: str, *, timeout_s: float = WAIT_S, retries: int = 3, **fields: Any) -> Config:
    return Config(upstream=origin, retries=retries, **fields,
                  timeouts=Timeouts(upstream_s=timeout_s, backoff_base_s=0.01, backoff_max_s=0.02))


Clients = Callable[..., UpstreamClient]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Make UpstreamClients (``egress=`` shared, else their own); all closed at the end."""
    made: list[UpstreamClient] = []
    egresses: list[Egress] = []

    def make(origin: str, *, egress: Egress | None = None, follow_redirects: bool = False,
             **config_fields: Any) -> UpstreamClient:
        client = UpstreamClient(origin, config(origin, **config_fields), refusal=refusal, egress=egress,
                                follow_redirects=follow_redirects)
        made.append(client)
        if egress is not None and egress not in egresses:
            egresses.append(egress)
        return client

    yield make
    for client in made:
        await client.close()
    for egress in egresses:
        await egress.close()


async def serve(aiohttp_server: AiohttpServer, routes: dict[str, Callable[[web.Request], Awaitable[Any]]]) -> str:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


# -- the request -----------------------------------------------------------------


async def test_request_carries_the_calls_headers_and_json_body_and_no_user_agent_of_aiohttps(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.json_response({})

    origin = await serve(aiohttp_server, {"/api/chat": record})
    client = clients(origin)
    await client.send_json("POST", "/api/chat?chat_id=1", [("Authorization", "Bearer t"), ("bx-v", "2.5")],
                           {"text": "héllo"})
    await client.send_json("POST", "/api/chat", [("User-Agent", "Mozilla/5.0 X"), ("Content-Type", "text/x")],
                           {"n": 1})
    (headers, body), (own_headers, _) = seen
    assert headers["Authorization"] == "Bearer t" and headers["bx-v"] == "2.5"
    assert headers["Content-Type"] == "application/json" and body == '{"text":"héllo"}'.encode()
    assert headers["Host"] == origin.removeprefix("http://")
    assert "User-Agent" not in headers and "Cookie" not in headers
    assert own_headers["User-Agent"] == "Mozilla/5.0 X" and own_headers["Content-Type"] == "text/x"


async def test_a_header_with_a_line_break_is_never_sent(aiohttp_server: AiohttpServer, clients: Clients) -> None:
    client = clients("http://127.0.0.1:9")
    with pytest.raises(UpstreamProtocolError, match="line break"):
        client.open("GET", "/", headers=[("x-a", "b\r\nInjected: 1")])


# -- timeouts ------------------------------------------------------------------


async def test_peer_that_accepts_but_never_answers_times_out_within_the_bound(clients: Clients) -> None:
    """A listening socket nobody accepts from: the kernel completes the handshake, the head never
    comes. ``--timeout`` (0.3 s here) ends the wait, once: a timeout is not retried."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = clients(f"http://127.0.0.1:{port}", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="did not answer within 0.3 s"):
            await client.send_json("GET", "/api/models", [], None)
        assert 0.25 <= time.monotonic() - started < 2.0


async def test_silence_mid_body_is_a_timeout_after_the_bytes_before_it(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    released = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await released.wait()  # silent until the test ends
        return response

    client = clients(await serve(aiohttp_server, {"/stream": stall}), timeout_s=0.3)
    got: list[bytes] = []
    try:
        async with client.open("POST", "/stream", headers=[], json_body={}) as response:
            with pytest.raises(UpstreamTimeout, match="silent for more than 0.3 s"):
                async for chunk in response.iter_bytes():
                    got.append(chunk)
    finally:
        released.set()
    assert b"".join(got) == b"data: first\n\n"


async def test_silence_is_marked_while_the_read_stays_pending_and_no_byte_is_lost(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    """Each silent interval yields ``SILENT_CHUNK``; bytes that arrive while the consumer handles
    one are the next ones read; ``before_wait`` runs before every wait on the network."""
    send_rest = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"a" * 10)
        async with asyncio.timeout(WAIT_S):
            await send_rest.wait()
        await response.write(b"b" * 10)
        await asyncio.sleep(0.25)  # two more silences
        await response.write(b"c" * 10)
        await response.write_eof()
        return response

    waits = 0

    async def before_wait() -> None:
        nonlocal waits
        waits += 1

    client = clients(await serve(aiohttp_server, {"/stream": slow}), timeout_s=WAIT_S)
    chunks: list[bytes] = []
    async with client.open("POST", "/stream", headers=[], json_body={}) as response:
        async for chunk in response.iter_bytes(0.1, before_wait):
            if chunk is SILENT_CHUNK and chunk not in chunks:
                send_rest.set()
                await asyncio.sleep(0.1)  # "b" arrives while the consumer is busy here
            chunks.append(chunk)
    silences = sum(chunk is SILENT_CHUNK for chunk in chunks)
    assert b"".join(chunk for chunk in chunks if chunk is not SILENT_CHUNK) == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert silences >= 2 and waits >= 2


# -- retries -------------------------------------------------------------------


async def test_failed_heads_are_retried_and_the_attempts_counted(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    seen = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        if seen < 3:
            return web.Response(status=503, text="busy")
        return web.json_response({"ok": True})

    client = clients(await serve(aiohttp_server, {"/call": flaky}), retries=3)
    async with client.open("POST", "/call", headers=[], json_body={"x": 1}) as response:
        assert response.attempts == 3 and response.status == 200
        assert await response.read_json(1024) == {"ok": True}
    assert seen == 3


async def test_a_body_broken_after_the_first_byte_is_not_retried(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    seen = 0

    async def breaks(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: part\n\n")
        assert request.transport is not None
        request.transport.abort()  # a reset mid-body
        return response

    client = clients(await serve(aiohttp_server, {"/stream": breaks}), retries=3)
    async with client.open("POST", "/stream", headers=[], json_body={}) as response:
        with pytest.raises(UpstreamInterrupted):
            async for _ in response.iter_bytes():
                pass
    assert seen == 1


# -- cookies -------------------------------------------------------------------


async def test_set_cookie_reaches_on_cookies_and_never_rides_on_a_later_call(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    """The sessions keep no cookie jar: what one caller's answer set is that caller's alone,
    refused answers included (their cookies are reported before the refusal is raised)."""
    cookie_headers: list[str | None] = []

    async def login(request: web.Request) -> web.Response:
        cookie_headers.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("token", "t-123")
        response.set_cookie("ssxmod", "abc")
        return response

    async def refused(request: web.Request) -> web.Response:
        cookie_headers.append(request.headers.get("Cookie"))
        response = web.json_response({"error": "no"}, status=403)
        response.set_cookie("acw_tc", "waf-1")
        return response

    client = clients(await serve(aiohttp_server, {"/login": login, "/refused": refused}))
    reported: list[dict[str, str]] = []
    assert await client.send_json("POST", "/login", [], {}, on_cookies=lambda c: reported.append(dict(c))) == {
        "ok": True}
    with pytest.raises(UpstreamRejected):
        await client.send_json("GET", "/refused", [], None, on_cookies=lambda c: reported.append(dict(c)))
    await client.send_json("POST", "/login", [("Cookie", "mine=1")], {})
    assert reported == [{"token": "t-123", "ssxmod": "abc"}, {"acw_tc": "waf-1"}]
    assert cookie_headers == [None, None, "mine=1"]


# -- redirects -----------------------------------------------------------------


async def test_redirects_are_refusals_unless_followed_and_their_cookies_count(
        aiohttp_server: AiohttpServer, clients: Clients) -> None:
    async def start(request: web.Request) -> web.Response:
        response = web.Response(status=302, headers={"Location": "/landing"})
        response.set_cookie("step", "one")
        return response

    async def landing(request: web.Request) -> web.Response:
        response = web.json_response({"landed": True})
        response.set_cookie("session", "two")
        return response

    origin = await serve(aiohttp_server, {"/start": start, "/landing": landing})
    with pytest.raises(UpstreamRejected, match="HTTP 302"):
        await clients(origin).send_json("GET", "/start", [], None)
    reported: list[dict[str, str]] = []
    follower = clients(origin, follow_redirects=True)
    answer = await follower.send_json("GET", "/start", [], None, on_cookies=lambda c: reported.append(dict(c)))
    assert answer == {"landed": True}
    assert reported == [{"step": "one", "session": "two"}]


# -- TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost, made by the openssl CLI."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@contextlib.asynccontextmanager
async def tls_server(cert: Path, key: Path) -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTPS server answering ``{}``; yields its origin and a one-item list: connections accepted.

    Counted at accept, before the TLS handshake, so a handshake the client refuses counts too.
    """
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await writer.start_tls(context)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_untrusted_certificate_is_refused_once_and_names_ca_file(
        self_signed: tuple[Path, Path], clients: Clients) -> None:
    async with tls_server(*self_signed) as (origin, accepted):
        client = clients(origin, retries=3)
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.send_json("GET", "/api/models", [], None)
        assert "TLS certificate error" in caught.value.message
        assert "[upstream] ca_file" in caught.value.message
        assert accepted == [1]  # never retried: the same certificate fails the same way


async def test_certificate_trusted_through_ca_file_is_accepted(
        self_signed: tuple[Path, Path], clients: Clients) -> None:
    cert, _ = self_signed
    async with tls_server(*self_signed) as (origin, accepted):
        client = clients(origin, egress=Egress(limit=4, ca_file=str(cert)))
        assert await client.send_json("GET", "/api/models", [], None) == {}
        assert accepted == [1]


# -- proxies -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass(frozen=True)
class Proxy:
    url: str
    log: Path | None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""


@contextlib.contextmanager
def running(command: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:  # CI installs it (.ci/run); a missing proxy is a failure, not a skip
        pytest.fail(f"{name} is not installed (apt-get install {name})")
    return path


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A real HTTP CONNECT proxy with Basic auth, its outgoing connections from 127.0.0.3."""
    where = tmp_path_factory.mktemp("tinyproxy")
    port = free_port()
    log = where / "tinyproxy.log"
    conf = where / "tinyproxy.conf"
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nBind {TINYPROXY_EGRESS}\nTimeout 30\nLogFile "{log}"\n'
                    f"LogLevel Info\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n")
    with running([_program("tinyproxy"), "-d", "-c", str(conf)], port):
        yield Proxy(f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def microsocks() -> Iterator[Proxy]:
    """A real SOCKS5 proxy with user/password auth, its outgoing connections from 127.0.0.2."""
    port = free_port()
    with running([_program("microsocks"), "-i", "127.0.0.1", "-p", str(port), "-b", MICROSOCKS_EGRESS,
                  "-u", PROXY_USER, "-P", PROXY_PASSWORD], port):
        yield Proxy(f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}", None)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variables from the machine running the tests."""
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def peer_recording_server(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    """A server that answers ``{"ok": true}`` and records each request's peer address."""
    peers: list[str] = []

    async def record(request: web.Request) -> web.Response:
        peers.append(request.remote or "")
        return web.json_response({"ok": True})

    return await serve(aiohttp_server, {"/{tail:.*}": record}), peers


async def test_http_connect_proxy_carries_the_call(
        aiohttp_server: AiohttpServer, clients: Clients, tinyproxy: Proxy, no_proxy_env: pytest.MonkeyPatch) -> None:
    origin, peers = await peer_recording_server(aiohttp_server)
    client = clients(origin, egress=Egress(limit=4))
    assert await client.send_json("POST", "/api/x", [], {}, proxy=tinyproxy.url) == {"ok": True}
    assert peers == [TINYPROXY_EGRESS]
    assert f"CONNECT {origin.removeprefix('http://')}" in tinyproxy.log_text()


async def test_socks5_proxy_carries_the_call_with_and_without_remote_names(
        aiohttp_server: AiohttpServer, clients: Clients, microsocks: Proxy, no_proxy_env: pytest.MonkeyPatch) -> None:
    origin, peers = await peer_recording_server(aiohttp_server)
    egress = Egress(limit=4)
    client = clients(origin, egress=egress)
    assert await client.send_json("GET", "/a", [], None, proxy=microsocks.url) == {"ok": True}
    remote_names = microsocks.url.replace("socks5://", "socks5h://")
    assert await client.send_json("GET", "/b", [], None, proxy=remote_names) == {"ok": True}
    assert peers == [MICROSOCKS_EGRESS, MICROSOCKS_EGRESS]


async def test_own_proxy_wins_over_the_default_which_wins_over_the_environment(
        aiohttp_server: AiohttpServer, clients: Clients, tinyproxy: Proxy, microsocks: Proxy,
        no_proxy_env: pytest.MonkeyPatch) -> None:
    origin, peers = await peer_recording_server(aiohttp_server)
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing there: must not be used
    client = clients(origin, egress=Egress(limit=4, proxy=microsocks.url))
    await client.send_json("GET", "/default", [], None)
    await client.send_json("GET", "/own", [], None, proxy=tinyproxy.url)
    assert peers == [MICROSOCKS_EGRESS, TINYPROXY_EGRESS]


async def test_environment_proxy_is_used_for_calls_without_one_unless_no_proxy_says_so(
        aiohttp_server: AiohttpServer, clients: Clients, tinyproxy: Proxy, no_proxy_env: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY (read by aiohttp's helper when a client first calls an origin)."""
    origin, peers = await peer_recording_server(aiohttp_server)
    no_proxy_env.setenv("HTTP_PROXY", tinyproxy.url)
    no_proxy_env.setenv("HTTPS_PROXY", tinyproxy.url)
    assert await clients(origin).send_json("GET", "/via-env", [], None) == {"ok": True}
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert await clients(origin).send_json("GET", "/direct", [], None) == {"ok": True}
    assert peers == [TINYPROXY_EGRESS, "127.0.0.1"]


async def test_unreachable_proxy_is_named_by_host_and_port_never_by_its_credentials(
        clients: Clients, no_proxy_env: pytest.MonkeyPatch) -> None:
    port = free_port()  # closed again: connections are refused
    client = clients("http://127.0.0.1:9", egress=Egress(limit=4), retries=2)
    for scheme in ("http", "socks5"):
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.send_json("GET", "/x", [], None, proxy=f"{scheme}://{PROXY_USER}:{PROXY_PASSWORD}"
                                                               f"@127.0.0.1:{port}")
        message = caught.value.message
        assert f"127.0.0.1:{port}" in message, message
        assert PROXY_PASSWORD not in message and PROXY_USER not in message, message


async def test_wrong_proxy_password_is_a_proxy_error_without_the_password(
        clients: Clients, microsocks: Proxy, no_proxy_env: pytest.MonkeyPatch) -> None:
    wrong = microsocks.url.replace(PROXY_PASSWORD, "not-the-password")
    client = clients("http://127.0.0.1:9", egress=Egress(limit=4), retries=1)
    with pytest.raises(UpstreamUnavailable, match="through the proxy 127.0.0.1:") as caught:
        await client.send_json("GET", "/x", [], None, proxy=wrong)
    assert "not-the-password" not in caught.value.message


def test_bad_proxy_urls_are_refused_by_config_without_quoting_them() -> None:
    for url, problem in [("ftp://h:1", "scheme"), ("socks5://u:secret@", "no host"),
                         ("http://u:secret@h:1/path", "without a path")]:
        with pytest.raises(ValueError, match=problem) as caught:
            Config(proxy=url)
        assert "secret" not in str(caught.value)
    assert Config(proxy="socks5h://u:p@proxy.example:1080").proxy is not None
    with pytest.raises(ValueError, match="ca_file"):
        Config(ca_file=os.path.join(os.sep, "no", "such", "ca.pem"))
