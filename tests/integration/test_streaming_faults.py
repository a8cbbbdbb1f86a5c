"""Upstream faults during a stream: the client always gets the text so far and a clean end.

Once the relay has sent its SSE headers, a fault can no longer change the status, so
the invariant is (STYLE.md §3, §6 "invariants after failure"): every stream ends with
exactly one ``data: [DONE]``; a fault becomes one ``data: {"error": ...}`` event right
before it; nothing is retried once bytes were sent; framing quirks of the upstream
(line endings, byte splits, keep-alives, garbage, rewrites) never change the text;
and a client that leaves closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp_sse_client2 import client as sse_client

from relay.emulator import RequestRecord, RunningEmulator
from tests.conftest import RelayFactory, auth, chat_body, directive, parse_sse

CHAT = "/v1/chat/completions"
UPSTREAM_CHAT = "/api/chat/completions"
PIECES = ["alpha ", "beta ", "gamma ", "delta"]
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def stream(session: aiohttp.ClientSession, relay: str, **fields: Any) -> tuple[aiohttp.ClientResponse, list[str]]:
    """POST a streaming chat steered by ``fields``; return the response and its data payloads."""
    async with asyncio.timeout(10):
        async with session.post(relay + CHAT, json=chat_body(stream=True, text=directive(**fields)),
                                headers=auth()) as resp:
            body = await resp.text()
    assert resp.status == 200, body
    assert resp.content_type == "text/event-stream"
    return resp, parse_sse(body)


def chunks_of(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(data) for data in events if data != "[DONE]"]


def text_of(events: list[str]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks_of(events) if c.get("choices"))


def errors_of(events: list[str]) -> list[dict[str, Any]]:
    return [c["error"] for c in chunks_of(events) if "error" in c]


def assert_done_once_last(events: list[str]) -> None:
    assert events, "empty stream"
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1


def assert_error_then_done(events: list[str], code: str) -> dict[str, Any]:
    """The stream ends with exactly one error event, then exactly one ``[DONE]``."""
    assert_done_once_last(events)
    errors = errors_of(events)
    assert len(errors) == 1, events
    assert "error" in json.loads(events[-2]), events
    error = errors[0]
    assert set(error) == ENVELOPE_KEYS
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


def assert_completed(events: list[str], text: str) -> None:
    """A normal end: the exact text, one ``finish_reason`` chunk, no error, then ``[DONE]``."""
    assert_done_once_last(events)
    assert errors_of(events) == []
    assert text_of(events) == text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks_of(events)
                if c.get("choices") and c["choices"][0]["finish_reason"] is not None]
    assert finishes == ["stop"]


def chat_requests(emulator: RunningEmulator) -> list[RequestRecord]:
    return [record for record in emulator.state.log if record.path == UPSTREAM_CHAT]


async def sse_events(session: aiohttp.ClientSession, relay: str, **fields: Any) -> list[str]:
    """Read a stream with aiohttp-sse-client2, an SSE consumer independent of ours."""
    events: list[str] = []
    async with asyncio.timeout(10):
        async with sse_client.EventSource(
                relay + CHAT, option={"method": "POST"}, session=session, headers=auth(),
                json=chat_body(stream=True, text=directive(**fields))) as source:
            async for event in source:
                events.append(event.data)
                if event.data == "[DONE]":
                    break
    return events


async def read_first_event(resp: aiohttp.ClientResponse) -> str:
    """Read lines up to the end of the first SSE event; return its data."""
    data: list[str] = []
    async with asyncio.timeout(5):
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                return "\n".join(data)
    raise AssertionError("the stream ended before its first event")


# --- faults after the headers -----------------------------------------------------


async def test_stall_mid_stream_sends_text_then_timeout_error_then_done(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(timeout_s=0.5)
    events = await sse_events(session, relay, fault="stall_mid", after=2, pieces=PIECES)
    assert text_of(events) == "alpha beta "
    error = assert_error_then_done(events, "upstream_timeout")
    assert error["type"] == "upstream_error"


async def test_reset_mid_stream_sends_error_then_done_without_retry(
        relay: str, session: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """Bytes already reached the client: a retry would duplicate or garble the answer."""
    _, events = await stream(session, relay, fault="reset_mid", after=2, pieces=PIECES)
    assert text_of(events) == "alpha beta "
    assert_error_then_done(events, "upstream_unavailable")
    assert len(chat_requests(emulator)) == 1


async def test_missing_upstream_done_still_finishes_with_stop_then_done(
        relay: str, session: aiohttp.ClientSession) -> None:
    _, events = await stream(session, relay, done=False, pieces=PIECES)
    assert_completed(events, "".join(PIECES))
    assert '"finish_reason":"stop"' in json.dumps(chunks_of(events)[-1], separators=(",", ":"))


async def test_oversized_line_sends_text_then_line_too_long_error_then_done(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    """An SSE line beyond --max-line-bytes is refused without losing the text before it."""
    relay = await relay_factory(max_line_bytes=64 * 1024)
    _, events = await stream(session, relay, fault="oversized_line", size=200_000, pieces=PIECES)
    assert text_of(events) == "alpha "
    assert_error_then_done(events, "upstream_line_too_long")


async def test_in_stream_upstream_error_becomes_error_event_then_done(
        relay: str, session: aiohttp.ClientSession) -> None:
    _, events = await stream(session, relay, fault="in_stream_error", after=1, pieces=PIECES)
    assert text_of(events) == "alpha "
    error = assert_error_then_done(events, "upstream_error")
    assert "Bad_Request" in error["message"]


async def test_in_stream_error_before_any_text_is_a_502_json_status(
        relay: str, session: aiohttp.ClientSession) -> None:
    """Nothing was sent yet, so the client gets a real status instead of an SSE error."""
    body = chat_body(stream=True, text=directive(fault="in_stream_error", after=0))
    async with asyncio.timeout(10):
        async with session.post(relay + CHAT, json=body, headers=auth()) as resp:
            text = await resp.text()
    assert resp.status == 502, text
    assert resp.content_type == "application/json"
    error = json.loads(text)["error"]
    assert set(error) == ENVELOPE_KEYS
    assert error["code"] == "upstream_error"


# --- framing quirks never change the text -----------------------------------------


async def test_garbage_events_are_skipped_and_text_is_exact(relay: str, session: aiohttp.ClientSession) -> None:
    _, events = await stream(session, relay, garbage=True, pieces=PIECES)
    assert_completed(events, "".join(PIECES))


@pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=["crlf", "cr"])
async def test_any_line_ending_gives_exact_text(relay: str, session: aiohttp.ClientSession, ending: str) -> None:
    reply = "line endings\nshould not matter: \"quoted\" ok"
    _, events = await stream(session, relay, line_ending=ending, reply=reply, chunks=5)
    assert_completed(events, reply)


async def test_byte_by_byte_upstream_gives_exact_multibyte_text(
        relay: str, session: aiohttp.ClientSession) -> None:
    """UTF-8 sequences cut across reads are reassembled, never turned into U+FFFD."""
    reply = "naïve café — 中文字符 🚀😀 done ✓"
    events = await sse_events(session, relay, split="byte", reply=reply, chunks=6)
    assert_completed(events, reply)
    assert "\ufffd" not in text_of(events)


async def test_keepalives_and_trailing_spaces_give_exact_text(
        relay: str, session: aiohttp.ClientSession) -> None:
    reply = "kept alive, with trailing spaces "
    _, events = await stream(session, relay, keepalive=True, trailing_space=True, reply=reply, chunks=4)
    assert_completed(events, reply)


@pytest.mark.parametrize("mode", ["change", "shrink"])
async def test_upstream_rewrite_never_doubles_text(relay: str, session: aiohttp.ClientSession, mode: str) -> None:
    """The original Worker resent the whole answer when a frame did not extend the last one."""
    reply = "The quick brown fox jumps over the lazy dog"
    _, events = await stream(session, relay, rewrite=mode, reply=reply, chunks=6)
    delivered = text_of(events)
    assert len(delivered) == len(reply)
    assert_completed(events, reply)


async def test_short_stall_below_timeout_completes(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    relay = await relay_factory(timeout_s=0.5)
    _, events = await stream(session, relay, fault="stall_mid", after=2, stall_ms=250, pieces=PIECES)
    assert_completed(events, "".join(PIECES))


async def test_long_answer_with_gaps_is_never_cut_by_the_timeout(
        relay_factory: RelayFactory, session: aiohttp.ClientSession) -> None:
    """--timeout bounds each silent gap, not the whole stream (4 gaps × 0.3 s > 0.5 s)."""
    relay = await relay_factory(timeout_s=0.5)
    events = await sse_events(session, relay, pieces=PIECES, delay_ms=300)
    assert_completed(events, "".join(PIECES))


# --- response headers -------------------------------------------------------------


async def test_stream_headers_disable_caching_buffering_and_compression(
        relay: str, session: aiohttp.ClientSession) -> None:
    body = chat_body(stream=True, text=directive(reply="x" * 2000, chunks=3))
    headers = {**auth(), "Accept-Encoding": "br"}
    async with asyncio.timeout(10):
        async with session.post(relay + CHAT, json=body, headers=headers) as resp:
            text = await resp.text()
    assert resp.status == 200
    assert resp.headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    assert_completed(parse_sse(text), "x" * 2000)


# --- client disconnect ------------------------------------------------------------


async def test_client_disconnect_mid_stream_closes_upstream_and_relay_keeps_serving(
        relay: str, emulator: RunningEmulator) -> None:
    """A client that leaves must stop the upstream generating (no orphaned connection)."""
    body = chat_body(stream=True, text=directive(fault="slow_dribble", reply="d" * 40, chunks=20))
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(5):
            resp = await session.post(relay + CHAT, json=body, headers=auth())
            assert resp.status == 200
            first = json.loads(await read_first_event(resp))
            assert first["choices"][0]["delta"]["role"] == "assistant"
        resp.close()
    async with asyncio.timeout(1):
        await emulator.state.peer_closed.wait()
    async with asyncio.timeout(1):
        await emulator.state.wait_for_idle()
    (record,) = chat_requests(emulator)
    assert record.client_disconnected
    assert record.events_sent < 20
    assert emulator.state.streams_aborted == 1

    async with aiohttp.ClientSession() as session:
        _, events = await stream(session, relay, reply="after the disconnect", chunks=3)
    assert_completed(events, "after the disconnect")

