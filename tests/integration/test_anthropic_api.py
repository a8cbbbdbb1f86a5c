"""POST /v1/messages and count_tokens through the official anthropic SDK (issue 18).

The relay runs in front of the 2026 emulator (qwen-v2, strict); the client is
``anthropic.AsyncAnthropic`` as Claude Code's own SDK uses it. The emulator is
steered by a directive line in the user's text (``tests.conftest.directive``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic

from relay.config import Images
from relay.emulator import RunningEmulator
from relay.emulator.png import solid_png
from tests.conftest import TOKEN, RelayFactory, directive

MODEL = "qwen3-max"
BASH = {"name": "Bash", "description": "Run a shell command.",
        "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                         "properties": {"command": {"type": "string"}}, "required": ["command"],
                         "additionalProperties": False}}


def ask(**fields: Any) -> str:
    """A user text steering the emulator (the directive on a line of its own)."""
    return "Please answer.\n" + directive(**fields)


@pytest.fixture
async def relay_url(relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect="qwen-v2", keepalive_s=0.2)


@pytest.fixture
async def client(relay_url: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=relay_url, api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        yield sdk


async def test_a_whole_message_has_the_messages_api_shape(client: AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=256, system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": ask(reply="Hello from Qwen.")}])
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from Qwen."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_a_stream_accumulates_to_the_same_message(client: AsyncAnthropic) -> None:
    async with client.messages.stream(
            model=MODEL, max_tokens=256, messages=[{"role": "user", "content": ask(reply="Streamed words.", chunks=5)}],
    ) as stream:
        events = [event.type async for event in stream]
        message = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    assert message.content[0].text == "Streamed words."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_tool_use_round_trip(client: AsyncAnthropic, stream: bool) -> None:
    """tool_use → the client runs it → tool_result → the answer, as Claude Code does."""
    first_ask = ask(tool_calls=[{"name": "Bash", "arguments": {"command": "echo hi"}}])
    messages: list[Any] = [{"role": "user", "content": first_ask}]
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=256, tools=[BASH],  # type: ignore[list-item]
                                          messages=messages) as events:
            first = await events.get_final_message()
    else:
        first = await client.messages.create(model=MODEL, max_tokens=256, tools=[BASH],  # type: ignore[list-item]
                                             messages=messages)
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "Bash" and call.input == {"command": "echo hi"} and call.id.startswith("toolu_")
    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "is_error": False,
                                      "content": "hi\n" + directive(reply="The command said hi.")}]},
    ]
    final = await client.messages.create(model=MODEL, max_tokens=256, tools=[BASH],  # type: ignore[list-item]
                                         messages=messages)
    assert final.content[0].text == "The command said hi."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


async def test_thinking_arrives_as_thinking_blocks(client: AsyncAnthropic) -> None:
    content = ask(reply="Forty-two.", think="Let me count.")
    message = await client.messages.create(model=MODEL, max_tokens=512,
                                           thinking={"type": "enabled", "budget_tokens": 1024},
                                           messages=[{"role": "user", "content": content}])
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me count."  # type: ignore[union-attr]
    async with client.messages.stream(model=MODEL, max_tokens=512, thinking={"type": "enabled", "budget_tokens": 1024},
                                      messages=[{"role": "user", "content": content}]) as stream:
        deltas = [event.delta.type async for event in stream if event.type == "content_block_delta"]
        streamed = await stream.get_final_message()
    assert "thinking_delta" in deltas and "text_delta" in deltas
    assert streamed.content[0].thinking == "Let me count." and streamed.content[1].text == "Forty-two."  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_stop_sequences_are_applied_by_the_relay(client: AsyncAnthropic, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": ask(reply="one, two, STOP three", chunks=6)}]
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=64, stop_sequences=["STOP"],
                                          messages=messages) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(model=MODEL, max_tokens=64, stop_sequences=["STOP"], messages=messages)
    assert message.content[0].text == "one, two, "  # type: ignore[union-attr]
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"


async def test_what_claude_code_sends_is_accepted(relay_url: str) -> None:
    """System entries inside messages, adaptive thinking, output_config, context_management,
    cache_control, a JSON-string user_id, echoed thinking blocks with empty signatures, ?beta=true."""
    body = {
        "model": "claude-opus-4-8", "max_tokens": 64000, "stream": False,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197;"},
                   {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "first", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Available agent types: none."},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                                              {"type": "text", "text": "ok"}]},
            {"role": "user", "content": ask(reply="Mapped and answered.")},
        ],
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07", "Accept": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(relay_url + "/v1/messages?beta=true", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            message = await response.json()
        async with session.head(relay_url + "/") as probe:
            assert probe.status == 200
    assert message["model"] == "claude-opus-4-8"  # mapped to a Qwen model by the default table
    assert message["content"] == [{"type": "text", "text": "Mapped and answered."}]


async def test_errors_raise_the_sdks_own_exception_types(relay_url: str, client: AsyncAnthropic) -> None:
    async with AsyncAnthropic(base_url=relay_url, api_key="bad token", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as unauthorised:
            await bad.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert unauthorised.value.status_code == 401
    assert unauthorised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad_request:
        await client.messages.create(model=MODEL, max_tokens=8, messages=[])
    assert bad_request.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="gpt-4o", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "[surfaces.anthropic.models]" in unknown.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model=MODEL, max_tokens=8,
                                     messages=[{"role": "user", "content": ask(fault="http_429")}])


async def test_a_fault_after_the_head_is_an_error_event(client: AsyncAnthropic) -> None:
    """A stream that already started ends with ``event: error``, which the SDK raises."""
    content = ask(reply="partial answer then failure", chunks=4, fault="in_stream_error", after=2)
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with client.messages.stream(model=MODEL, max_tokens=64,
                                          messages=[{"role": "user", "content": content}]) as stream:
            async for _ in stream:
                pass
    assert raised.value.body["type"] == "error"  # type: ignore[index]


async def test_pings_keep_a_silent_stream_alive(relay_url: str) -> None:
    """The upstream stalls past --keepalive-interval: ``event: ping`` arrives, then the answer."""
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": ask(reply="After a pause.", chunks=2, delay_ms=700)}]}
    async with aiohttp.ClientSession() as session, session.post(relay_url + "/v1/messages", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        text = await response.text()
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and "ping" in events and events[-1] == "message_stop"


async def test_count_tokens_answers_the_relays_estimate(client: AsyncAnthropic) -> None:
    small = await client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    large = await client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi " * 400}],
                                               tools=[BASH])  # type: ignore[list-item]
    assert 0 < small.input_tokens < large.input_tokens


async def test_an_image_block_is_uploaded_and_arrives_intact(relay_factory: RelayFactory,
                                                             emulator: RunningEmulator) -> None:
    """Claude Code's ``image`` blocks take the chat path's upload (issue 20): the emulator's answer
    names the SHA-256 of the bytes it received."""
    relay = await relay_factory(dialect="qwen-v2", images=Images(oss_base_url=emulator.oss_url))
    image = solid_png(23, 11, (10, 200, 10))
    async with AsyncAnthropic(base_url=relay, api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        message = await sdk.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(image).decode()}},
            {"type": "text", "text": ask(reply="I see it.")},
        ]}])
    text = message.content[0].text  # type: ignore[union-attr]
    assert f"sha256={hashlib.sha256(image).hexdigest()}" in text and "I see it." in text
