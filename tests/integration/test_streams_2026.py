"""2026 stream shapes through the real relay: one candidate, answer phases only, clean-up (issue "Today's
chat.qwen.ai").

docs/qwen-protocol.md §7.4: a stream may open two candidate responses (follow the
first), and phases the relay does not know never reach the answer. §7.3: every
chat the relay makes is deleted after the answer (stopped first when the client
left), unless ``--keep-chats``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from relay.emulator import RunningEmulator
from relay.emulator.state import RequestRecord
from tests.conftest import TOKEN, RelayFactory, auth, chat_body, directive
from tests.integration.web2026 import (
    CHATS_NEW,
    COMPLETIONS,
    STOP,
    PathTap,
    calls,
    metric,
    metrics_text,
    post_json,
    start_tapped_emulator,
    stream_answer,
    wait_until,
)

THINKER = "qwen3-max"
PROPERTY = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
async def tapped() -> AsyncIterator[tuple[RunningEmulator, PathTap]]:
    running, tap = await start_tapped_emulator()
    try:
        yield running, tap
    finally:
        await running.close()


@pytest.fixture
def emulator(tapped: tuple[RunningEmulator, PathTap]) -> RunningEmulator:
    """Overrides conftest's: the same strict emulator, with its raw request targets kept."""
    return tapped[0]


@pytest.fixture
def tap(tapped: tuple[RunningEmulator, PathTap]) -> PathTap:
    return tapped[1]


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect="qwen-v2")


def deletes_of(emulator: RunningEmulator, chat_id: str | None) -> list[RequestRecord]:
    return [r for r in calls(emulator, "DELETE", "/api/v2/chats/", prefix=True) if r.chat_id == chat_id]


# --- one response per stream -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_two_candidate_responses_give_the_client_only_the_first(
        relay: str, emulator: RunningEmulator, stream: bool) -> None:
    """§7.4: ``candidates: 2`` interleaves a second response ("ALT " + every piece); the client gets exactly
    the first answer and reasoning, once, and /metrics counts the dropped foreign frames."""
    body = chat_body(model=THINKER + "-thinking", text=directive(
        reply="The first answer.", think="First thoughts.", chunks=4, candidates=2))
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
    assert answer.status == 200, answer.body
    assert answer.content == "The first answer."
    assert answer.reasoning.strip() == "First thoughts."
    assert "ALT" not in answer.content and "ALT" not in answer.reasoning
    if stream:
        assert answer.events.count("[DONE]") == 1 and answer.events[-1] == "[DONE]"
    (completion,) = calls(emulator, "POST", COMPLETIONS)
    assert completion.directive == {"reply": "The first answer.", "think": "First thoughts.", "chunks": 4,
                                    "candidates": 2}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_frames_of_the_second_candidate_are_counted_in_metrics(relay: str, stream: bool) -> None:
    """The dropped frames of the second candidate show in ``qwen_relay_upstream_foreign_frames_total``, for
    a non-stream client too (qwen-v2 always streams upstream)."""
    body = chat_body(text=directive(reply="Counted.", chunks=3, candidates=2))
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
        text_metrics = await metrics_text(session, relay)
    assert answer.status == 200 and answer.content == "Counted."
    assert metric(text_metrics, "qwen_relay_upstream_foreign_frames_total") > 0


async def test_two_candidates_through_the_openai_sdk_give_one_answer(relay: str) -> None:
    """The official SDK, stream and not, sees one answer and one finish_reason with ``candidates: 2``."""
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        messages: Any = [{"role": "user", "content": directive(reply="Only me.", chunks=3, candidates=2)}]
        reply = await sdk.chat.completions.create(model="qwen-max-latest", messages=messages)
        stream = await sdk.chat.completions.create(model="qwen-max-latest", messages=messages, stream=True)
        deltas, finishes = [], []
        async for chunk in stream:
            if chunk.choices:
                deltas.append(chunk.choices[0].delta.content or "")
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
    assert reply.choices[0].message.content == "Only me."
    assert len(reply.choices) == 1 and reply.choices[0].finish_reason == "stop"
    assert "".join(deltas) == "Only me." and finishes == ["stop"]


reply_texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda text: text.strip() == text and not text.startswith("#"))


@settings(PROPERTY)
@given(reply=reply_texts, chunks=st.integers(1, 8), stream=st.booleans())
async def test_any_reply_and_chunking_with_two_candidates_arrives_exactly_once(
        relay: str, reply: str, chunks: int, stream: bool) -> None:
    """Property: for any reply text and chunk count, with a second candidate interleaved, the client gets
    exactly the reply, once (never doubled, never the alternative)."""
    body = chat_body(text=directive(reply=reply, chunks=chunks, candidates=2))
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
    assert answer.status == 200, answer.body
    assert answer.content == reply
    if stream:
        assert answer.events.count("[DONE]") == 1 and answer.events[-1] == "[DONE]"


# --- answer phases only --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_unknown_and_tool_phases_never_leak_into_content_or_reasoning(
        relay: str, emulator: RunningEmulator, stream: bool) -> None:
    """§7.4: ``code_interpreter`` and an unknown ``mystery`` phase ("LEAK:<phase>" frames) reach neither
    content nor reasoning."""
    body = chat_body(model=THINKER + "-thinking", text=directive(
        reply="Clean answer.", think="Clean thoughts.", extra_phases=["code_interpreter", "mystery"]))
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
    assert answer.status == 200, answer.body
    assert answer.content == "Clean answer."
    assert answer.reasoning.strip() == "Clean thoughts."
    assert "LEAK" not in answer.content and "LEAK" not in answer.reasoning
    if stream:
        assert not any("LEAK" in event for event in answer.events)
    assert calls(emulator, "POST", COMPLETIONS)[0].directive is not None


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_dropped_phase_frames_are_counted_in_metrics(relay: str, stream: bool) -> None:
    """Frames of phases that are not answer or thinking show in
    ``qwen_relay_upstream_dropped_phase_frames_total``, for a non-stream client too."""
    body = chat_body(text=directive(reply="Counted.", extra_phases=["code_interpreter", "mystery"]))
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, body)
        text_metrics = await metrics_text(session, relay)
    assert answer.status == 200 and answer.content == "Counted."
    assert metric(text_metrics, "qwen_relay_upstream_dropped_phase_frames_total") > 0


# --- clean-up --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_chat_is_deleted_after_the_answer(relay: str, emulator: RunningEmulator, stream: bool) -> None:
    """§7.3: the chat the relay made is deleted (DELETE /api/v2/chats/<id>) after the answer, no stop."""
    async with aiohttp.ClientSession() as session:
        answer = await (stream_answer if stream else post_json)(session, relay, chat_body(
            text=directive(reply="done", chunks=2)))
    assert answer.status == 200 and answer.content == "done"
    (new,) = calls(emulator, "POST", CHATS_NEW)
    await wait_until(lambda: bool(deletes_of(emulator, new.chat_id)), "the chat's DELETE")
    (delete,) = deletes_of(emulator, new.chat_id)
    assert delete.path == f"/api/v2/chats/{new.chat_id}"
    assert delete.status == 200 and delete.chat_deleted
    assert new.chat_id not in emulator.state.chats
    assert calls(emulator, "POST", STOP) == []


async def test_keep_chats_leaves_every_chat_in_the_account(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """``--keep-chats``: no DELETE. The relay deletes within one background call of the answer (previous
    test); here a whole second exchange (chats/new, completion) runs after the first answer and the first
    chat still exists, and no DELETE was ever logged."""
    relay = await relay_factory(dialect="qwen-v2", keep_chats=True)
    async with aiohttp.ClientSession() as session:
        first = await post_json(session, relay, chat_body(text=directive(reply="kept")))
        second = await stream_answer(session, relay, chat_body(text=directive(reply="kept too")))
        third = await post_json(session, relay, chat_body(text=directive(reply="kept three")))
    assert (first.status, second.status, third.status) == (200, 200, 200)
    chat_ids = [r.chat_id for r in calls(emulator, "POST", CHATS_NEW)]
    assert len(chat_ids) == 3
    assert calls(emulator, "DELETE", "/api/v2/chats/", prefix=True) == []
    assert all(chat_id in emulator.state.chats for chat_id in chat_ids)


async def test_client_leaving_mid_stream_stops_the_response_then_deletes_the_chat(
        relay: str, emulator: RunningEmulator, tap: PathTap) -> None:
    """§7.3: after a disconnect the relay sends ``POST …/stop?chat_id=<id>`` with ``{"chat_id",
    "response_id"}`` of the followed response, then DELETEs the chat."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(relay + "/v1/chat/completions", headers=auth(), json=chat_body(
            stream=True, text=directive(reply="a b c d e f g h", chunks=8, delay_ms=300)))
        assert response.status == 200
        await response.content.readany()
        response.close()
    (completion,) = calls(emulator, "POST", COMPLETIONS)
    await wait_until(lambda: bool(calls(emulator, "POST", STOP)), "the stop call")
    await wait_until(lambda: bool(deletes_of(emulator, completion.chat_id)), "the chat's DELETE")
    (stop,) = calls(emulator, "POST", STOP)
    (delete,) = deletes_of(emulator, completion.chat_id)
    assert tap.of(stop) == f"{STOP}?chat_id={completion.chat_id}"
    assert stop.body == {"chat_id": completion.chat_id, "response_id": completion.response_id}
    assert stop.status == 200
    assert emulator.state.stop_calls == [(completion.chat_id, completion.response_id)]
    assert stop.number < delete.number and delete.chat_deleted
    await wait_until(lambda: completion.finished, "the upstream stream to end")
    assert completion.stopped or completion.client_disconnected


CLIENT_CLOSED = 'qwen_relay_requests_total{method="POST",route="/v1/chat/completions",status="499"}'


async def leave_after_response_created(relay: str, emulator: RunningEmulator) -> RequestRecord:
    """Start a stream and leave while the relay holds ``response.created`` but has sent the client nothing.

    Deterministic: the emulator waits 3 s after ``response.created`` before any answer frame, so the relay
    has no substantial frame and has not prepared its response. The client leaves once the emulator has
    sent the head and that first event (it sets the status as it sends the head, and writes the event right
    after) and a /metrics round trip through the same event loop has let the relay read it.
    """
    client = aiohttp.ClientSession()
    try:
        post = asyncio.ensure_future(client.post(relay + "/v1/chat/completions", headers=auth(), json=chat_body(
            stream=True, text=directive(reply="late answer", chunks=2, delay_ms=3000))))
        await wait_until(lambda: any(r.status == 200 for r in calls(emulator, "POST", COMPLETIONS)),
                         "the completion's head and response.created")
        async with aiohttp.ClientSession() as watcher:
            await metrics_text(watcher, relay)
        assert not emulator.state.first_chunk_sent.is_set(), "no answer frame may have been sent yet"
        assert not post.done(), "the relay must not have answered the client yet"
        post.cancel()
        await asyncio.gather(post, return_exceptions=True)
    finally:
        await client.close()
    (completion,) = calls(emulator, "POST", COMPLETIONS)
    return completion


async def test_client_leaving_as_the_stream_starts_is_counted_499(relay: str, emulator: RunningEmulator) -> None:
    """A client that leaves before the relay's first byte is logged and counted as 499 (nginx's "client
    closed request"), and the upstream stream is closed."""
    completion = await leave_after_response_created(relay, emulator)
    async with aiohttp.ClientSession() as watcher:
        text = ""
        for _ in range(250):  # the relay counts it when its cancelled handler unwinds: poll, 5 s at most
            text = await metrics_text(watcher, relay)
            if metric(text, CLIENT_CLOSED) >= 1:
                break
            await asyncio.sleep(0.02)
    assert metric(text, CLIENT_CLOSED) == 1, [line for line in text.splitlines() if "requests_total" in line]
    await wait_until(lambda: completion.finished, "the upstream stream to end")
    assert completion.events_sent == 0


async def test_client_leaving_as_the_stream_starts_stops_the_announced_response(
        relay: str, emulator: RunningEmulator, tap: PathTap) -> None:
    """The response ``response.created`` announced is stopped (``POST …/stop?chat_id=`` with both ids) before
    the chat is deleted, as after a disconnect mid-answer: closing the connection alone may not stop the
    service generating (§7.3)."""
    completion = await leave_after_response_created(relay, emulator)
    await wait_until(lambda: bool(deletes_of(emulator, completion.chat_id)), "the chat's DELETE")
    (delete,) = deletes_of(emulator, completion.chat_id)
    stops = calls(emulator, "POST", STOP)
    assert stops, "the abandoned response was never stopped (only its chat was deleted)"
    assert tap.of(stops[0]) == f"{STOP}?chat_id={completion.chat_id}"
    assert stops[0].body == {"chat_id": completion.chat_id, "response_id": completion.response_id}
    assert stops[0].number < delete.number
