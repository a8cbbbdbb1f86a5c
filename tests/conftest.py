"""Fixtures that start real servers on 127.0.0.1: the emulator and the relay.

Nothing of our own is mocked: the emulator stands in for the remote Qwen Chat
service, and the relay under test is the real application on a real socket,
reached by real clients (aiohttp, the official openai SDK, aiohttp-sse-client2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from relay.app import make_app
from relay.config import Config, Limits, Timeouts
from relay.emulator import EmulatorConfig, RunningEmulator, start_emulator
from relay.server import RUNNER_OPTIONS

TOKEN = "test-token-0123456789"
MODEL = "qwen-max-latest"

RelayFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    running = await start_emulator(EmulatorConfig())
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def relay_factory(aiohttp_server: AiohttpServer, emulator: RunningEmulator) -> RelayFactory:
    """Start a relay in front of the emulator; keyword arguments override Config fields.

    ``timeout_s`` sets ``Timeouts.upstream_s``; ``max_concurrency``,
    ``max_body_bytes`` and ``max_line_bytes`` set ``Limits``; ``backoff_base_s``
    shortens retries so tests stay fast; ``client_body_s`` is ``--body-timeout``.
    """
    async def start(**overrides: Any) -> str:
        timeouts = Timeouts(
            upstream_s=overrides.pop("timeout_s", 5.0),
            backoff_base_s=overrides.pop("backoff_base_s", 0.01),
            backoff_max_s=overrides.pop("backoff_max_s", 0.05),
            client_body_s=overrides.pop("client_body_s", 30.0),
            # 0 = an immediate 429 when full, so tests of the limit need no waiting;
            # tests of the queue pass queue_s explicitly.
            queue_s=overrides.pop("queue_s", 0.0),
            nonstream_deadline_s=overrides.pop("nonstream_deadline_s", 95.0),
            keepalive_s=overrides.pop("keepalive_s", 15.0),
        )
        limit_fields = {f.name for f in dataclasses.fields(Limits)}
        limits = Limits(**{k: overrides.pop(k) for k in list(overrides) if k in limit_fields})
        upstream = overrides.pop("upstream", emulator.url)
        overrides.setdefault("dialect", "qwen-v1")
        config = Config(upstream=upstream, timeouts=timeouts, limits=limits, **overrides)
        # TestServer always sets handler_cancellation=True itself; pass the rest.
        options = {k: v for k, v in RUNNER_OPTIONS.items() if k != "handler_cancellation"}
        server = await aiohttp_server(make_app(config), host="127.0.0.1", **options)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> str:
    """Base URL of a relay with test-friendly timeouts in front of the emulator."""
    return await relay_factory()


async def stop_process(process: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM a child still running, wait up to ``grace_s``, then SIGKILL it: never left behind."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


def directive(**fields: Any) -> str:
    """The message line that steers the emulator for one request."""
    return "#emulator " + json.dumps(fields)


def chat_body(*, stream: bool = False, text: str = "Hello", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}], **extra}


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_sse(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") if line.startswith("data:") else None for line in block.split("\n")]
        lines = [d for d in data if d is not None]
        if lines:
            events.append("\n".join(lines))
    return events




class NotifyListener:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.setblocking(False)

    async def receive(self, timeout_s: float = 10) -> list[str]:
        """The lines of the next datagram (e.g. ``["READY=1", "STATUS=…"]``)."""
        async with asyncio.timeout(timeout_s):
            return (await asyncio.get_running_loop().sock_recv(self._sock, 4096)).decode().splitlines()

    def close(self) -> None:
        self._sock.close()


@contextlib.contextmanager
def notify_listener() -> Iterator[NotifyListener]:
    with tempfile.TemporaryDirectory() as tmp:
        listener = NotifyListener(os.path.join(tmp, "notify.sock"))
        try:
            yield listener
        finally:
            listener.close()
