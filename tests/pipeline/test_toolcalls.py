"""Tool-call stage (relay/pipeline/toolcalls.py): Hermes ``<tool_call>`` blocks → calls (issue 5).

Roo Code has no fallback when a turn has no tool call, and Cline v4 parses
``delta.tool_calls`` only: every block the model writes must become exactly one
call, every other character must reach the client exactly once, whatever the
chunking, and a malformed block must never crash the stream.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline import (
    Frame,
    ToolCall,
    ToolCallParser,
    ToolSpec,
    aggregate,
    extract_tool_calls,
    tool_calls_json,
    tool_specs,
)
from relay.pipeline.toolcalls import MAX_BLOCK_CHARS, TOOL_CALL_OPEN

ID = re.compile(r"call_[0-9a-f]{24}")
TOOLS = {
    "read_file": ToolSpec("read_file", required=frozenset({"path"})),
    "attempt_completion": ToolSpec("attempt_completion", required=frozenset({"result"}),
                                   properties=frozenset({"result"})),
    "list_files": ToolSpec("list_files"),
    "execute_command": ToolSpec("execute_command", required=frozenset({"command", "cwd"}),
                                properties=frozenset({"command", "cwd"}), nullable=frozenset({"cwd"})),
}
READ = '{"name": "read_file", "arguments": {"path": "a.py"}}'

Item = str | tuple[str, Any]


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def normalise(items: list[str | ToolCall]) -> list[Item]:
    """Merge adjacent text; calls as ``(name, decoded arguments)``."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, str):
            if out and isinstance(out[-1], str):
                out[-1] += item
            elif item:
                out.append(item)
        else:
            out.append((item.name, json.loads(item.arguments)))
    return out


def parse(text: str, size: int | None = None, tools: dict[str, ToolSpec] = TOOLS) -> list[Item]:
    """Feed ``text`` in pieces of ``size`` characters (whole if None), then flush."""
    parser = ToolCallParser(tools)
    step = size or max(1, len(text))
    items: list[str | ToolCall] = []
    for start in range(0, len(text), step):
        items += parser.feed(text[start:start + step])
    items += parser.flush()
    return normalise(items)


def parse_every_way(text: str, tools: dict[str, ToolSpec] = TOOLS) -> list[Item]:
    """Parse whole, one character at a time and cut in two at every position: one result."""
    whole = parse(text, tools=tools)
    assert parse(text, 1, tools) == whole
    for cut in range(1, len(text)):
        parser = ToolCallParser(tools)
        items = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.flush()
        assert normalise(items) == whole, cut
    return whole


# -- policy: repaired, then accepted as a call ------------------------------------------

@pytest.mark.parametrize(("body", "call"), [
    (READ, ("read_file", {"path": "a.py"})),
    ('```json\n{"name": "read_file", "arguments": {"path": "a.py"}}\n```', ("read_file", {"path": "a.py"})),
    ('```\n{"name": "read_file", "arguments": {"path": "a.py"}}```', ("read_file", {"path": "a.py"})),
    ('{"name": "read_file", "arguments": {"path": "a.py", "n": [1, 2,],},}',
     ("read_file", {"path": "a.py", "n": [1, 2]})),
    ('{"name": "read_file", "arguments": "{\\"path\\": \\"a.py\\"}"}', ("read_file", {"path": "a.py"})),
    ('{"name": "read_file", "parameters": {"path": "a.py"}}', ("read_file", {"path": "a.py"})),
    ('{"name": "list_files"}', ("list_files", {})),
    ('{"name": "list_files", "arguments": ""}', ("list_files", {})),
    ('{"name": "read_file", "arguments": {"path": "line 1\nline 2\tend"}}',
     ("read_file", {"path": "line 1\nline 2\tend"})),
    ('{"name": "read_file", "arguments": {"path": "</tool_call> <tool_call> \\" {"}}',
     ("read_file", {"path": '</tool_call> <tool_call> " {'})),
], ids=["plain", "fenced", "fence-no-newline", "trailing-commas", "arguments-as-string", "parameters",
        "no-arguments", "empty-string-arguments", "raw-newline-in-string", "tags-inside-a-string"])
def test_repairable_blocks_become_calls(body: str, call: tuple[str, dict[str, Any]]) -> None:
    """Each repair of the policy yields one call with the intended arguments, at any split."""
    assert parse_every_way(f"Sure.\n{block(body)}") == ["Sure.\n", call]


def test_nullable_required_field_left_out_is_filled_with_null() -> None:
    """Roo Code's strict schemas list every field as required, optional ones nullable
    (``execute_command.cwd``): leaving one out means null, as in OpenAI strict mode."""
    text = block('{"name": "execute_command", "arguments": {"command": "ls"}}')
    assert parse_every_way(text) == [("execute_command", {"command": "ls", "cwd": None})]
    parser = ToolCallParser(TOOLS)
    [call] = parser.feed(block('{"name": "execute_command", "arguments": {"command": "ls", "cwd": "src"}}'))
    assert isinstance(call, ToolCall) and call.arguments == '{"command":"ls","cwd":"src"}'


def test_missing_closing_tag_at_end_of_stream_is_repaired() -> None:
    assert parse_every_way(f"<tool_call>\n{READ}\n") == [("read_file", {"path": "a.py"})]


def test_missing_closing_tag_before_the_next_block_is_repaired() -> None:
    text = f'<tool_call>{READ}\n<tool_call>{{"name": "list_files"}}</tool_call>'
    assert parse_every_way(text) == [("read_file", {"path": "a.py"}), ("list_files", {})]


def test_arguments_are_compact_json_with_unicode_kept() -> None:
    parser = ToolCallParser(TOOLS)
    [call] = parser.feed(block('{"name": "read_file", "arguments": {"path": "中文 é.py", "deep": {"a": [1, 2]}}}'))
    assert isinstance(call, ToolCall)
    assert call.arguments == '{"path":"中文 é.py","deep":{"a":[1,2]}}'


# -- policy: delivered as plain text, unchanged -----------------------------------------

@pytest.mark.parametrize("body", [
    '{"name": "read_file", "arguments": {path: a.py}}',
    '{"name": "read_file", "arguments": {"path": "a.py"}',
    '{"name": "nope", "arguments": {}}',
    '{"arguments": {"path": "a.py"}}',
    '{"name": 7, "arguments": {"path": "a.py"}}',
    '{"name": "read_file", "arguments": ["a.py"]}',
    '{"name": "read_file", "arguments": "not json"}',
    '{"name": "read_file", "arguments": "[1]"}',
    '{"name": "read_file", "arguments": {}}',
    '{"name": "execute_command", "arguments": {"cwd": "src"}}',
    '{"name": "attempt_completion", "arguments": {"result": "ok", "extra": 1}}',
    '{"name": "read_file", "arguments": {"path": "a"}, "parameters": {"path": "b"}}',
    '{"name": "read_file", "arguments": {"path": NaN}}',
    '{"name": "read_file", "arguments": {"path": "a.py"}} {"name": "list_files"}',
    '[{"name": "list_files"}]',
    "```json\n```",
    "",
], ids=["bad-json", "unbalanced", "unknown-tool", "no-name", "name-not-string", "arguments-list",
        "arguments-string-not-json", "arguments-string-not-object", "required-missing",
        "required-not-nullable-missing", "undeclared-property", "arguments-and-parameters", "nan", "two-objects", "array", "empty-fence",
        "empty"])
def test_malformed_blocks_are_delivered_as_text_exactly(body: str) -> None:
    """Anything the policy cannot safely repair comes back as the very text, tags included."""
    text = f"Before {block(body)} after"
    assert parse_every_way(text) == [text]


def test_unclosed_invalid_block_at_end_of_stream_is_text() -> None:
    text = '<tool_call>{"name": "read_file", "arguments": {"path": "a.py'
    assert parse_every_way(text) == [text]


def test_a_malformed_block_does_not_swallow_the_next_call() -> None:
    bad = block('{"name": "read_file", "arguments": {path: a.py}}')
    assert parse_every_way(f"{bad}\n{block(READ)}") == [bad + "\n", ("read_file", {"path": "a.py"})]


def test_without_tools_every_block_is_text() -> None:
    text = f"x {block(READ)} y"
    assert parse_every_way(text, tools={}) == [text]


# -- streaming: held back only while ambiguous ------------------------------------------

def test_ordinary_text_passes_through_at_once() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Hello, ") == ["Hello, "]
    assert parser.feed("world <b>bold</b>") == ["world <b>bold</b>"]


def test_a_possible_tag_start_is_held_only_while_ambiguous() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("a <tool_") == ["a "]
    assert parser.feed("cal") == []
    assert parser.feed("x>") == ["<tool_calx>"]
    assert parser.feed("<") == []
    assert parser.feed("/tool_call>") == ["</tool_call>"]


def test_prose_that_mentions_the_tag_streams_on() -> None:
    """A block that cannot be JSON is given up at its first character, not held to the end."""
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Use <tool_call>") == ["Use "]
    assert parser.feed("  blocks") == ["<tool_call>  blocks"]
    assert parser.feed(" like this") == [" like this"]


def test_a_call_is_emitted_as_soon_as_its_block_closes() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("<tool_call>\n" + READ) == []
    [call] = parser.feed("\n</tool_call>")
    assert isinstance(call, ToolCall) and call.name == "read_file" and parser.calls == 1


def test_an_oversized_block_is_given_up_as_text() -> None:
    text = '<tool_call>{"name": "read_file", "arguments": {"path": "' + "x" * (MAX_BLOCK_CHARS + 10)
    parser = ToolCallParser(TOOLS)
    out = parser.feed(text[:MAX_BLOCK_CHARS // 2]) + parser.feed(text[MAX_BLOCK_CHARS // 2:])
    assert normalise(out) == [text]
    assert parser.flush() == []


def test_blank_separators_around_calls_are_dropped_other_text_kept() -> None:
    """Blank text between calls or at the answer's ends is layout; text with a word in it is kept whole."""
    call = ("read_file", {"path": "a.py"})
    assert parse_every_way(f"\n\n{block(READ)}\n\n{block(READ)}\n") == [call, call]
    assert parse_every_way(f"Reading.\n\n{block(READ)}\n  Done. \n") == ["Reading.\n\n", call, "\n  Done. \n"]


def test_blank_answer_without_calls_is_kept() -> None:
    assert parse_every_way(" \n\t") == [" \n\t"]


def test_indexes_count_up_and_ids_are_unique() -> None:
    parser = ToolCallParser(TOOLS)
    calls = [item for item in parser.feed(block(READ) * 3) + parser.flush() if isinstance(item, ToolCall)]
    assert [c.index for c in calls] == [0, 1, 2]
    assert all(ID.fullmatch(c.id) for c in calls) and len({c.id for c in calls}) == 3


# -- helpers for the handler -----------------------------------------------------------

def test_tool_calls_json_is_the_openai_message_shape() -> None:
    call = ToolCall(index=0, id="call_" + "a" * 24, name="read_file", arguments='{"path":"a.py"}')
    assert tool_calls_json([call]) == [
        {"id": call.id, "type": "function", "function": {"name": "read_file", "arguments": '{"path":"a.py"}'}}
    ]


def test_tool_specs_read_roo_code_strict_schemas() -> None:
    """``properties`` is enforced only when the schema forbids extras (CLIENTS.md T5);
    nullable fields, in either spelling Roo Code's converter uses, are noted."""
    tools = [
        {"type": "function", "function": {"name": "attempt_completion", "strict": True, "parameters": {
            "type": "object", "properties": {"result": {"type": "string"}}, "required": ["result"],
            "additionalProperties": False}}},
        {"type": "function", "function": {"name": "execute_command", "strict": True, "parameters": {
            "type": "object", "required": ["command", "cwd", "timeout"], "additionalProperties": False,
            "properties": {"command": {"type": "string"}, "cwd": {"type": ["string", "null"]},
                           "timeout": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}}},
        {"type": "function", "function": {"name": "open", "parameters": {"properties": {"x": {}}}}},
        {"type": "function", "function": {"name": "bare"}},
        {"type": "other"},
    ]
    assert tool_specs(tools) == {
        "attempt_completion": ToolSpec("attempt_completion", frozenset({"result"}), frozenset({"result"})),
        "execute_command": ToolSpec("execute_command", frozenset({"command", "cwd", "timeout"}),
                                    frozenset({"command", "cwd", "timeout"}), frozenset({"cwd", "timeout"})),
        "open": ToolSpec("open"),
        "bare": ToolSpec("bare"),
    }


# -- the stage --------------------------------------------------------------------------

async def frames_of(*frames: Frame) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame


async def run_stage(*frames: Frame, tools: dict[str, ToolSpec] = TOOLS) -> list[Frame]:
    return [frame async for frame in extract_tool_calls(frames_of(*frames), tools)]


def last_finish(frames: list[Frame]) -> str | None:
    finishes = [f.finish_reason for f in frames if f.finish_reason is not None]
    return finishes[-1] if finishes else None


async def test_stage_keeps_text_and_calls_in_order_across_frames() -> None:
    text = f"I'll read both.\n{block(READ)}\n{block(READ)}"
    out = await run_stage(Frame(content=text[:20]), Frame(content=text[20:]), Frame(finish_reason="stop"))
    kinds = [("text", f.content) if f.content else ("calls", len(f.tool_calls or [])) for f in out
             if f.content or f.tool_calls]
    assert kinds == [("text", "I'll read both.\n"), ("calls", 2)]
    assert all(not (f.content and f.tool_calls) for f in out)
    assert last_finish(out) == "tool_calls"


@pytest.mark.parametrize(("upstream_finish", "expected"), [
    ("stop", "tool_calls"), (None, "tool_calls"), ("length", "length"), ("content_filter", "content_filter"),
])
async def test_finish_reason_becomes_tool_calls_after_a_call(upstream_finish: str | None, expected: str) -> None:
    """"stop" or no finish at all becomes "tool_calls"; "length" and others are kept."""
    tail = [Frame(finish_reason=upstream_finish)] if upstream_finish else []
    out = await run_stage(Frame(content=block(READ)), *tail)
    assert last_finish(out) == expected


async def test_finish_reason_is_untouched_without_calls() -> None:
    out = await run_stage(Frame(content="plain <tool_"), Frame(finish_reason="stop"))
    assert "".join(f.content for f in out) == "plain <tool_"
    assert last_finish(out) == "stop"
    assert await run_stage(Frame(content="x")) == [Frame(content="x")]


async def test_a_block_repaired_at_the_finish_frame_ends_with_tool_calls() -> None:
    """The finish frame settles held text: an unclosed block becomes a call before the finish."""
    out = await run_stage(Frame(content="<tool_call>" + READ), Frame(finish_reason="stop", usage={"t": 1}))
    assert [len(f.tool_calls or []) for f in out] == [1]
    assert out[0].finish_reason == "tool_calls" and out[0].usage == {"t": 1}


async def test_reasoning_and_metadata_pass_untouched() -> None:
    """Reasoning frames are not parsed; a split frame keeps reasoning first, finish and usage last."""
    out = await run_stage(
        Frame(reasoning="<tool_call>not parsed</tool_call>"),
        Frame(content=f"a{block(READ)}b", reasoning="r", extra={"k": 1}, usage={"u": 1}),
    )
    assert out[0] == Frame(reasoning="<tool_call>not parsed</tool_call>")
    assert [(f.content, f.reasoning, f.extra, f.usage, bool(f.tool_calls)) for f in out[1:4]] == [
        ("a", "r", {"k": 1}, None, False),
        ("", "", None, None, True),
        ("b", "", None, {"u": 1}, False),
    ]
    assert out[-1] == Frame(finish_reason="tool_calls")


async def test_held_text_frame_keeps_its_metadata() -> None:
    out = await run_stage(Frame(content="<tool", usage={"u": 2}), Frame(content="bar"))
    assert out == [Frame(usage={"u": 2}), Frame(content="<toolbar")]


async def test_stage_closes_its_source_on_early_close() -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[Frame]:
        try:
            yield Frame(content="a")
            yield Frame(content="b")
        finally:
            closed.append(True)

    stage = extract_tool_calls(source(), TOOLS)
    assert (await anext(stage)).content == "a"
    await stage.aclose()
    assert closed == [True]


async def test_aggregate_returns_the_calls() -> None:
    answer = await aggregate(extract_tool_calls(frames_of(
        Frame(content=f"Text {block(READ)}"), Frame(finish_reason="stop", usage={"u": 1})), TOOLS))
    assert (answer.content, answer.reasoning, answer.finish_reason, answer.usage) == ("Text ", "", "tool_calls",
                                                                                       {"u": 1})
    assert [(c.index, c.name, c.arguments) for c in answer.tool_calls] == [(0, "read_file", '{"path":"a.py"}')]


# -- the property ------------------------------------------------------------------------

NAMES = ["read_file", "write_to_file", "attempt_completion", "ask_followup_question"]
ANY_TOOLS = {name: ToolSpec(name) for name in NAMES}
_special = st.sampled_from(["<tool_call>", "</tool_call>", "<", ">", "{", "}", '"', "\\", "\n", "```", "中", "😀"])
json_strings = st.lists(st.one_of(_special, st.text(max_size=6)), max_size=6).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_strings, inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(json_strings, json_values, max_size=4)
blank = st.text(st.sampled_from(" \t\r\n"), max_size=3)
#: Answer text between calls: anything but a complete opening tag (that would start a block).
free_text = st.lists(st.one_of(_special, st.text(max_size=8)), max_size=5).map("".join).filter(
    lambda t: TOOL_CALL_OPEN not in t)


@st.composite
def rendered_call(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """``(block text, name, arguments)``, written in any layout the policy accepts."""
    name, args = draw(st.sampled_from(NAMES)), draw(arguments)
    key = draw(st.sampled_from(["arguments", "parameters"]))
    value: Any = json.dumps(args, ensure_ascii=False) if draw(st.booleans()) else args
    indent = draw(st.sampled_from([None, 2]))
    body = json.dumps({"name": name, key: value}, ensure_ascii=draw(st.booleans()), indent=indent)
    if draw(st.booleans()):
        body = f"```{draw(st.sampled_from(['', 'json']))}\n{body}\n```"
    text = f"<tool_call>{draw(blank)}{body}{draw(blank)}</tool_call>"
    return text, name, args


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[str], list[Item]]:
    """``(frame texts, expected items)`` for text interleaved with calls, cut anywhere."""
    calls = draw(st.lists(rendered_call(), max_size=3))
    texts = [draw(st.one_of(free_text, blank)) for _ in range(len(calls) + 1)]
    expected: list[Item] = []
    whole = ""
    for index, text in enumerate(texts):
        if not calls or text.strip(" \t\r\n"):
            expected.append(text)  # blank text next to calls is layout, dropped
        whole += text
        if index < len(calls):
            whole += calls[index][0]
            expected.append((calls[index][1], calls[index][2]))
    cuts = draw(st.lists(st.integers(0, len(whole)), max_size=12))
    bounds = [0, *sorted(cuts), len(whole)]
    pieces = [whole[a:b] for a, b in itertools.pairwise(bounds)]
    return pieces, [item for item in expected if item != ""]


@settings(max_examples=200, deadline=None)
@given(answers(), st.booleans())
async def test_any_text_and_calls_split_anywhere_come_out_exactly(
    answer: tuple[list[str], list[Item]], finish_frame: bool,
) -> None:
    """For any text and any valid calls interleaved, cut at any positions: the client gets
    exactly the text, exactly the calls in order (indexes 0..n-1, unique ids), and
    ``tool_calls`` as finish_reason iff there was a call."""
    pieces, expected = answer
    tail = [Frame(finish_reason="stop")] if finish_frame else []
    out = await run_stage(*(Frame(content=p) for p in pieces), *tail, tools=ANY_TOOLS)
    items: list[str | ToolCall] = []
    for frame in out:
        assert not (frame.content and frame.tool_calls)
        items.append(frame.content)
        items.extend(frame.tool_calls or [])
    assert normalise(items) == expected
    calls = [item for item in items if isinstance(item, ToolCall)]
    assert [call.index for call in calls] == list(range(len(calls)))
    assert len({call.id for call in calls}) == len(calls) and all(ID.fullmatch(c.id) for c in calls)
    expected_finish = "tool_calls" if calls else ("stop" if finish_frame else None)
    assert last_finish(out) == expected_finish


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_special, st.sampled_from(["<tool_call>", "{", '"name"', ":", "}"]),
                          st.text(max_size=6)), max_size=20).map("".join), st.integers(1, 9))
def test_with_no_known_tool_any_text_comes_back_exactly(text: str, size: int) -> None:
    """Never raises, never loses or duplicates: with no tool to call, every block is text."""
    assert "".join(item for item in parse(text, size, tools={}) if isinstance(item, str)) == text
