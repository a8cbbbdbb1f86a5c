"""What an independent soak under load found (issue 21 §5), each with the real relay or emulator.

- Bytes on the listening port that are not HTTP: aiohttp's error line with a full
  traceback, once per connection, became one rate-limited warning line.
- The draining 503 kept the connection alive, so keep-alive clients hammered a
  draining worker: every answer of a draining relay now closes its connection.
- The emulator kept every request it saw (9.7 GB after 5 minutes): its log, stop
  calls and deleted chats are rings of ``--log-size`` records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, LineTooLong
from pytest_aiohttp import AiohttpServer

from relay.app import make_app
from relay.config import Config
from relay.emulator import EmulatorConfig, EmulatorState, start_emulator
from relay.emulator.__main__ import build_config
from relay.keys import LIFECYCLE
from relay.server import RUNNER_OPTIONS, MalformedRequests
from tests.conftest import MODEL, TOKEN, auth, directive
from tests.integration.test_fault_matrix import RelayProcess, relay_process

#: the first bytes of a TLS 1.2 ClientHello, as a browser sends them to an https:// URL.
TLS_CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + b"\x00\x00\x02\x13\x01\x01\x00"
BAD_VERSION = b"GET /v1/models HTTP/9.9\r\nHost: relay\r\n\r\n"
#: a request line past aiohttp's 8190-byte limit; its query holds what must never be logged.
OVERLONG = b"GET /v1/models?token=CANARY-" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n"


async def wait_for_line(relay: RelayProcess, matches: Callable[[dict[str, Any]], bool]) -> None:
    """Until a line of the relay's log matches, re-checked as each line is read (bounded)."""
    async with asyncio.timeout(10):
        while not any(matches(entry) for entry in relay.log):
            await relay._pulse.wait()  # set by RelayProcess for every line it reads


async def exchange_raw(host: str, port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the relay closes it (bounded)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # to EOF: a refused request closes its connection
    finally:
        writer.close()


# --- malformed HTTP: one warning line, rate-limited -------------------------------------------------


async def test_malformed_requests_log_one_warning_line_without_a_traceback() -> None:
    """TLS on the plain port, a bad HTTP version and an over-long request line, 15 of each: each
    gets aiohttp's 400, and the whole flood logs one ``malformed_request`` warning, no error, no traceback."""
    async with relay_process("--upstream", "emulator") as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        for data in (TLS_CLIENT_HELLO, BAD_VERSION, OVERLONG) * 15:
            answer = await exchange_raw("127.0.0.1", port, data)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], answer[:200]
        async with aiohttp.ClientSession() as session, session.get(relay.url + "/healthz") as response:
            assert response.status == 200
        # Lines are written in order: once /healthz's access line is read, every earlier one is.
        await wait_for_line(relay, lambda entry: entry.get("path") == "/healthz")
    malformed = [entry for entry in relay.log if entry.get("event") == "malformed_request"]
    assert len(malformed) == 1, malformed  # 30 refused at error level by aiohttp; one line a minute
    (line,) = malformed
    assert line["level"] == "warning" and line["logger"] == "aiohttp.server"
    assert line["peer"] == "127.0.0.1" and line["suppressed"] == 0 and line["interval_s"] == 60
    assert line["error"] in {"BadStatusLine", "LineTooLong"}
    assert "exception" not in line and "CANARY" not in line["detail"] and "aaaa" not in line["detail"]
    assert [entry for entry in relay.log if entry.get("level") == "error"] == []
    assert not any("Traceback" in str(entry) or "CANARY" in str(entry) for entry in relay.log)


def aiohttp_record(exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    """The record aiohttp's ``RequestHandler.handle_error`` logs for a request it could not parse."""
    return logging.LogRecord("aiohttp.server", level, __file__, 0, "Error handling request from %s",
                             ("203.0.113.9",), (type(exc), exc, None))


def test_the_malformed_line_comes_at_most_once_per_interval_and_counts_what_it_left_out() -> None:
    now = [1000.0]
    quiet = MalformedRequests(interval_s=60, clock=lambda: now[0])
    first = aiohttp_record(BadStatusLine("b'GET / HTTP/9.9'"))
    assert quiet.filter(first)
    assert (first.getMessage(), first.levelno, first.exc_info) == ("malformed_request", logging.WARNING, None)
    assert first.fields == {"peer": "203.0.113.9", "error": "BadStatusLine", "detail": "Bad status line",  # type: ignore[attr-defined]
                            "suppressed": 0, "interval_s": 60}
    flood = [aiohttp_record(LineTooLong(b"/imme?token=SECRET" + b"a" * 100, 8190)) for _ in range(3)]
    now[0] += 59.9
    assert [quiet.filter(record) for record in flood] == [False, False, False]
    now[0] += 0.2  # the minute is over: the next line says how many were left out
    later = aiohttp_record(LineTooLong(b"/imme?token=SECRET", 8190))
    assert quiet.filter(later)
    assert later.fields["suppressed"] == 3 and "SECRET" not in later.fields["detail"]  # type: ignore[attr-defined]
    assert later.fields["detail"] == "Got more than 8190 bytes when reading"  # type: ignore[attr-defined]


def test_the_malformed_filter_leaves_other_records_and_aiohttps_debug_level_alone() -> None:
    quiet = MalformedRequests(interval_s=60, clock=lambda: 0.0)
    fault = aiohttp_record(RuntimeError("a bug in a handler"))
    assert quiet.filter(fault)  # a handler's traceback is a fault: unchanged
    assert fault.levelno == logging.ERROR and fault.exc_info is not None and fault.msg.startswith("Error handling")
    tls = aiohttp_record(BadHttpMethod("b'\\x16\\x03\\x01'"), level=logging.DEBUG)  # aiohttp: first request
    assert quiet.filter(tls)
    assert tls.levelno == logging.DEBUG and tls.exc_info is None and tls.getMessage() == "malformed_request"


# --- the draining answer closes its connection ------------------------------------------------------


@pytest.fixture
async def relay_app(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[Any, int]]:
    """A relay in front of its own emulator: the app (to drain it as server.drain does) and its port."""
    emulator = await start_emulator(EmulatorConfig(strict=False))
    try:
        app = make_app(Config(upstream=emulator.url, dialect="qwen-v1"))
        options = {k: v for k, v in RUNNER_OPTIONS.items() if k != "handler_cancellation"}
        server = await aiohttp_server(app, host="127.0.0.1", **options)
        assert server.port is not None
        yield app, server.port
    finally:
        await emulator.close()


def request_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 answer's status and headers (lower-cased names); its body is read and dropped."""
    async with asyncio.timeout(10):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        headers = {name.lower(): value for name, value in headers.items()}
        await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers


async def test_a_draining_relay_answers_503_with_connection_close_and_closes(
        relay_app: tuple[Any, int]) -> None:
    """A keep-alive connection serves request after request; once the relay drains, its 503 (and
    /healthz's) says ``Connection: close`` and the relay closes the connection, so the client
    reconnects, to another worker or host, instead of hammering this one (the soak: ~7,000
    requests in 8 s on one kept-alive connection)."""
    app, port = relay_app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):  # keep-alive works: two answers on one connection
            writer.write(request_bytes("/v1/models"))
            status, headers = await read_answer(reader)
            assert status == 200 and headers.get("connection", "").lower() != "close"
        app[LIFECYCLE].draining = True  # what server.drain sets first
        writer.write(request_bytes("/v1/models"))
        status, headers = await read_answer(reader)
        assert status == 503 and headers["connection"].lower() == "close"
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # and the relay closed it
    finally:
        writer.close()
    answer = await exchange_raw("127.0.0.1", port, request_bytes("/healthz"))
    assert answer.startswith(b"HTTP/1.1 503") and b"\r\nConnection: close\r\n" in answer


async def test_a_draining_relay_process_closes_a_kept_alive_connection_after_its_answer() -> None:
    """The same with a real SIGTERM: a stream keeps the relay draining; a second client's kept-alive
    connection gets one 503 with ``Connection: close``, and aiohttp's pool then drops it."""
    async with relay_process("--upstream", "emulator", "--drain-timeout", "30") as relay:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession() as streaming, aiohttp.ClientSession(connector=connector) as kept:
            async with kept.get(relay.url + "/v1/models", headers=auth()) as response:
                assert response.status == 200
            body = {"model": MODEL, "stream": True,
                    "messages": [{"role": "user", "content": directive(reply="a b c d", chunks=4, delay_ms=2000)}]}
            stream = await streaming.post(relay.url + "/v1/chat/completions", json=body, headers=auth())
            async with asyncio.timeout(10):
                assert stream.status == 200
                await stream.content.readline()  # the stream holds a slot: the drain waits for it
            relay.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await relay.wait_for_log("drain_started")
            async with kept.get(relay.url + "/v1/models", headers=auth()) as response:
                assert response.status == 503 and response.headers["Connection"].lower() == "close"
                assert (await response.json())["error"]["code"] == "relay_draining"
            with pytest.raises(aiohttp.ClientConnectionError):  # no kept connection left, and no listener
                async with kept.get(relay.url + "/v1/models", headers=auth()):
                    pass
            stream.close()


# --- the emulator's log is a ring ---------------------------------------------------------------------


async def test_the_emulator_keeps_only_its_latest_log_size_requests() -> None:
    emulator = await start_emulator(EmulatorConfig(log_size=5))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(12):
                async with session.get(emulator.url + "/api/models", headers=auth()) as response:
                    assert response.status == 200
            async with session.get(emulator.url + "/_emulator/log") as response:
                listed = await response.json()
        state = emulator.state
        async with asyncio.timeout(5):
            await state.wait_for_request(12)  # counted since the reset, whatever the ring holds
        assert state.requests == 12 and [record.number for record in state.log] == [8, 9, 10, 11, 12]
        assert [record["number"] for record in listed] == [8, 9, 10, 11, 12]
        assert [record.number for record in state.log[1:3]] == [9, 10] and state.log[-1].number == 12
        assert state.log == list(state.log)  # reads as the list it was
    finally:
        await emulator.close()


def test_stop_calls_and_deleted_chats_are_rings_of_the_same_size() -> None:
    state = EmulatorState.keeping(3)
    for n in range(5):
        state.create_chat(f"chat-{n}", MODEL, title="t", chat_type="t2t", chat_mode="normal", timestamp_ms=None)
        assert state.delete_chat(f"chat-{n}")
        state.record_stop(f"chat-{n}", f"response-{n}")
    assert state.deleted_chats == ["chat-2", "chat-3", "chat-4"]
    assert state.stop_calls == [(f"chat-{n}", f"response-{n}") for n in (2, 3, 4)]
    with pytest.raises(ValueError, match="log_size"):
        EmulatorConfig(log_size=0)


async def test_the_standalone_emulator_takes_log_size() -> None:
    """``python -m relay.emulator --log-size 3``: the real program, asked by HTTP."""
    assert build_config(["--log-size", "7"]).log_size == 7
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.emulator", "--port", "0", "--log-size", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            url = (await process.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(url + "/api/models", headers=auth()) as response:
                    assert response.status == 200
            async with session.get(url + "/_emulator/log") as response:
                assert [record["number"] for record in await response.json()] == [3, 4, 5]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
