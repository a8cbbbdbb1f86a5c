"""Tool calling for coding agents (Roo Code, Cline) through the relay (issue 5)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from relay.emulator import RunningEmulator
from tests.conftest import TOKEN, RelayFactory, auth, directive, parse_sse

ATTEMPT = {"type": "function", "function": {
    "name": "attempt_completion", "description": "Finish the task.", "strict": True,
    "parameters": {"type": "object", "properties": {"result": {"type": "string"}},
                   "required": ["result"], "additionalProperties": False}}}
READ = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
ROO_SYSTEM = "You are Roo, a highly skilled software engineer. " * 600  # ~30 KB, as Roo sends
MODEL = "qwen3-coder-plus"


@pytest.fixture(params=["qwen-v1", "qwen-v2"])
async def relay(request: pytest.FixtureRequest, relay_factory: RelayFactory) -> str:
    return await relay_factory(dialect=request.param)


@pytest.fixture
async def sdk(relay: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as client:
        yield client


def on_own_line(text: str) -> str:
    """qwen-v2 folds the conversation into "Role: text" blocks; a directive needs a line of its own."""
    return "Please.\n" + text


def roo_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": ROO_SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": f"<task>hi</task>\n{text}"}]}]


async def test_roo_stream_with_tools_gets_tool_call_chunks_usage_and_done(relay: str) -> None:
    """CLIENTS.md T5: tool call deltas, finish_reason tool_calls, a choices:[] usage chunk, [DONE]."""
    answer = directive(tool_calls=[{"name": "attempt_completion", "arguments": {"result": "All done ✓"}}],
                       text_before="Let me finish.", chunks=9)
    body = {"model": MODEL, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "messages": roo_messages(answer), "tools": [ATTEMPT, READ], "tool_choice": "auto",
            "parallel_tool_calls": True}
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", json=body, headers=auth()) as response:
        assert response.status == 200
        events = parse_sse(await response.text())
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text.strip() == "Let me finish."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "attempt_completion"
    assert json.loads(calls[0]["function"]["arguments"]) == {"result": "All done ✓"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0
    for delta in deltas:
        if "tool_calls" not in delta and "role" not in delta and delta:
            assert "content" in delta  # Cline crashed on content deltas without the key


async def test_sdk_parses_two_streamed_calls(sdk: AsyncOpenAI) -> None:
    answer = directive(tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}},
                                   {"name": "read_file", "arguments": {"path": "b.py"}}], chunks=17)
    stream = await sdk.chat.completions.create(model=MODEL, stream=True, tools=[READ],  # type: ignore[list-item]
                                               messages=[{"role": "user", "content": on_own_line(answer)}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for tool_call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tool_call.index, {"name": "", "arguments": ""})
            entry["name"] += tool_call.function.name or "" if tool_call.function else ""
            entry["arguments"] += tool_call.function.arguments or "" if tool_call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [json.loads(calls[i]["arguments"])["path"] for i in sorted(calls)] == ["a.py", "b.py"]


async def test_sdk_non_stream_tool_calls_have_null_content(sdk: AsyncOpenAI) -> None:
    reply = await sdk.chat.completions.create(
        model=MODEL, tools=[READ],  # type: ignore[list-item]
        messages=[{"role": "user", "content": on_own_line(directive(tool_calls=[{
            "name": "read_file", "arguments": {"path": "x"}}]))}])
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls and message.tool_calls[0].function.name == "read_file"
    assert json.loads(message.tool_calls[0].function.arguments) == {"path": "x"}


async def test_tool_call_follow_up_turn_is_accepted_and_folded(relay: str, emulator: RunningEmulator) -> None:
    """CLIENTS.md T6: assistant tool_calls with null content and a tool result are accepted."""
    messages = [
        {"role": "user", "content": "Read a.py"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "read_file", "arguments": "{\"path\": \"a.py\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print('ok')"},
        {"role": "user", "content": on_own_line(directive(reply="It prints ok."))},
    ]
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": MODEL, "messages": messages, "tools": [READ]}) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["choices"][0]["message"]["content"] == "It prints ok."
    record = [r for r in emulator.state.log if "completions" in r.path][-1]
    if record.user_message is not None:  # qwen-v2: the folded single message
        assert '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>' in record.user_message
        assert "<tool_response>\nprint('ok')\n</tool_response>" in record.user_message
        assert "<tools>" in record.user_message


async def test_cline_xml_tags_in_text_pass_through_unchanged(relay: str) -> None:
    """CLIENTS.md T7: no tools field; XML tool tags in the answer are plain text, split anywhere."""
    xml = "<read_file>\n<path>src/main.py</path>\n</read_file>"
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
                  "messages": [{"role": "user", "content": directive(reply=xml, chunks=len(xml))}]}) as response:
        events = parse_sse(await response.text())
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text == xml


async def test_malformed_block_is_delivered_as_text_not_an_error(relay: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": MODEL, "tools": [READ], "messages": [{"role": "user", "content": on_own_line(directive(
                tool_calls=[{"name": "read_file", "arguments": {"path": "ok.py"}}],
                malformed_tool_call=True))}]}) as response:
        assert response.status == 200
        message = (await response.json())["choices"][0]["message"]
    assert len(message["tool_calls"]) == 1
    assert "<tool_call>" in message["content"]  # the broken block, as the model wrote it


async def test_required_tool_choice_without_a_call_is_retried_then_reported(
        relay: str, emulator: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": MODEL, "tools": [READ], "tool_choice": "required",
                  "messages": [{"role": "user", "content": on_own_line(directive(reply="No tools for me."))}]}) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "tool_call_missing"
    completions = [r for r in emulator.state.log if "completions" in r.path and r.method == "POST"]
    assert len(completions) == 2  # the one retry


async def test_tools_are_rendered_into_the_prompt(relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    relay = await relay_factory(dialect="qwen-v2")
    async with aiohttp.ClientSession() as session, session.post(
            relay + "/v1/chat/completions", headers=auth(),
            json={"model": MODEL, "tools": [ATTEMPT], "tool_choice": {"type": "function", "function": {
                "name": "attempt_completion"}}, "parallel_tool_calls": False,
                "messages": [{"role": "user", "content": on_own_line(directive(tool_calls=[{
                    "name": "attempt_completion", "arguments": {"result": "x"}}]))}]}) as response:
        assert response.status == 200
    prompt = [r for r in emulator.state.log if r.user_message][-1].user_message or ""
    assert "<tools>" in prompt and '"name": "attempt_completion"' in prompt
    assert 'You must call the function "attempt_completion"' in prompt
    assert "Call at most one function" in prompt
