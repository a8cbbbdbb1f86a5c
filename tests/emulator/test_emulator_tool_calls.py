"""The emulator answers with Hermes ``<tool_call>`` blocks when a directive asks (issue 5).

The answer text is the same in all three dialects and goes through the usual stream
knobs, so a relay test can have blocks split at every position, two calls in one
answer, a call after some text, and a malformed block.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import DirectiveError, hermes_block, make_emulator_app, parse_directive, tool_call_answer
from relay.emulator.tool_calls import MALFORMED_TOOL_CALL, ToolCallSpec
from relay.pipeline import ToolCall, ToolCallParser, ToolSpec
from tests.emulator.support import (
    AUTH,
    CHAT,
    SSE_TYPE,
    Client,
    chat_headers,
    completion_body,
    completion_url,
    create_chat,
    deltas,
    with_directive,
)

MODEL = "qwen-max-latest"
READ = {"name": "read_file", "arguments": {"path": "src/a.py"}}
DONE = {"name": "attempt_completion", "arguments": {"result": "Fixed “it” \n<b>ok</b>"}}
TOOLS = {"read_file": ToolSpec("read_file", frozenset({"path"})),
         "attempt_completion": ToolSpec("attempt_completion", frozenset({"result"}))}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


def directive(**fields: Any) -> str:
    return f"#emulator {json.dumps(fields)}"


# -- the directive ------------------------------------------------------------------------

def test_tool_call_fields_are_parsed() -> None:
    parsed = parse_directive([directive(tool_calls=[READ, {"name": "list_files"}], text_before="Hi\n",
                                        malformed_tool_call=True, chunks=3)])
    assert parsed is not None and parsed.has_tool_calls
    assert [(c.name, c.arguments, c.has_arguments) for c in parsed.tool_calls or ()] == [
        ("read_file", {"path": "src/a.py"}, True), ("list_files", None, False)]
    assert parsed.text_before == "Hi\n" and parsed.malformed_tool_call is True


@pytest.mark.parametrize(("fields", "message"), [
    ({"tool_calls": []}, "non-empty list"),
    ({"tool_calls": {"name": "x"}}, "non-empty list"),
    ({"tool_calls": [{"arguments": {}}]}, "string name"),
    ({"tool_calls": [{"name": "x", "args": {}}]}, "unknown key"),
    ({"tool_calls": [{"name": "x", "arguments": [1]}]}, "object or a string"),
    ({"tool_calls": [READ], "reply": "x"}, "either reply"),
    ({"malformed_tool_call": True, "pieces": ["x"]}, "either pieces"),
    ({"text_before": "x"}, "needs tool_calls"),
    ({"text_before": "x", "malformed_tool_call": False}, "needs tool_calls"),
    ({"malformed_tool_call": "yes"}, "true or false"),
    ({"tool_call": [READ]}, "unknown emulator directive field"),
])
def test_bad_tool_call_fields_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(DirectiveError, match=message):
        parse_directive([directive(**fields)])


async def test_bad_tool_call_directive_is_a_400(client: Client) -> None:
    text = with_directive("hi", tool_calls=[{"name": "x", "arguments": 1}])
    payload = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True}
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert resp.status == 400
        assert "tool_calls" in await resp.text()


def test_answer_text_is_text_before_then_one_block_per_call() -> None:
    calls = [ToolCallSpec("read_file", {"path": "a"}), ToolCallSpec("ls", has_arguments=False),
             ToolCallSpec("x", '{"k": 1}')]
    assert tool_call_answer("Let me look.\n", calls, malformed=True) == (
        "Let me look.\n"
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "ls"}\n</tool_call>\n'
        '<tool_call>\n{"name": "x", "arguments": "{\\"k\\": 1}"}\n</tool_call>\n'
        + MALFORMED_TOOL_CALL
    )
    assert hermes_block("中", {"p": "é"}) == '<tool_call>\n{"name": "中", "arguments": {"p": "é"}}\n</tool_call>'


def relay_view(pieces: list[str]) -> list[Any]:
    """What the relay's parser makes of the answer: text and ``(name, arguments)``."""
    parser = ToolCallParser(TOOLS)
    items = [item for piece in pieces for item in parser.feed(piece)] + parser.flush()
    out: list[Any] = []
    for item in items:
        if isinstance(item, ToolCall):
            out.append((item.name, json.loads(item.arguments)))
        elif out and isinstance(out[-1], str):
            out[-1] += item
        else:
            out.append(item)
    return out


# -- every dialect --------------------------------------------------------------------------

FIELDS: dict[str, Any] = {"tool_calls": [READ, DONE], "text_before": "I will read it.\n", "malformed_tool_call": True}
EXPECTED = tool_call_answer("I will read it.\n", [ToolCallSpec(**READ), ToolCallSpec(**DONE)], malformed=True)


async def v1_increments(client: Client, text: str, **extra: Any) -> list[str]:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True, **extra}
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == SSE_TYPE
        raw = await resp.text()
    contents = [d["content"] for d in deltas(raw)]
    if extra.get("incremental_output"):
        return contents
    return [b[len(a):] for a, b in zip(["", *contents], contents, strict=False)]  # de-accumulate


async def test_v1_cumulative_stream_splits_blocks_at_every_position(client: Client) -> None:
    """``chunks`` = one character per event: every block boundary is a chunk boundary."""
    pieces = await v1_increments(client, with_directive("hi", **FIELDS, chunks=len(EXPECTED)))
    assert pieces == list(EXPECTED)
    assert relay_view(pieces) == ["I will read it.\n", ("read_file", READ["arguments"]),
                                  ("attempt_completion", DONE["arguments"]), "\n" + MALFORMED_TOOL_CALL]


async def test_v1_byte_split_still_carries_the_blocks(client: Client) -> None:
    pieces = await v1_increments(client, with_directive("hi", tool_calls=[DONE], chunks=4, split="byte"))
    assert "".join(pieces) == hermes_block(DONE["name"], DONE["arguments"])
    assert relay_view(pieces) == [("attempt_completion", DONE["arguments"])]


async def test_phase_stream_carries_the_blocks_as_answer_text(client: Client) -> None:
    message = {"role": "user", "content": with_directive("hi", **FIELDS, chunks=7), "chat_type": "t2t",
               "feature_config": {"thinking_enabled": False, "output_schema": "phase"}}
    payload = {"model": MODEL, "messages": [message], "stream": True, "incremental_output": True}
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        raw = await resp.text()
    answer = [d["content"] for d in deltas(raw) if d.get("phase") == "answer"]
    assert "".join(answer) == EXPECTED and len([p for p in answer if p]) == 7


async def test_v2_stream_carries_the_blocks_as_answer_text(client: Client) -> None:
    chat_id = await create_chat(client, MODEL)
    payload = completion_body(chat_id, with_directive("hi", **FIELDS, chunks=len(EXPECTED)), model=MODEL,
                              feature_config={"thinking_enabled": False, "output_schema": "phase"})
    async with client.post(completion_url(chat_id), json=payload, headers=chat_headers(chat_id)) as resp:
        raw = await resp.text()
    answer = [d["content"] for d in deltas(raw) if d.get("phase") == "answer" and d.get("status") == "typing"]
    assert answer == list(EXPECTED)


async def test_non_stream_answer_is_the_same_text(client: Client) -> None:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": with_directive("hi", **FIELDS)}],
               "stream": False}
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        body = await resp.json()
    assert body["choices"][0]["message"]["content"] == EXPECTED


async def test_malformed_block_alone_comes_back_as_text(client: Client) -> None:
    pieces = await v1_increments(client, with_directive("hi", malformed_tool_call=True, chunks=5),
                                 incremental_output=True)
    assert "".join(pieces) == MALFORMED_TOOL_CALL
    assert relay_view(pieces) == [MALFORMED_TOOL_CALL]
