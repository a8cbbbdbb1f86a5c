"""Helpers of the integration tests of accounts that stay signed in (issue 17).

Real programs on loopback, nothing mocked: the relay is always ``python -m relay``
in its own process, its stderr kept line by line (raw, so a canary can search
every byte it wrote, and parsed, so a test can wait for an event); the emulator
runs in the test's loop behind a tap that notes each request's peer address and
login, or as its own process (``python -m relay.emulator``); redis-server,
tinyproxy and microsocks are the real programs. Every wait is a poll with a
deadline (a sleep only between two looks at the world), every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from relay.emulator import EmulatorConfig, RunningEmulator, make_emulator_app
from relay.emulator.handling import EMULATOR_STATE
from relay.emulator.server import SHUTDOWN_TIMEOUT_S
from relay.operator import hash_key
from tests.conftest import auth, chat_body, directive, parse_sse
from tests.test_transport import _program, free_port, running

__all__ = [
    "KEY",
    "WAIT_S",
    "Account",
    "EmulatorProcess",
    "Outcome",
    "Proxy",
    "RedisServer",
    "Relay",
    "Seen",
    "Tap",
    "ask",
    "call_kind",
    "free_port",
    "metrics_text",
    "microsocks",
    "poll",
    "redis_server",
    "refresh_print",
    "relay_env",
    "run_load",
    "sample",
    "start_relay",
    "start_tapped_emulator",
    "tinyproxy",
    "write_config",
]

#: the relay key of every pool request here.
KEY = "sk-relay-accounts-0123456789"
#: the bound on a wait that should end within a second or two; generous for a loaded CI machine.
WAIT_S = 10.0
#: how often a poll looks again.
_POLL_S = 0.05
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
              "all_proxy")
_MIB = 1024 * 1024


def refresh_print(token: str) -> str:
    """The emulator's fingerprint of a refresh token (``/_emulator/refreshes``: sha256, 12 hex digits)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


async def poll(check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    """Look at ``check`` every 50 ms until it holds; fail naming ``what`` after ``timeout_s``."""
    for _ in range(int(timeout_s / _POLL_S) + 1):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(_POLL_S)  # between two looks: what we wait for happens in another process
    raise AssertionError(f"not within {timeout_s} s: {what}")


def sample(text: str, series: str) -> float | None:
    """The value of one exposition line, named exactly (labels included); None when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


async def metrics_text(session: aiohttp.ClientSession, relay: str) -> str:
    async with session.get(relay + "/metrics") as response:
        assert response.status == 200
        return await response.text()


# -- the relay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """One ``[[operator.accounts]]`` table."""

    name: str
    cookies: str
    proxy: str | None = None
    bx_ua: str | None = None
    bx_umidtoken: str | None = None
    bx_v: str | None = None


def write_config(where: Path, accounts: Sequence[Account], *, mode: str = "pool",
                 file_name: str = "relay.toml") -> str:
    """A config file (mode 0600: it holds logins) with one relay key and ``accounts``."""
    lines = ["[operator]", f'mode = "{mode}"', "", "[[operator.keys]]", 'name = "tests"',
             f'hash = "{hash_key(KEY)}"', ""]
    for account in accounts:
        lines.append("[[operator.accounts]]")
        for name in ("name", "cookies", "proxy", "bx_ua", "bx_umidtoken", "bx_v"):
            value = getattr(account, name)
            if value is not None:
                lines.append(f"{name} = {json.dumps(value)}")  # a JSON string of ASCII is a TOML basic string
        lines.append("")
    path = where / file_name
    path.write_text("\n".join(lines))
    os.chmod(path, 0o600)
    return str(path)


class Relay:
    """``python -m relay`` in its own process group; every line of its stderr kept."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        #: stderr as written (the canary searches these).
        self.lines: list[str] = []
        #: the same lines parsed (a line that is not JSON is ``{"raw": …}``).
        self.log: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            self.log.append(entry if isinstance(entry, dict) else {"raw": line})

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log if entry.get("event") == name]

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill ends it; returns once it is gone and its log read."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        async with asyncio.timeout(WAIT_S):
            await self.process.wait()
            await self._reader  # stderr reaches EOF: every line it wrote is in self.lines

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it: a clean exit with every buffered log line written; its code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        async with asyncio.timeout(WAIT_S * 2):
            code = await self.process.wait()
            await self._reader
        return code

    async def close(self) -> None:
        if self.process.returncode is None or not self._reader.done():
            await self.kill()


def relay_env() -> dict[str, str]:
    """The environment without the machine's proxy variables (the tests name every egress)."""
    return {name: value for name, value in os.environ.items() if name not in _PROXY_ENV}


async def start_relay(*args: str) -> Relay:
    """``python -m relay --host 127.0.0.1 --port <free> *args``, ready once /healthz answers 200."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(port), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, limit=4 * _MIB,
        start_new_session=True, env=relay_env())
    relay = Relay(process, f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as session:
        async def is_ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"relay exited with {process.returncode}: {relay.lines[-5:]}")
            try:
                async with session.get(relay.url + "/healthz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        try:
            await poll(is_ready, "the relay answers /healthz", timeout_s=20)
        except BaseException:
            await relay.close()
            raise
    return relay


# -- clients -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one client request got; ``problem`` is None for a complete, correct answer."""

    status: int
    stream: bool
    problem: str | None = None


async def ask(session: aiohttp.ClientSession, relay: str, *, stream: bool, reply: str = "still signed in",
              bearer: str = KEY) -> Outcome:
    """One chat completion; checks the status, the text and, for a stream, the one final [DONE]."""
    body = chat_body(stream=stream, text=directive(reply=reply))
    async with session.post(relay + "/v1/chat/completions", json=body, headers=auth(bearer)) as response:
        text = await response.text()
        outcome = Outcome(response.status, stream)
    if outcome.status != 200:
        outcome.problem = f"HTTP {outcome.status}: {text[:300]}"
        return outcome
    if not stream:
        content = json.loads(text)["choices"][0]["message"].get("content")
        outcome.problem = None if content == reply else f"content {content!r}"
        return outcome
    events = parse_sse(text)
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        outcome.problem = f"stream did not end with one [DONE]: {events[-2:]}"
        return outcome
    content = ""
    for event in events[:-1]:
        chunk = json.loads(event)
        if "error" in chunk:
            outcome.problem = f"error event {chunk['error']}"
            return outcome
        for choice in chunk.get("choices") or []:
            content += (choice.get("delta") or {}).get("content") or ""
    outcome.problem = None if content == reply else f"content {content!r}"
    return outcome


async def run_load(relays: Sequence[str], *, clients: int, duration_s: float) -> list[Outcome]:
    """``clients`` clients, each sending requests one after another for ``duration_s``.

    Client i talks to ``relays[i % len(relays)]`` and alternates stream and
    non-stream. Bounded twice: by the clock, and by a request count no client can
    reach at the emulator's speed.
    """
    end = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(index: int, session: aiohttp.ClientSession) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for number in range(100_000):
            if time.monotonic() >= end:
                break
            outcomes.append(await ask(session, relays[index % len(relays)], stream=(number + index) % 2 == 0))
        return outcomes

    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(client(index, session) for index in range(clients)))
    return [outcome for outcomes in results for outcome in outcomes]


# -- the emulator --------------------------------------------------------------------------


def call_kind(method: str, path: str) -> str:
    """Which upstream call a request is: models, new_chat, completion, stop, delete, refresh or other."""
    if path == "/api/models" or path.startswith("/api/v2/models"):
        return "models"
    if path == "/api/v2/auths/refresh":
        return "refresh"
    if method == "POST" and path == "/api/v2/chats/new":
        return "new_chat"
    if method == "POST" and path == "/api/v2/chat/completions":
        return "completion"
    if method == "POST" and path == "/api/v2/chat/completions/stop":
        return "stop"
    if method == "DELETE" and path.startswith("/api/v2/chats/"):
        return "delete"
    return "other"


@dataclass(frozen=True)
class Seen:
    """One request as it reached the emulator's socket."""

    kind: str
    #: the address the connection came from: the relay's own (direct) or a proxy's bind address.
    peer: str
    #: the login of the emulator JWT (or refresh token) it carried; None for any other token.
    login_id: str | None
    #: the ``token`` cookie or Bearer it carried (tests compare it; never printed).
    token: str | None = field(repr=False)
    #: the emulator's answer: HTTP status, and the 401-in-200 / risk-control rule when refused.
    status: int
    headers: dict[str, str] = field(repr=False)


@dataclass
class Tap:
    """What a tapped emulator saw, beside its own request log."""

    seen: list[Seen] = field(default_factory=list)
    #: every token, refresh token and cookie value that crossed the socket, either way.
    secrets: set[str] = field(default_factory=set, repr=False)

    def of_login(self, login_id: str) -> list[Seen]:
        return [entry for entry in self.seen if entry.login_id == login_id]


async def start_tapped_emulator(config: EmulatorConfig, host: str = "127.0.0.1"
                                ) -> tuple[RunningEmulator, Tap]:
    """The strict emulator on ``host`` behind a tap middleware (outermost, so it sees every answer)."""
    tap = Tap()
    app = make_emulator_app(config)
    book = app[EMULATOR_STATE].logins

    @web.middleware
    async def note(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        token = request.cookies.get("token") or (bearer.strip() if scheme.lower() == "bearer" else None) or None
        verdict = book.judge(token)
        login = verdict.login if verdict is not None else None
        refresh_token = request.cookies.get("refresh_token")
        if login is None and refresh_token:
            login = book.login_of_refresh(refresh_token)
        tap.secrets.update(value for value in request.cookies.values() if value)
        if bearer.strip():
            tap.secrets.add(bearer.strip())
        response = await handler(request)
        tap.secrets.update(morsel.value for morsel in response.cookies.values() if morsel.value)
        status = int(response.headers.get("x-actual-status-code", response.status))
        tap.seen.append(Seen(call_kind(request.method, request.path), request.remote or "",
                             login.id if login is not None else None, token, status,
                             {name.lower(): value for name, value in request.headers.items()}))
        return response

    app.middlewares.insert(0, note)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    return RunningEmulator(f"http://{host}:{port}", app[EMULATOR_STATE], runner), tap


class EmulatorProcess:
    """``python -m relay.emulator`` in its own process, steered and observed over ``/_emulator/*``."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, *args: str) -> AsyncIterator[EmulatorProcess]:
        """Start it on a free port (it prints its URL when listening); SIGKILL at the end."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.emulator", "--host", "127.0.0.1", "--port", "0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            assert process.stdout is not None
            async with asyncio.timeout(20):
                url = (await process.stdout.readline()).decode().strip()
            assert url.startswith("http://127.0.0.1:"), f"the emulator printed {url!r}"
            yield cls(process, url)
        finally:
            if process.returncode is None:
                process.kill()
            async with asyncio.timeout(WAIT_S):
                await process.wait()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def create_login(self, email: str) -> dict[str, Any]:
        """``POST /_emulator/logins``: a signed-in login (``cookie``: its whole jar)."""
        login: dict[str, Any] = await self._call("POST", "/_emulator/logins", {"email": email})
        return login

    async def refreshes(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self._call("GET", "/_emulator/refreshes")
        return records

    async def log(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self._call("GET", "/_emulator/log")
        return records


# -- other programs ------------------------------------------------------------------------


@dataclass
class RedisServer:
    process: asyncio.subprocess.Process
    url: str


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A private redis-server (loopback, free port, temp dir, no RDB/AOF): its process and URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run does this)")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = await asyncio.create_subprocess_exec(
            executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
            "--save", "", "--appendonly", "no", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        client = aioredis.Redis.from_url(url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except (aioredis.ConnectionError, OSError):
                return False

        try:
            await poll(answers, "redis-server answers PING")
            yield RedisServer(process, url)
        finally:
            await client.aclose()
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)  # a test may have stopped it
                process.kill()
            await process.wait()


@dataclass(frozen=True)
class Proxy:
    """A running proxy: its URL (credentials included), the address its outgoing side binds, its log."""

    url: str
    egress: str
    log: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""


@contextlib.contextmanager
def tinyproxy(where: Path, *, egress: str, user: str, password: str) -> Iterator[Proxy]:
    """A real HTTP CONNECT proxy with Basic auth, its outgoing connections from ``egress``."""
    port = free_port()
    log = where / "tinyproxy.log"
    conf = where / "tinyproxy.conf"
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nBind {egress}\nTimeout 30\nLogFile "{log}"\n'
                    f"LogLevel Info\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth {user} {password}\n")
    with running([_program("tinyproxy"), "-d", "-c", str(conf)], port):
        yield Proxy(f"http://{user}:{password}@127.0.0.1:{port}", egress, log)


@contextlib.contextmanager
def microsocks(*, egress: str, user: str, password: str) -> Iterator[Proxy]:
    """A real SOCKS5 proxy with user/password auth, its outgoing connections from ``egress``."""
    port = free_port()
    with running([_program("microsocks"), "-i", "127.0.0.1", "-p", str(port), "-b", egress,
                  "-u", user, "-P", password], port):
        yield Proxy(f"socks5://{user}:{password}@127.0.0.1:{port}", egress)

