"""Bursts queue, non-stream answers meet a deadline, silent streams get keep-alives (issue 5)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from relay.emulator import RunningEmulator
from tests.conftest import RelayFactory, auth, chat_body, directive, parse_sse

CHAT = "/v1/chat/completions"


async def test_full_relay_queues_a_request_until_a_slot_frees(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """--queue-timeout: a burst waits for a slot instead of an immediate 429."""
    relay = await relay_factory(max_concurrency=1, queue_s=10)
    async with aiohttp.ClientSession() as session:
        holder = await session.post(relay + CHAT, headers=auth(), json=chat_body(
            stream=True, text=directive(reply="held open", fault="stall_mid", after=1)))
        assert holder.status == 200
        async with asyncio.timeout(5):
            await emulator.state.first_chunk_sent.wait()
        queued = asyncio.ensure_future(session.post(relay + CHAT, headers=auth(),
                                                    json=chat_body(text=directive(reply="after the wait"))))
        async with asyncio.timeout(5):
            await emulator.state.wait_for_request(2)  # models list + first chat; the queued one is not upstream
        assert not queued.done()
        holder.close()
        async with asyncio.timeout(10):
            response = await queued
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == "after the wait"


async def test_queue_timeout_ends_in_429_with_retry_after(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(max_concurrency=1, queue_s=0.3)
    async with aiohttp.ClientSession() as session:
        holder = await session.post(relay + CHAT, headers=auth(), json=chat_body(
            stream=True, text=directive(reply="held open", fault="stall_mid", after=1)))
        async with asyncio.timeout(5):
            await emulator.state.first_chunk_sent.wait()
        started = time.perf_counter()
        async with session.post(relay + CHAT, headers=auth(), json=chat_body(text="hi")) as response:
            waited = time.perf_counter() - started
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "relay_overloaded"
        assert 0.25 <= waited < 3
        holder.close()


async def test_non_stream_answer_or_error_within_the_deadline(relay_factory: RelayFactory) -> None:
    """--nonstream-deadline: Immersive Translate gives up at ~100 s; the relay answers first."""
    relay = await relay_factory(nonstream_deadline_s=0.5, timeout_s=30)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(relay + CHAT, headers=auth(), json=chat_body(
            text=directive(reply="too slow", fault="stall_before"))) as response:
        body = await response.json()
    assert response.status == 504
    assert body["error"]["code"] == "nonstream_deadline"
    assert time.perf_counter() - started < 3


async def test_silent_stream_gets_keepalive_comments_and_the_full_text(relay_factory: RelayFactory) -> None:
    """Upstream silence mid-stream: ': keep-alive' lines, then the rest of the answer."""
    relay = await relay_factory(keepalive_s=0.1, timeout_s=5)
    async with aiohttp.ClientSession() as session, session.post(relay + CHAT, headers=auth(), json=chat_body(
            stream=True, text=directive(reply="one two three", chunks=3, fault="stall_mid", after=1,
                                        stall_ms=600))) as response:
        raw = await response.text()
    assert raw.count(": keep-alive\n\n") >= 2
    events = parse_sse(raw)
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if json.loads(e)["choices"])
    assert text == "one two three" and events[-1] == "[DONE]"


async def test_silence_before_the_first_frame_commits_the_stream_with_keepalives(
        relay_factory: RelayFactory) -> None:
    """Long thinking before any text: the 200 goes out with keep-alives; errors then arrive in-stream."""
    relay = await relay_factory(keepalive_s=0.1, timeout_s=0.8)
    async with aiohttp.ClientSession() as session, session.post(relay + CHAT, headers=auth(), json=chat_body(
            stream=True, text=directive(reply="never", fault="stall_before"))) as response:
        assert response.status == 504  # headers never came: nothing to keep alive yet
    async with aiohttp.ClientSession() as session, session.post(relay + CHAT, headers=auth(), json=chat_body(
            stream=True, text=directive(reply="late", fault="stall_mid", after=0))) as response:
        assert response.status == 200
        raw = await response.text()
    assert ": keep-alive" in raw
    events = parse_sse(raw)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "upstream_timeout"
