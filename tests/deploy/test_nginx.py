"""deploy/nginx/qwen-relay.conf, run by the real nginx in front of a real relay process.

The shipped site file is rendered, not copied: test ports replace 80/443/8080, a
generated certificate replaces the placeholder paths, the IPv6 listens are dropped
(loopback only), and a minimal top-level nginx.conf includes the result. A change to
the shipped file is therefore tested as is, and a change that the rendering no
longer recognises fails here loudly (issue 7).

nginx runs in the foreground (``daemon off``) as a child of the test, with every
path it writes inside the test's temp dir. The relay runs as users run it:
``python -m relay --upstream emulator``. Debian's nginx must be installed
(``.ci/run`` installs it); without it these tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, auth, directive, parse_sse

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "qwen-relay.conf"
RELAY_BODY_LIMIT = 10 * 1024 * 1024  # the relay's --max-body-bytes default, and the site's 10m
STARTUP_S = 20.0
# The streamed answer of test (a): four events 0.7 s apart, so about 2.8 s end to end.
SLOW_STREAM = {"reply": "one two three four", "chunks": 4, "delay_ms": 700}
# A shorter one where only "not buffered" matters: 0.8 s end to end.
SHORT_STREAM = {"reply": "one two", "chunks": 2, "delay_ms": 400}


# ---- processes ----------------------------------------------------------------------

def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx (.ci/run does this)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM, wait (bounded), then SIGKILL: the process, or its whole group (nginx workers)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait(timeout=5)


def _http_status(path: str, *, port: int | None = None, unix: str | None = None) -> int:
    """One plain-HTTP GET over TCP or a unix socket; the status code."""
    if unix is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(2)
        try:
            sock.connect(unix)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            head = sock.recv(64).decode("latin-1")
        finally:
            sock.close()
        return int(head.split()[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def _wait_for(process: subprocess.Popen[bytes], log: Path, path: str, expected: int, *,
              port: int | None = None, unix: str | None = None) -> None:
    """Poll until the server answers ``path`` with ``expected`` (bounded), or fail with its log."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _http_status(path, port=port, unix=unix) == expected:
                return
        except (OSError, IndexError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.05)  # polling a socket that is not open yet: there is no event to await
    pytest.fail(f"{process.args!r} not answering {path} (exit {process.poll()}):\n{log.read_text()[-3000:]}")


def _start_relay(workdir: Path, *listen: str) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the descriptor; ours closes at once.
    with (workdir / "relay.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--upstream", "emulator", "--log-level", "warning", *listen],
            stdout=subprocess.DEVNULL, stderr=log,
        )


# ---- rendering ----------------------------------------------------------------------

def _substitute(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    result, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"deploy/nginx/qwen-relay.conf: expected {count} match(es) of {pattern!r}, got {found}"
    return result


def render_site(*, upstream: str, http_port: int, tls_port: int, cert: Path, key: Path,
                ignore_accel_buffering: bool = False) -> str:
    """The shipped site with test ports, paths and upstream; IPv4 loopback only.

    ``ignore_accel_buffering`` makes nginx disregard the relay's ``X-Accel-Buffering: no``,
    which alone would disable buffering: then only the site's own settings keep a
    stream unbuffered, and that is what the streaming test should prove.
    """
    text = SITE.read_text()
    if ignore_accel_buffering:
        text = _substitute(text, r"^(\s*)proxy_buffering off;",
                           r"\g<0>\n\g<1>proxy_ignore_headers X-Accel-Buffering;")
    text = _substitute(text, r"^(\s*)server 127\.0\.0\.1:8080;", rf"\g<1>{upstream}")
    text = _substitute(text, r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{http_port};")
    text = _substitute(text, r"^(\s*)listen 443 (.*);", rf"\g<1>listen 127.0.0.1:{tls_port} \g<2>;")
    text = _substitute(text, r"^\s*listen \[::\]:.*\n", "", count=2)
    text = _substitute(text, r"^(\s*)ssl_certificate\s+/etc/ssl/\S+;", rf"\g<1>ssl_certificate {cert};")
    text = _substitute(text, r"^(\s*)ssl_certificate_key\s+/etc/ssl/\S+;", rf"\g<1>ssl_certificate_key {key};")
    return text


def write_nginx_conf(workdir: Path, site: str) -> Path:
    """A top-level nginx.conf around the site; everything nginx writes stays in workdir."""
    (workdir / "qwen-relay.conf").write_text(site)
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # As root, nginx would switch its workers to "nobody", who cannot read the temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(f"""{user}daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    # A host that compresses everything it can: the site must still stream unbuffered.
    gzip on;
    gzip_types text/event-stream application/json;
    include {workdir}/qwen-relay.conf;
}}
""")
    return conf


def _start_nginx(workdir: Path, conf: Path) -> subprocess.Popen[bytes]:
    nginx = _nginx()
    log = workdir / "nginx.log"
    checked = subprocess.run([nginx, "-t", "-p", str(workdir), "-c", str(conf), "-e", str(log)],
                             check=False, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"nginx -t rejected the rendered site:\n{checked.stderr}"
    # Its own session, so that a last-resort SIGKILL reaches the workers too.
    with log.open("ab") as stderr:
        return subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf), "-e", str(log)],
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


# ---- fixtures -----------------------------------------------------------------------

@dataclass(frozen=True)
class Stack:
    """nginx in front of a relay: the URLs a test talks to."""

    https: str      # through nginx, TLS + HTTP/2
    http: str       # nginx's plain-HTTP server (redirects)
    direct: str     # the relay itself, bypassing nginx ("" when it listens on a unix socket)
    cert: Path
    workdir: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-day self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: apt-get install -y openssl (.ci/run does this)")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "relay.crt", where / "relay.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _stack(workdir: Path, certificate: tuple[Path, Path], *, unix: bool) -> Iterator[Stack]:
    cert, key = certificate
    http_port, tls_port = _free_port(), _free_port()
    if unix:
        socket_path = workdir / "relay.sock"
        relay = _start_relay(workdir, "--unix", str(socket_path))
        upstream, direct = f"server unix:{socket_path};", ""
        where: dict[str, Any] = {"unix": str(socket_path)}
    else:
        relay_port = _free_port()
        relay = _start_relay(workdir, "--host", "127.0.0.1", "--port", str(relay_port))
        upstream, direct = f"server 127.0.0.1:{relay_port};", f"http://127.0.0.1:{relay_port}"
        where = {"port": relay_port}
    nginx: subprocess.Popen[bytes] | None = None
    try:
        _wait_for(relay, workdir / "relay.log", "/healthz", 200, **where)
        site = render_site(upstream=upstream, http_port=http_port, tls_port=tls_port, cert=cert, key=key,
                           ignore_accel_buffering=not unix)
        nginx = _start_nginx(workdir, write_nginx_conf(workdir, site))
        _wait_for(nginx, workdir / "nginx.log", "/healthz", 301, port=http_port)
        yield Stack(https=f"https://127.0.0.1:{tls_port}", http=f"http://127.0.0.1:{http_port}",
                    direct=direct, cert=cert, workdir=workdir)
    finally:
        if nginx is not None:
            _stop(nginx, group=True)
        _stop(relay)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]) -> Iterator[Stack]:
    """nginx with the shipped upstream (127.0.0.1:<port>) in front of a TCP relay.

    nginx here ignores the relay's X-Accel-Buffering header (see ``render_site``).
    """
    yield from _stack(tmp_path_factory.mktemp("nginx-tcp"), certificate, unix=False)


@pytest.fixture(scope="module")
def unix_stack(tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]) -> Iterator[Stack]:
    """The site's unix-socket alternative: nginx in front of ``qwen-relay --unix``."""
    yield from _stack(tmp_path_factory.mktemp("nginx-unix"), certificate, unix=True)


def _tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.cert))


def chat(text: str, *, stream: bool) -> dict[str, object]:
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": text}]}


# ---- helpers that talk to the stack --------------------------------------------------

@dataclass(frozen=True)
class TimedStream:
    first_content_s: float       # request sent → first non-empty content delta
    total_s: float               # request sent → [DONE]
    content_times_s: list[float]
    text: str
    content_encoding: str | None


async def timed_stream(url: str, tls: ssl.SSLContext | bool,
                       spec: dict[str, object] = SLOW_STREAM) -> TimedStream:
    """Stream the emulator answer ``spec``; note when each content delta reaches this client."""
    body = chat(directive(**spec), stream=True)
    times: list[float] = []
    pieces: list[str] = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", json=body, headers=auth(), ssl=tls) as response:
            assert response.status == 200
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip().decode()
                if payload == "[DONE]":
                    return TimedStream(times[0] if times else float("nan"), time.perf_counter() - started,
                                       times, "".join(pieces), response.headers.get("Content-Encoding"))
                content = json.loads(payload)["choices"][0]["delta"].get("content") if payload else None
                if content:
                    times.append(time.perf_counter() - started)
                    pieces.append(content)
    raise AssertionError("stream ended without [DONE]")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed: apt-get install -y curl (.ci/run does this)")
    return subprocess.run([curl, "-sS", "--max-time", "30", *args],
                          check=False, capture_output=True, text=True, timeout=60)


async def _smoke(url: str, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "smoke", "--url", url, "--token", "t", "--timeout", "20", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(30):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode()


# ---- the checks ----------------------------------------------------------------------

async def test_stream_arrives_through_nginx_chunk_by_chunk(stack: Stack) -> None:
    """(a) No buffering: each event reaches the client while the emulator holds back the rest.

    The emulator writes four events 0.7 s apart. Through a buffering proxy (or gzip)
    they would arrive together at the end; here the first arrives in well under half
    the stream's time and the others one gap apart. The same stream straight from the
    relay gives the baseline for the time to first chunk.
    """
    via_nginx, direct = await asyncio.gather(timed_stream(stack.https, _tls(stack)),
                                             timed_stream(stack.direct, True))
    print(f"\ntime to first chunk: direct {direct.first_content_s * 1000:.1f} ms, "
          f"through nginx (TLS, HTTP/1.1) {via_nginx.first_content_s * 1000:.1f} ms; "
          f"stream total {direct.total_s:.2f} s / {via_nginx.total_s:.2f} s")
    for timed in (via_nginx, direct):
        assert timed.text == SLOW_STREAM["reply"]
        assert len(timed.content_times_s) == SLOW_STREAM["chunks"]
        assert timed.first_content_s < 0.5 * timed.total_s
        gaps = [b - a for a, b in zip(timed.content_times_s, timed.content_times_s[1:], strict=False)]
        assert min(gaps) > 0.35, f"events arrived bunched together: {timed.content_times_s}"
    assert via_nginx.content_encoding is None  # the host's "gzip on" did not reach the stream


async def test_non_stream_completion_through_nginx(stack: Stack) -> None:
    """(b) A plain chat.completion, with the client's request id passed both ways."""
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.https + "/v1/chat/completions", ssl=_tls(stack),
                                json=chat(directive(reply="plain ok"), stream=False),
                                headers={**auth(), "X-Request-Id": "client-chose-this-1"}) as response:
            assert response.status == 200
            answer = await response.json()
            assert response.headers["X-Request-Id"] == "client-chose-this-1"
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "plain ok"

        async with session.get(stack.https + "/v1/models", ssl=_tls(stack), headers=auth()) as response:
            assert response.status == 200
            assert MODEL in [m["id"] for m in (await response.json())["data"]]
            # Without one from the client, nginx's $request_id reaches the relay and comes back.
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


async def test_missing_token_is_the_relays_401_through_nginx(stack: Stack) -> None:
    """Authorization is the relay's business: nginx neither strips nor answers it."""
    async with aiohttp.ClientSession() as session, \
            session.get(stack.https + "/v1/models", ssl=_tls(stack)) as response:
        assert response.status == 401
        assert "error" in await response.json()


def _big_body(chars: int, reply: str) -> bytes:
    """A chat request of about ``chars`` bytes; post it as BytesIO (aiohttp warns on big raw bytes)."""
    text = "x" * chars + "\n" + directive(reply=reply)
    return json.dumps(chat(text, stream=False)).encode()


async def test_five_megabyte_body_passes_nginx(stack: Stack) -> None:
    """(c) A 5 MB prompt (a long document to translate) is streamed through to the relay.

    The relay itself answers it (its X-Request-Id): qwen-v2 never sends Qwen Chat a body
    over --max-upstream-body-bytes, so the client gets 400 context_length_exceeded.
    """
    body = _big_body(5_000_000, "big ok")
    assert len(body) > 5_000_000
    async with aiohttp.ClientSession() as session, \
            session.post(stack.https + "/v1/chat/completions", data=io.BytesIO(body), ssl=_tls(stack),
                         headers={**auth(), "Content-Type": "application/json"}) as response:
        assert response.status == 400, await response.text()
        assert "X-Request-Id" in response.headers  # the relay read it all and answered, not nginx
        assert (await response.json())["error"]["code"] == "context_length_exceeded"


async def test_body_over_the_limit_gets_an_openai_413_from_nginx(stack: Stack) -> None:
    """client_max_body_size matches the relay; nginx's own 413 keeps the OpenAI envelope."""
    body = _big_body(RELAY_BODY_LIMIT + 1000, "never")
    async with aiohttp.ClientSession() as session, \
            session.post(stack.https + "/v1/chat/completions", data=io.BytesIO(body), ssl=_tls(stack),
                         headers={**auth(), "Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert "X-Request-Id" not in response.headers  # nginx answered; the relay always sets one
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"


async def test_http2_over_tls(stack: Stack, tmp_path: Path) -> None:
    """(d) curl negotiates HTTP/2 with nginx, and a stream and a 5 MB body work over it."""
    health = _curl("--http2", "--cacert", str(stack.cert), "-o", "/dev/null",
                   "-w", "%{http_version}", stack.https + "/healthz")
    assert health.returncode == 0, health.stderr
    assert health.stdout == "2"

    streamed = _curl("--http2", "--cacert", str(stack.cert), "-N", "-H", "Authorization: Bearer t",
                     "-H", "Content-Type: application/json", "-w", "\nHTTP/%{http_version}",
                     "--data", json.dumps(chat(directive(reply="over h2", chunks=3), stream=True)),
                     stack.https + "/v1/chat/completions")
    assert streamed.returncode == 0, streamed.stderr
    body, version = streamed.stdout.rsplit("\n", 1)
    assert version == "HTTP/2"
    events = parse_sse(body)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "over h2"

    big = tmp_path / "big.json"
    big.write_bytes(_big_body(5_000_000, "big over h2"))
    posted = _curl("--http2", "--cacert", str(stack.cert), "-H", "Authorization: Bearer t",
                   "-H", "Content-Type: application/json", "--data-binary", f"@{big}",
                   "-w", "\n%{http_version} %{http_code}", stack.https + "/v1/chat/completions")
    assert posted.returncode == 0, posted.stderr
    answer, status = posted.stdout.rsplit("\n", 1)
    assert status == "2 400", answer[:500]  # reached the relay, which refuses to send it upstream
    assert json.loads(answer)["error"]["code"] == "context_length_exceeded"


async def test_plain_http_redirects_to_https(stack: Stack) -> None:
    """Port 80 never proxies: a token must not cross the network in clear text."""
    async with aiohttp.ClientSession() as session, \
            session.get(stack.http + "/v1/models", allow_redirects=False) as response:
        assert response.status == 301
        assert response.headers["Location"] == "https://127.0.0.1/v1/models"


async def test_smoke_command_passes_through_nginx_and_direct(stack: Stack) -> None:
    """(e) The operator's check succeeds through nginx (TLS, self-signed) and on the relay itself."""
    (code_tls, out_tls), (code_direct, out_direct) = await asyncio.gather(
        _smoke(stack.https, "--insecure"), _smoke(stack.direct))
    assert (code_tls, code_direct) == (0, 0), f"{out_tls}\n{out_direct}"
    assert out_tls.startswith("ok") and out_direct.startswith("ok"), f"{out_tls}\n{out_direct}"
    assert len(out_tls.strip().splitlines()) == 1


async def test_unix_socket_upstream(unix_stack: Stack) -> None:
    """The site's commented alternative: nginx reaches ``qwen-relay --unix`` through the socket."""
    socket_path = unix_stack.workdir / "relay.sock"
    # 0666, so nginx's www-data can connect to the socket of the relay's dynamic user.
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o666
    timed, (code, out) = await asyncio.gather(
        timed_stream(unix_stack.https, _tls(unix_stack), SHORT_STREAM),
        _smoke(unix_stack.https, "--insecure"))
    assert timed.text == SHORT_STREAM["reply"]
    assert timed.first_content_s < 0.5 * timed.total_s
    assert code == 0, out


async def test_metrics_only_for_this_host(stack: Stack) -> None:
    """/metrics is proxied for 127.0.0.1 (the local scraper) and refused to anyone else.

    127.0.0.2 is another loopback address, standing in for a remote client.
    """
    async with aiohttp.ClientSession() as session, \
            session.get(stack.https + "/metrics", ssl=_tls(stack)) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert "# TYPE" in await response.text()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(stack.https + "/metrics", ssl=_tls(stack)) as response:
        assert response.status == 403
