"""Tool calls: turn the model's Hermes-style ``<tool_call>`` blocks into OpenAI calls.

Qwen Chat's web API has no function-calling field, so the relay describes the
tools in the prompt and the model answers in the format Qwen models are trained
on::

    <tool_call>
    {"name": "read_file", "arguments": {"path": "a.py"}}
    </tool_call>

Strategy: ``ToolCallParser`` is sans-IO, like ``ThinkSplitter``. Outside a block,
text is delivered at once except a suffix that may be the start of
``<tool_call>``, held only while it is ambiguous. Inside a block, text is
buffered up to ``</tool_call>``; a closing tag that falls inside the JSON (in a
string, or before the object's last brace) does not end the block, so arguments
may mention the tags. The finished block is parsed once, so a long ``arguments``
costs one JSON decode, not one per chunk. A block whose first non-blank character
cannot start a JSON object (or a fence) is given up at once and streams on as
text, so prose that merely mentions ``<tool_call>`` is not held until the end.

Malformed-block policy (never raises; no text is lost or duplicated but blank separators):

- Repaired, then accepted as a call: the JSON wrapped in a Markdown fence
  (```` ```json … ``` ````); trailing commas before ``}`` or ``]``; raw newlines or
  tabs inside JSON strings; ``"arguments"`` given as a JSON string holding an
  object (decoded); ``"parameters"`` used instead of ``"arguments"``; no
  ``"arguments"`` at all (taken as ``{}``, then checked like any other); a field
  the schema lets be null left out (filled in as null: what OpenAI strict mode
  means by optional); a missing ``</tool_call>`` when the stream ends or the next
  ``<tool_call>`` begins, provided the JSON object before it is complete.
- Delivered as plain text, exactly as the model wrote it, tags included: JSON that
  is still invalid after those repairs (or not one object, or with NaN/Infinity);
  a missing or unknown tool name; both ``"arguments"`` and ``"parameters"``;
  arguments that are not an object; a field the schema's ``required`` lists
  missing; a field the schema does not declare when it forbids extras
  (``ToolSpec.properties`` given); a block longer than ``MAX_BLOCK_CHARS``.
- Blank text (spaces, tabs, line ends only) between calls, or between a call
  and the start or end of the answer, is the model's separator, not answer text,
  and is dropped; so an answer that is only calls has no content. Every other
  piece of text reaches the client exactly, whitespace included.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UpstreamProtocolError
from ._util import close_source, stage
from .frames import HEARTBEAT, Frame, ToolCall
from .think import _held_suffix

__all__ = [
    "MAX_BLOCK_CHARS",
    "MISSING_CALL",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCall",
    "ToolCallParser",
    "ToolSpec",
    "extract_tool_calls",
    "require_tool_call",
    "tool_calls_json",
    "tool_specs",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# 1 Mi characters: four times the longest answer Qwen models write (64 K tokens),
# so only runaway text reaches it; past it the block is delivered as text.
MAX_BLOCK_CHARS = 1 << 20

_BLANK = " \t\r\n"
_NON_BLANK = re.compile(r"[^ \t\r\n]")
# Enough of a block's end to hold all but the last character of either tag.
_TAIL = len(TOOL_CALL_CLOSE) - 1
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)\s*```", re.DOTALL)
# The rest of a JSON string up to its closing quote (or a backslash cut off from
# the character it escapes), and the characters that change the nesting outside strings.
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_STRUCTURE = re.compile(r'["{}\[\]]')
_STRING_OR_TRAILING_COMMA = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")|,(\s*[}\]])', re.DOTALL)
_INVALID = object()
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the parser checks a call against: the tool's name and its schema's keys."""

    name: str
    #: The JSON schema's ``required``.
    required: frozenset[str] = frozenset()
    #: Declared property names when the schema forbids others; None = any.
    properties: frozenset[str] | None = None
    #: Fields the schema lets be null: left out, they are filled in as null. OpenAI
    #: strict mode (Roo Code) lists every field as required and marks the optional
    #: ones nullable; a model told "optional" leaves them out.
    nullable: frozenset[str] = frozenset()


def tool_specs(tools: Iterable[Mapping[str, Any]]) -> dict[str, ToolSpec]:
    """Build the parser's specs from an OpenAI request's ``tools`` list.

    ``properties`` is set only when the schema says ``additionalProperties: false``
    (Roo Code's strict schemas do); ``nullable`` lists the properties whose schema
    admits null (``"type": [..., "null"]``, or an ``anyOf``/``oneOf`` branch of type
    null). Entries that are not functions are skipped.
    """
    specs: dict[str, ToolSpec] = {}
    for tool in tools:
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            continue
        schema = function.get("parameters")
        schema = schema if isinstance(schema, Mapping) else {}
        required = schema.get("required")
        declared = schema.get("properties")
        declared = declared if isinstance(declared, Mapping) else {}
        specs[function["name"]] = ToolSpec(
            name=function["name"],
            required=frozenset(r for r in required if isinstance(r, str)) if isinstance(required, list)
            else frozenset(),
            properties=frozenset(declared) if schema.get("additionalProperties") is False else None,
            nullable=frozenset(name for name, sub in declared.items() if _admits_null(sub)),
        )
    return specs


def _admits_null(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    branches = [b for key in ("anyOf", "oneOf") if isinstance(schema.get(key), list) for b in schema[key]]
    return any(_admits_null(branch) for branch in branches)


def tool_calls_json(calls: Iterable[ToolCall]) -> list[dict[str, Any]]:
    """The OpenAI ``message.tool_calls`` list of a non-stream answer."""
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in calls
    ]


class ToolCallParser:
    """Sans-IO: feed answer text in pieces, get text pieces and complete calls, in order."""

    __slots__ = ("_checked", "_cursor", "_gap", "_held", "_is_json", "_json", "_parts", "_pending",
                 "_size", "_tools", "calls")

    def __init__(self, tools: Mapping[str, ToolSpec]) -> None:
        self._tools = dict(tools)
        self._held = ""  # outside a block: a suffix that may start TOOL_CALL_OPEN
        # Blank text held where it may be a separator (answer start, after a call);
        # None elsewhere, where text is delivered as it comes.
        self._gap: str | None = ""
        # Inside a block: its text after TOOL_CALL_OPEN in pieces (joined once, when
        # it ends); None outside. Tags are searched for only in ``_pending``, the
        # unscanned end of the block, so every character is looked at a bounded
        # number of times however the block is cut and whatever its strings hold.
        self._parts: list[str] | None = None
        self._size = 0
        self._pending = ""
        self._cursor = 0  # how far into ``_pending`` the JSON scanner has read
        self._checked = -1  # block offset of the last tag already judged inside the JSON
        self._is_json = False  # the block's first non-blank character was seen (and fits)
        self._json = _ObjectScanner()
        self.calls = 0

    def feed(self, text: str) -> list[str | ToolCall]:
        """Take the next piece of answer text; return what can be delivered now."""
        out: list[str | ToolCall] = []
        while text:
            text = self._outside(text, out) if self._parts is None else self._inside(text, out)
        return out

    def flush(self) -> list[str | ToolCall]:
        """End of the answer: settle what is held back (repair a block or give it as text)."""
        out: list[str | ToolCall] = []
        if self._parts is not None:
            block, self._parts = "".join(self._parts), None
            self._end_block(block, TOOL_CALL_OPEN + block, out)
        elif self._held:
            held, self._held = self._held, ""
            self._text(held, out)
        if self._gap and not self.calls:
            out.append(self._gap)  # a blank answer without calls is still the answer
        self._gap = None
        return out

    def _outside(self, text: str, out: list[str | ToolCall]) -> str:
        """Deliver text up to the next block; return the text after its opening tag."""
        text, self._held = self._held + text, ""
        if self._gap is not None:
            body = text.lstrip(_BLANK)
            self._gap += text[: len(text) - len(body)]
            text = body
        start = text.find(TOOL_CALL_OPEN)
        if start < 0:
            held = _held_suffix(text, TOOL_CALL_OPEN)
            self._held = text[len(text) - held:]
            self._text(text[: len(text) - held], out)
            return ""
        self._text(text[:start], out)
        self._parts, self._size, self._pending, self._cursor, self._checked = [], 0, "", 0, -1
        self._is_json, self._json = False, _ObjectScanner()
        return text[start + len(TOOL_CALL_OPEN):]

    def _inside(self, text: str, out: list[str | ToolCall]) -> str:
        """Buffer block text; when the block ends, settle it and return what follows."""
        assert self._parts is not None
        if not self._is_json:
            first = _NON_BLANK.search(text)
            if first is not None:
                if text[first.start()] not in "{`":
                    return self._give_up("".join(self._parts) + text, out)  # prose mentioning the tag
                self._is_json = True
        self._parts.append(text)
        self._size += len(text)
        pending = self._pending + text
        base = self._size - len(pending)  # block offset of pending[0]
        position = max(self._cursor, self._checked + 1 - base)
        while True:
            close = pending.find(TOOL_CALL_CLOSE, position)
            reopen = pending.find(TOOL_CALL_OPEN, position)
            if close < 0 and reopen < 0:
                break
            is_close = reopen < 0 or 0 <= close < reopen
            at = close if is_close else reopen
            self._cursor = self._json.advance(pending, self._cursor, at)
            if self._json.is_open:
                self._checked, position = base + at, at + 1  # the tag is inside the JSON
                continue
            block, end = "".join(self._parts), base + at
            self._parts = None
            if is_close:
                self._end_block(block[:end], TOOL_CALL_OPEN + block[: end + len(TOOL_CALL_CLOSE)], out)
                return block[end + len(TOOL_CALL_CLOSE):]
            self._end_block(block[:end], TOOL_CALL_OPEN + block[:end], out)  # unclosed; the next begins
            return block[end:]
        if self._size > MAX_BLOCK_CHARS:
            return self._give_up("".join(self._parts), out)
        # Scan all but the last characters, where a tag may have begun, then forget them.
        self._cursor = self._json.advance(pending, self._cursor, max(self._cursor, len(pending) - _TAIL))
        self._pending, self._cursor = pending[self._cursor:], 0
        return ""

    def _give_up(self, block: str, out: list[str | ToolCall]) -> str:
        """Leave the block: its opening tag is text; return the block to scan as text."""
        self._parts = None
        self._text(TOOL_CALL_OPEN, out)
        return block

    def _end_block(self, inner: str, raw: str, out: list[str | ToolCall]) -> None:
        call = self._parse(inner)
        if call is None:
            self._text(raw, out)
            return
        self._gap = ""  # the blank text before the call was a separator: dropped
        self.calls += 1
        out.append(call)

    def _text(self, text: str, out: list[str | ToolCall]) -> None:
        if not text:
            return
        if self._gap is not None:
            text, self._gap = self._gap + text, None
        if out and isinstance(out[-1], str):
            out[-1] += text
        else:
            out.append(text)

    def _parse(self, inner: str) -> ToolCall | None:
        """Apply the policy to one block's text: a call, or None for "deliver as text"."""
        body = inner.strip(_BLANK)
        fenced = _FENCE.fullmatch(body)
        if fenced is not None:
            body = fenced.group(1)
        call = _load_object(body)
        if call is None:
            return None
        name = call.get("name")
        spec = self._tools.get(name) if isinstance(name, str) else None
        if spec is None or ("arguments" in call and "parameters" in call):
            return None
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _load_object(arguments) if arguments.strip(_BLANK) else {}
        if not isinstance(arguments, dict):
            return None
        for field in sorted(spec.nullable - arguments.keys()):
            arguments[field] = None
        if not spec.required <= arguments.keys():
            return None
        if spec.properties is not None and not arguments.keys() <= spec.properties:
            return None
        return ToolCall(index=self.calls, id=new_call_id(), name=spec.name, arguments=_dumps(arguments))


def new_call_id() -> str:
    """``call_`` + 24 hex characters of a uuid4: the shape OpenAI clients expect."""
    return "call_" + uuid.uuid4().hex[:24]


class _ObjectScanner:
    """Incremental: has the block's JSON object begun, and has it ended yet?

    Only brackets and quotes matter, and strings are skipped with one regex match,
    so scanning costs one pass over the text however it is cut. Text before the
    first ``{`` (blank, a fence) is not JSON and is skipped.
    """

    __slots__ = ("depth", "has_begun", "has_ended", "in_string")

    def __init__(self) -> None:
        self.has_begun = False
        self.has_ended = False
        self.in_string = False
        self.depth = 0

    @property
    def is_open(self) -> bool:
        return self.has_begun and not self.has_ended

    def advance(self, text: str, start: int, stop: int) -> int:
        """Read ``text[start:stop]``; return where reading stopped.

        That is ``stop``, or earlier only at a backslash whose escaped character
        lies at ``stop`` or beyond: it is read again, with what follows, next time.
        """
        position = start
        while position < stop and not self.has_ended:
            if not self.has_begun:
                brace = text.find("{", position, stop)
                if brace < 0:
                    return stop
                self.has_begun, self.depth, position = True, 1, brace + 1
            elif self.in_string:
                body = _STRING_BODY.match(text, position, stop)
                assert body is not None  # the pattern matches the empty string
                position = body.end()
                if position == stop or text[position] == "\\":
                    return position
                self.in_string, position = False, position + 1
            else:
                found = _STRUCTURE.search(text, position, stop)
                if found is None:
                    return stop
                position, char = found.end(), found.group()
                if char == '"':
                    self.in_string = True
                else:
                    self.depth += 1 if char in "{[" else -1
                    self.has_ended = self.depth <= 0
        return max(position, stop) if self.has_ended else position


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """Decode JSON; ``_INVALID`` when it is not."""
    try:
        # strict=False: a raw newline in a string (file contents) means a newline.
        return json.loads(text, strict=False, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _INVALID


def _load_object(text: str) -> dict[str, Any] | None:
    """Decode one JSON object, dropping trailing commas if that is what it takes."""
    value = _loads(text)
    if value is _INVALID:
        repaired = _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)
        value = _loads(repaired) if repaired != text else None
    return value if isinstance(value, dict) else None


@stage
async def extract_tool_calls(frames: AsyncIterable[Frame], tools: Mapping[str, ToolSpec]) -> AsyncIterator[Frame]:
    """Move ``<tool_call>`` blocks out of ``content`` into ``tool_calls`` as they stream.

    Text and calls keep their order: a frame whose text holds a call becomes
    several frames (text, calls, text), the original's reasoning and extra on
    the first, its finish_reason and usage on the last. Once a call was made,
    ``finish_reason`` "stop" (or none at all) becomes "tool_calls"; "length"
    and others are kept. A finish_reason also settles held-back text, as the end
    of the stream does.
    """
    parser = ToolCallParser(tools)
    finish: str | None = None
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            items = parser.feed(frame.content) if frame.content else []
            if frame.finish_reason is not None:
                items += parser.flush()
                if parser.calls and frame.finish_reason == "stop":
                    frame.finish_reason = "tool_calls"
                finish = frame.finish_reason
            if not frame.content and not items:
                yield frame  # reasoning, metadata: untouched
                continue
            for out in _split(frame, items):
                yield out
        for out in _split(Frame(), parser.flush()):
            yield out
        if parser.calls and finish in (None, "stop"):
            yield Frame(finish_reason="tool_calls")
    finally:
        await close_source(frames)


def _split(frame: Frame, items: list[str | ToolCall]) -> list[Frame]:
    """Spread ``items`` over frames in order, keeping ``frame``'s metadata."""
    if len(items) == 1 and isinstance(items[0], str):
        frame.content = items[0]
        return [frame]
    frames: list[Frame] = []
    for item in items:
        calls = frames[-1].tool_calls if frames else None
        if isinstance(item, str):
            frames.append(Frame(content=item))
        elif calls is not None:
            calls.append(item)
        else:
            frames.append(Frame(tool_calls=[item]))
    if not frames:
        frame.content = ""
        has_metadata = frame.reasoning or frame.finish_reason or frame.usage or frame.extra
        return [frame] if has_metadata else []
    frames[0].reasoning, frames[0].extra = frame.reasoning, frame.extra
    frames[-1].finish_reason, frames[-1].usage = frame.finish_reason, frame.usage
    return frames


MISSING_CALL = ("tool_choice required a tool call, but the model answered without one "
                "(the non-stream path retries once).")


@stage
async def require_tool_call(frames: AsyncIterable[Frame]) -> AsyncIterator[Frame]:
    """tool_choice required a call: a stream that ends without one ends with an error.

    A stream cannot be retried once bytes went out, so the client is told plainly.
    """
    called = False
    try:
        async for frame in frames:
            called = called or bool(frame.tool_calls)
            if frame.finish_reason is not None and not called:
                raise UpstreamProtocolError(MISSING_CALL, code="tool_call_missing")
            yield frame
    finally:
        await close_source(frames)
    if not called:
        raise UpstreamProtocolError(MISSING_CALL, code="tool_call_missing")
