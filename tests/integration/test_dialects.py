"""One client-facing suite, run against every upstream dialect (issue 4).

qwen-v1 (cumulative), qwen-phase (phase-tagged increments) and qwen-v2 (chat
created first, one folded user message, no [DONE]) must look the same to an
OpenAI client: the exact answer once, reasoning in ``reasoning_content``, one
``finish_reason``, one ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from relay.emulator import RunningEmulator
from tests.conftest import TOKEN, RelayFactory, auth, directive, parse_sse

DIALECTS = ["qwen-v1", "qwen-phase", "qwen-v2"]
THINKER = "qwen3-max"


@pytest.fixture(params=DIALECTS)
async def dialect_relay(request: pytest.FixtureRequest, relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect=request.param)


@pytest.fixture
async def sdk(dialect_relay: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=dialect_relay + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as client:
        yield client


async def stream_parts(session: aiohttp.ClientSession, relay: str, body: dict[str, Any]
                       ) -> tuple[str, str, list[dict[str, Any]], list[str]]:
    """POST a stream; return (content, reasoning, chunks, raw events)."""
    async with session.post(relay + "/v1/chat/completions", json={**body, "stream": True},
                            headers=auth()) as response:
        assert response.status == 200, await response.text()
        events = parse_sse(await response.text())
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or ""
                        for c in chunks if c.get("choices"))
    return content, reasoning, chunks, events


def user(text: str, model: str = THINKER, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_stream_and_non_stream_answers_are_exact(sdk: AsyncOpenAI) -> None:
    text = "Grüße — 中文 🚀 \"quoted\"\nnew line"
    reply = await sdk.chat.completions.create(**user(directive(reply=text)))
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == "stop"
    stream = await sdk.chat.completions.create(**user(directive(reply=text, chunks=5)), stream=True,
                                               stream_options={"include_usage": True})
    deltas, finishes, usage = [], [], None
    async for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        deltas.append(chunk.choices[0].delta.content or "")
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert "".join(deltas) == text
    assert finishes == ["stop"]
    assert usage is not None and usage.completion_tokens > 0


async def test_thinking_variant_streams_reasoning_content(dialect_relay: str) -> None:
    """``<id>-thinking`` turns thinking on; it arrives as reasoning_content, never as content."""
    async with aiohttp.ClientSession() as session:
        content, reasoning, chunks, events = await stream_parts(
            session, dialect_relay, user(directive(reply="The answer.", think="Step one. Step two.", chunks=4),
                                         model=THINKER + "-thinking"))
    assert reasoning.replace("\n", " ").split() == ["Step", "one.", "Step", "two."]
    assert content == "The answer."
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    reasoning_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("reasoning_content")]
    assert len(reasoning_chunks) >= 2, "reasoning must stream as it arrives, not in one batch"


async def test_thinking_off_leaves_no_trace_in_content(dialect_relay: str) -> None:
    """Immersive Translate's ``enable_thinking: false``: the answer only."""
    async with aiohttp.ClientSession() as session, session.post(dialect_relay + "/v1/chat/completions", headers=auth(), json=user(
            directive(reply="Translated.", think="hidden"), enable_thinking=False,
            chat_template_kwargs={"enable_thinking": False}, temperature=0)) as response:
        body = await response.json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Translated."
    assert "think" not in message["content"] and not message.get("reasoning_content")


async def test_non_stream_thinking_is_message_reasoning_content(dialect_relay: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(dialect_relay + "/v1/chat/completions", headers=auth(), json=user(
            directive(reply="Done.", think="Because."), model=THINKER + "-thinking")) as response:
        body = await response.json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Done."
    assert message["reasoning_content"].strip() == "Because."


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reasoning_in_content_puts_think_tags_back(relay_factory: RelayFactory, dialect: str) -> None:
    relay = await relay_factory(dialect=dialect, reasoning_in_content=True)
    async with aiohttp.ClientSession() as session:
        content, reasoning, _, _ = await stream_parts(session, relay, user(
            directive(reply="Answer.", think="Why."), model=THINKER + "-thinking"))
    assert reasoning == ""
    assert content.startswith("<think>") and content.endswith("</think>\n\nAnswer.")
    assert content[len("<think>"):-len("</think>\n\nAnswer.")].strip() == "Why."


async def test_models_list_has_variants_only_where_capable(dialect_relay: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(dialect_relay + "/v1/models", headers=auth()) as response:
        ids = {m["id"] for m in (await response.json())["data"]}
    assert {"qwen3-max-thinking", "qwen3-max-search", "qwen3-max-thinking-search"} <= ids
    assert "qwen2.5-coder-32b-instruct-thinking" not in ids
    assert "qwen2.5-coder-32b-instruct-search" not in ids


async def test_search_variant_surfaces_sources(dialect_relay: str) -> None:
    sources = [{"title": "Qwen docs", "url": "https://qwen.example/docs"}]
    async with aiohttp.ClientSession() as session:
        content, _, _, _ = await stream_parts(session, dialect_relay, user(
            directive(reply="Found it.", sources=sources), model=THINKER + "-search"))
    assert content.startswith("Found it.")
    assert "[Qwen docs](https://qwen.example/docs)" in content


async def test_in_stream_rate_limit_before_content_is_429(dialect_relay: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(dialect_relay + "/v1/chat/completions", headers=auth(), json=user(
            directive(reply="x", stream_error="Too_Many_Requests", after=0), stream=True)) as response:
        assert response.status == 429
        assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
        assert response.headers["Retry-After"].isdigit()


async def test_in_stream_error_after_content_is_error_event_then_done(dialect_relay: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            dialect_relay + "/v1/chat/completions", headers=auth(), json=user(
                directive(reply="partial answer here", chunks=3, stream_error="Mystery_Code", after=1),
                stream=True)) as response:
        events = parse_sse(await response.text())
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert json.loads(events[-2])["error"]["code"] == "upstream_error"


async def test_context_length_exceeded_finishes_with_length(dialect_relay: str) -> None:
    async with aiohttp.ClientSession() as session:
        _, _, chunks, events = await stream_parts(session, dialect_relay, user(
            directive(reply="long text here", chunks=3, stream_error="ContextLengthExceeded", after=1)))
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert events[-1] == "[DONE]"


async def test_waf_page_is_retried_then_reported_as_upstream_challenge(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2", retries=2)
    async with aiohttp.ClientSession() as session, session.post(relay + "/v1/chat/completions", headers=auth(),
                            json=user(directive(reply="x", fault="waf"))) as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert error["code"] == "upstream_challenge"
    assert "WAF" in error["message"] or "firewall" in error["message"]


@pytest.mark.parametrize(("code", "actual", "status", "openai_code"), [
    ("Unauthorized", 401, 401, "invalid_api_key"),
    ("RateLimited", 429, 429, "rate_limit_exceeded"),
])
async def test_v2_http_200_errors_are_mapped_by_their_real_status(
        relay_factory: RelayFactory, code: str, actual: int, status: int, openai_code: str) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session, session.post(relay + "/v1/chat/completions", headers=auth(), json=user(
            directive(reply="x", fault="v2_error", code=code, actual_status=actual, num=2))) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == openai_code
        if status == 429:
            assert response.headers["Retry-After"] == str(2 * 3600)


async def test_v2_folds_history_into_one_user_message(relay_factory: RelayFactory,
                                                   emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    messages = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?\n" + directive(reply="6.")},
    ]
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": THINKER, "messages": messages}) as response:
        assert (await response.json())["choices"][0]["message"]["content"] == "6."
    completion = [r for r in emulator.state.log if r.path.startswith("/api/v2/chat/completions")][-1]
    assert completion.user_message == (
        "System: Be brief.\n\nUser: What is 2+2?\n\nAssistant: 4.\n\nUser: And 3+3?\n" + directive(reply="6."))


async def test_v2_client_leaving_sends_the_stop_request(relay_factory: RelayFactory,
                                                         emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session:
        response = await session.post(relay + "/v1/chat/completions", headers=auth(), json=user(
            directive(reply="a b c d e f", chunks=6, delay_ms=300), stream=True))
        assert response.status == 200
        await response.content.readany()
        response.close()
    async with asyncio.timeout(5):
        await emulator.state.stop_called.wait()
    assert emulator.state.stop_calls and emulator.state.stop_calls[-1][1]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
       .filter(lambda a: a.strip() == a and a and not a.startswith("#")),
       thinking=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
       .filter(lambda t: t.strip() == t and t and "<" not in t and ">" not in t),
       chunks=st.integers(1, 6))
async def test_any_answer_thinking_and_chunking_arrive_exactly_once(
        dialect_relay: str, answer: str, thinking: str, chunks: int) -> None:
    """For any answer, any thinking and any chunking: exactly that reasoning, that answer, one [DONE]."""
    async with aiohttp.ClientSession() as session:
        content, reasoning, _, events = await stream_parts(session, dialect_relay, user(
            directive(reply=answer, think=thinking, chunks=chunks), model=THINKER + "-thinking"))
    assert content == answer
    assert reasoning == thinking
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
