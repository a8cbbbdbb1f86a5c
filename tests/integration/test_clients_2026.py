"""The README's clients against the strict 2026 emulator, as users run both (issue 16, done-when).

The relay and the emulator are real processes: ``python -m relay`` (default dialect
qwen-v2) in front of ``python -m relay.emulator`` (strict by default) on its own
port, and ``python -m relay --upstream emulator`` (the demo, the emulator in-process).
The client is the official ``openai`` SDK doing what the table's clients do: list
models, stream with usage (chat apps, Cherry Studio), answer without streaming
(Immersive Translate, with its thinking-off fields), native tool calls (Roo Code,
Cline), a thinking model's reasoning_content.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from openai import AsyncOpenAI

from tests.conftest import directive as emulator_line
from tests.integration.accounts_support import EmulatorProcess
from tests.integration.test_cli_process import RelayProcess, _start

TOKEN = "demo-client-token"


def directive(**fields: object) -> str:
    """A user message steering the emulator: the directive on a line of its own, as qwen-v2 folds
    a conversation into ``Role: text`` blocks whose first line carries the role."""
    return "Please answer.\n" + emulator_line(**fields)

MODEL = "qwen3-max"
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]


@pytest.fixture(params=["own-process", "in-process"])
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[RelayProcess]:
    async with AsyncExitStack() as stack:
        if request.param == "own-process":
            emulator = await stack.enter_async_context(EmulatorProcess.running())
            relay = await _start("--upstream", emulator.url)
        else:
            relay = await _start("--upstream", "emulator")
        try:
            yield relay
        finally:
            if relay.process.returncode is None:
                relay.process.kill()
                await relay.process.wait()


@pytest.fixture
async def client(relay: RelayProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=relay.url + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        yield sdk


async def test_models_stream_with_usage_and_a_plain_answer(client: AsyncOpenAI) -> None:
    ids = [model.id async for model in client.models.list()]
    assert MODEL in ids and "qwen3.8-plus" in ids
    stream = await client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, temperature=0.3, top_p=0.9,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": directive(reply="Hello from 2026.", chunks=4)}])
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "Hello from 2026." and usage is not None and usage.completion_tokens > 0
    answer = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": directive(reply="Bonjour.")}],
        extra_body={"enable_thinking": False, "chat_template_kwargs": {"enable_thinking": False}})
    assert answer.choices[0].message.content == "Bonjour."


async def test_native_tool_calls_as_roo_code_and_cline_send_them(client: AsyncOpenAI) -> None:
    text = directive(tool_calls=[{"name": "read_file", "arguments": {"path": "README.md"}}])
    answer = await client.chat.completions.create(model=MODEL, tools=TOOLS,  # type: ignore[arg-type]
                                                  messages=[{"role": "user", "content": text}])
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.function.name == "read_file" and json.loads(call.function.arguments) == {"path": "README.md"}
    assert answer.choices[0].finish_reason == "tool_calls"


async def test_a_thinking_model_streams_its_reasoning(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL + "-thinking", stream=True,
        messages=[{"role": "user", "content": directive(reply="42.", think="Six times seven.")}])
    reasoning, text = "", ""
    async for chunk in stream:
        if chunk.choices:
            extra = chunk.choices[0].delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            text += chunk.choices[0].delta.content or ""
    assert reasoning == "Six times seven." and text == "42."
