"""The ``#emulator {...}`` directive: what one request asks the emulator to do.

The relay forwards message text untouched, so a test steers the emulator by putting
one line ``#emulator {...json...}`` into any message. That keeps the relay unaware of
the emulator and lets the same test run against a relay in another process. In
qwen-v2 the relay folds the whole history into one user message (§4.2), so several
directive lines may arrive in one text: the last line wins.

Tool calls: ``tool_calls: [{"name": ..., "arguments": {...}}, ...]`` makes the
answer ``text_before`` followed by one Hermes-style ``<tool_call>`` block per call
(what Qwen models write when a prompt lists tools); ``malformed_tool_call: true``
adds a block whose JSON is broken. That answer text is the same in every dialect
and goes through ``chunks``, ``split`` and the other stream knobs like any reply.

Parsing is strict: an unknown field, a wrong type or a field that needs another one
is a 400 naming the field, so a typo in a test shows up as a clear failure instead
of a silently ignored fault. Fields that do not apply to a dialect (``keepalive_info``
on v1, ``rewrite`` on the always-incremental v2) are accepted and ignored there, so
one test body can run against every dialect.

2026 stream shapes (§7.4, qwen-v2 only; accepted and ignored on the v1 paths):

- ``candidates: 2`` opens two candidate responses in one stream: two
  ``response.created`` (``response_index`` "0" and "1", distinct ids), then the
  frames of both interleaved, each with its ``response_id``. The second answers
  "ALT " + every piece (thinking too) and has its own finished frames, so a relay
  that does not follow the first response only shows doubled, wrong text.
- ``extra_phases: ["code_interpreter", "mystery", ...]`` sends, after thinking and
  before the answer, frames of those phases with content ``"LEAK:<phase>"`` (status
  ``typing``; ``running`` for ``code_interpreter``), then each phase's finished
  frame; ``web_search`` adds the tool-ish frame with ``function_call`` and
  ``extra.display_position: "think"``. None of that text may reach the answer.
- ``stream_error_form`` (needs ``stream_error``) picks how the in-stream error is
  written: ``"error"`` (default, ``{"error": {"code", "details"}}``),
  ``"success_false"`` (``{"success": false, "request_id", "data": {...}}``),
  ``"string"`` (``{"error": "Internal error!"}``, code ignored) or ``"bare_json"``
  (v2: the whole body is that ``success: false`` JSON, no ``data:`` prefix, under
  ``text/event-stream``; on the v1 paths it sends the ``success_false`` event).
- ``fault: "risk_control"`` answers the §7.5 risk-control JSON (HTTP 200) instead of
  the completion; it can also be armed for a path (``EmulatorState.arm``).

Image streams (QWEN_IMAGES.md §6.1.4, ``images.py``; chat_type ``t2i`` / ``image_edit``):
``images`` (0-2, default 1) is how many image frames the stream carries (0: the
URL is only in the chat detail); ``image_hw: [h, w]`` overrides the size the ratio
gives; ``output_image_hw: false`` leaves ``extra.output_image_hw`` out;
``echo_input: true`` (image_edit) first sends a frame echoing the input image's
URL; ``image_phase`` names the phase of the image frames (default ``image_gen``
for t2i, ``image_edit`` for edits). ``reply`` is the caption.

Translation prompts (``translation.py``): a prompt holding a ``{"1": …, "n": …}``
object is answered key by key as ``"[<TAG>] " + text``; ``translate_fault`` (one of
``TRANSLATE_FAULTS``) spoils that answer at ``translate_key``, on prompts of two or
more keys unless ``translate_fault_all``. A directive may sit inside a text there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from relay.emulator import directive_fields as check
from relay.emulator.directive_fields import DirectiveError
from relay.emulator.tool_calls import ToolCallSpec

__all__ = [
    "DIRECTIVE_LINE",
    "FAULTS",
    "HTTP_FAULTS",
    "NO_DIRECTIVE",
    "STREAM_FAULTS",
    "TRANSLATE_FAULTS",
    "Directive",
    "DirectiveError",
    "parse_directive",
    "strip_directives",
]

DIRECTIVE_LINE = re.compile(r"^#emulator (\{.*\})\s*$")

# Faults answered instead of a completion, before any stream starts. "waf" is the
# v2-era name of "html_challenge" (§4.5); "v2_error" is HTTP 200 + x-actual-status-code.
HTTP_FAULTS = frozenset(
    {
        "html_challenge",
        "waf",
        "v2_error",
        "http_500",
        "http_502",
        "http_503",
        "http_500_empty",
        "http_401",
        "http_403",
        "http_429",
        "risk_control",
    }
)
# Faults that shape an SSE stream (or delay a non-stream answer).
STREAM_FAULTS = frozenset(
    {
        "stall_headers",
        "stall_mid",
        "reset_mid",
        "oversized_line",
        "in_stream_error",
        "slow_dribble",
    }
)
FAULTS = HTTP_FAULTS | STREAM_FAULTS | {"stall_before"}
# Ways to answer a translation prompt badly (``translation.py``).
TRANSLATE_FAULTS = ("drop_key", "empty_key", "merge_keys", "duplicate", "extra_key", "reorder", "commentary",
                    "code_fence", "trailing_comma", "prose", "list")

# 2 MiB: well past any sane per-line limit of a relay, yet quick to send in a test.
DEFAULT_OVERSIZED_LINE_BYTES = 2 * 1024 * 1024
# A cap so a typo cannot make the emulator allocate gigabytes.
MAX_OVERSIZED_LINE_BYTES = 64 * 1024 * 1024
# A cap on keep-alive frames: enough to outlast any idle timer a test sets.
MAX_KEEPALIVE_INFO = 10_000

Split = Literal["event", "byte", "coalesce"]
Rewrite = Literal["change", "shrink"]
SummaryMode = Literal["cumulative", "incremental"]
StreamErrorForm = Literal["error", "success_false", "string", "bare_json"]
ThinkPhase = Literal["think", "thinking_summary"]


@dataclass(frozen=True, slots=True)
class Directive:
    """Everything one request asked for; defaults mean "behave like the real service"."""

    source: Mapping[str, Any]
    reply: str | None = None
    think: str | None = None
    chunks: int | None = None
    pieces: tuple[str, ...] | None = None
    delay_ms: float | None = None
    ttfb_ms: float = 0.0
    # None: the dialect's default (v1/phase send [DONE], v2 does not: §4.3).
    done: bool | None = None
    line_ending: str = "\n"
    split: Split = "event"
    keepalive: bool = False
    trailing_space: bool = False
    repeat_identical: bool = False
    rewrite: Rewrite | None = None
    garbage: bool = False
    usage: bool | None = None
    key: str | None = None
    fail_times: int | None = None
    fault: str | None = None
    retry_after: float | None = None
    stall_ms: float | None = None
    after: int = 1
    size: int = DEFAULT_OVERSIZED_LINE_BYTES
    # Search results for chat_type "search" (each a dict with title and url).
    sources: tuple[Mapping[str, Any], ...] | None = None
    summary_mode: SummaryMode = "cumulative"
    think_phase: ThinkPhase | None = None
    keepalive_info: int = 0
    # An in-stream {"error":{"code": ...}} event instead of the rest of the stream.
    stream_error: str | None = None
    # For fault "v2_error": the body's code and the x-actual-status-code header.
    code: str | None = None
    actual_status: int | None = None
    num: int | None = None
    details: str | None = None
    # How stream_error is written (see the module docstring).
    stream_error_form: StreamErrorForm = "error"
    # v2: 2 opens a second, interleaved candidate response (§7.4).
    candidates: int = 1
    # v2: phases whose "LEAK:<phase>" frames precede the answer (§7.4).
    extra_phases: tuple[str, ...] = ()
    # The answer as tool calls: text_before, then one <tool_call> block per call,
    # then a broken block if malformed_tool_call (see tool_calls.py).
    tool_calls: tuple[ToolCallSpec, ...] | None = None
    text_before: str | None = None
    malformed_tool_call: bool = False
    # A translation prompt answered badly (translation.py): how, at which key, and
    # whether one-key prompts too.
    translate_fault: str | None = None
    translate_key: str | None = None
    translate_fault_all: bool = False
    # Image streams (images.py): frames, size, size metadata, echoed input, phase.
    images: int = 1
    image_hw: tuple[int, int] | None = None
    output_image_hw: bool = True
    echo_input: bool = False
    image_phase: str | None = None

    @property
    def has_tool_calls(self) -> bool:
        """Whether the answer is made of tool-call blocks instead of a reply."""
        return self.tool_calls is not None or self.malformed_tool_call

    @property
    def stall_s(self) -> float | None:
        """Length of an injected stall in seconds; None means until the client leaves."""
        return None if self.stall_ms is None else self.stall_ms / 1000

    @property
    def effective_fault(self) -> str | None:
        """The fault this directive injects: ``stream_error`` is an in-stream error."""
        if self.stream_error is not None:
            return "in_stream_error"
        return self.fault

    def counter_key(self) -> str | None:
        """Name the fail-times counter this request shares with its retries.

        An explicit ``key`` wins. Without one, a directive that sets ``fail_times``
        is keyed on its own canonical JSON: a relay retry resends the same text.
        """
        if self.key is not None:
            return "key:" + self.key
        if self.fail_times is not None:
            return "directive:" + json.dumps(self.source, sort_keys=True)
        return None


# What a request without a directive gets: the service behaving normally.
NO_DIRECTIVE = Directive(source=MappingProxyType({}))


def parse_directive(texts: Iterable[str]) -> Directive | None:
    """Find the last ``#emulator {...}`` line in the given message texts.

    The last one wins so a later turn of a conversation (or the newest turn folded
    into a v2 message) overrides an earlier one; earlier lines are not even parsed.
    """
    found: str | None = None
    for text in texts:
        for line in text.splitlines():
            match = DIRECTIVE_LINE.match(line)
            if match is not None:
                found = match.group(1)
    if found is None:
        return None
    return build_directive(_load(found))


def _load(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DirectiveError(f"emulator directive is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DirectiveError("emulator directive must be a JSON object")
    return raw


def strip_directives(text: str) -> str:
    """Drop directive lines so the default answer echoes only what a user typed."""
    return "\n".join(line for line in text.splitlines() if not DIRECTIVE_LINE.match(line))


def build_directive(raw: Mapping[str, Any]) -> Directive:
    """Validate a decoded directive object; raise DirectiveError naming the bad field."""
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise DirectiveError(f"unknown emulator directive field(s): {', '.join(unknown)}")
    values = {name: _FIELDS[name](name, value) for name, value in raw.items()}
    if "reply" in values and "pieces" in values:
        raise DirectiveError("give either reply or pieces, not both")
    if "tool_calls" in values or values.get("malformed_tool_call") is True:
        for name in ("reply", "pieces"):
            if name in values:
                raise DirectiveError(f"give either {name} or tool_calls/malformed_tool_call, not both")
    elif "text_before" in values:
        raise DirectiveError("directive field text_before needs tool_calls or malformed_tool_call")
    fault = values.get("fault")
    if fault not in (None, *FAULTS):
        raise DirectiveError(f"unknown fault {raw['fault']!r}; known: {', '.join(sorted(FAULTS))}")
    if fault is not None and "stream_error" in values:
        raise DirectiveError("give either fault or stream_error, not both")
    for name in ("code", "actual_status"):
        if name in values and fault != "v2_error":
            raise DirectiveError(f"directive field {name} needs fault v2_error")
    for name in ("num", "details"):
        if name in values and fault != "v2_error" and "stream_error" not in values:
            raise DirectiveError(f"directive field {name} needs fault v2_error or stream_error")
    if "stream_error_form" in values and "stream_error" not in values:
        raise DirectiveError("directive field stream_error_form needs stream_error")
    for name in ("translate_key", "translate_fault_all"):
        if name in values and "translate_fault" not in values:
            raise DirectiveError(f"directive field {name} needs translate_fault")
    return Directive(source=dict(raw), **values)


_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "reply": check.string,
    "think": check.string,
    "chunks": check.count(1),
    "pieces": check.pieces,
    "delay_ms": check.millis,
    "ttfb_ms": check.millis,
    "done": check.flag,
    "line_ending": check.choice("\n", "\r\n", "\r"),
    "split": check.choice("event", "byte", "coalesce"),
    "keepalive": check.flag,
    "trailing_space": check.flag,
    "repeat_identical": check.flag,
    "rewrite": check.rewrite,
    "garbage": check.flag,
    "usage": check.flag,
    "key": check.string,
    "fail_times": check.count(0),
    "fault": check.string,
    "retry_after": check.millis,
    "stall_ms": check.millis,
    "after": check.count(0),
    "size": check.count(1, MAX_OVERSIZED_LINE_BYTES),
    "sources": check.sources,
    "summary_mode": check.choice("cumulative", "incremental"),
    "think_phase": check.choice("think", "thinking_summary"),
    "keepalive_info": check.count(0, MAX_KEEPALIVE_INFO),
    "stream_error": check.string,
    "code": check.string,
    "actual_status": check.count(100, 599),
    "num": check.count(0),
    "details": check.string,
    "tool_calls": check.tool_calls,
    "text_before": check.string,
    "malformed_tool_call": check.flag,
    "stream_error_form": check.choice("error", "success_false", "string", "bare_json"),
    "candidates": check.count(1, 2),
    "extra_phases": check.phases,
    "translate_fault": check.choice(*TRANSLATE_FAULTS),
    "translate_key": check.string,
    "translate_fault_all": check.flag,
    "images": check.count(0, 2),
    "image_hw": check.dims,
    "output_image_hw": check.flag,
    "echo_input": check.flag,
    "image_phase": check.choice("image_gen", "image_edit"),
}
