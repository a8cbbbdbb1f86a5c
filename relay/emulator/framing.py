"""Turn a dialect's list of SSE events into planned writes, pauses and faults.

Strategy: each dialect module (``script.py`` for qwen-v1, ``phase.py``, ``v2.py``)
builds the list of :class:`Frame` it would send on a good day; this module, shared
by all three, lays the framing quirks of §6.5 over it (line endings, trailing
spaces, keep-alive comments, garbage payloads, inter-event gaps) and puts the
injected fault at its place. The result is a list of steps that ``playback.py``
writes; every byte is decided here, without a socket, so tests can read it.

Where a fault goes: ``after: N`` places it just before the (N+1)-th *content*
frame (a frame carrying answer or thinking text), after any non-content frames
that precede it (``response.created``, the web-search frame, a finished-think
frame). With N at least the number of content frames, it goes right after the
last one: before the finished-answer frame (phase, v2) or ``[DONE]`` (v1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import Directive

__all__ = [
    "GARBAGE_PAYLOADS",
    "Abort",
    "Frame",
    "Gap",
    "Stall",
    "Step",
    "Write",
    "plan_events",
    "to_json",
]

# Non-JSON and non-chunk payloads seen or feared on the wire (§6.7).
GARBAGE_PAYLOADS: tuple[str, ...] = (
    "this is not json",
    "[1,2,3]",
    "42",
    '{"choices":[]}',
)


@dataclass(frozen=True, slots=True)
class Write:
    """Send these bytes; ``is_event`` marks a content event (counted, signalled)."""

    data: bytes
    is_event: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """An ordinary pause between events; dropped when events are coalesced."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Stall:
    """An injected silence; ``None`` lasts until the client goes away."""

    seconds: float | None


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the connection without the chunked terminator."""


Step = Write | Gap | Stall | Abort


@dataclass(frozen=True, slots=True)
class Frame:
    """One ``data:`` event: its payload text and how the planner treats it.

    ``is_content``: carries answer or thinking text (counts for ``after``, for
    ``events_sent`` and for ``first_chunk_sent``). ``trailing_space``: a space
    before the line end whatever the directive says (v2's ``response.created``, §4.3).
    """

    payload: str
    is_content: bool = False
    trailing_space: bool = False


def to_json(value: object) -> str:
    """Compact JSON with real UTF-8, as the service sends (so a byte split can cut a character)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plan_events(
    frames: Sequence[Frame],
    directive: Directive,
    *,
    fault: str | None,
    delay_s: float,
    error: Mapping[str, Any],
    padded: Callable[[int], Mapping[str, Any]],
) -> list[Step]:
    """Plan every byte and pause of one SSE body (after the headers).

    ``fault`` is the stream fault actually applied (after ``fail_times``), or None.
    ``error`` is the event an ``in_stream_error`` sends; ``padded(n)`` the harmless
    event an ``oversized_line`` pads, given ``n`` content frames already sent.
    """
    end = directive.line_ending

    def data_line(payload: str, space: bool = False) -> bytes:
        tail = " " if space or directive.trailing_space else ""
        return f"data: {payload}{tail}{end}{end}".encode()

    def filler(first: bool, index: int) -> list[Step]:
        steps: list[Step] = []
        if directive.keepalive:
            steps.append(Write(f": keep-alive{end}{end}".encode()))
        if directive.garbage:
            chosen = GARBAGE_PAYLOADS if first else (GARBAGE_PAYLOADS[index % len(GARBAGE_PAYLOADS)],)
            steps.extend(Write(data_line(payload)) for payload in chosen)
        return steps

    def fault_steps(sent: int) -> tuple[list[Step], bool]:
        """Return the fault's steps and whether the stream ends with them."""
        if fault == "stall_mid":
            return [Stall(directive.stall_s)], False
        if fault == "reset_mid":
            return [Abort()], True
        if fault == "in_stream_error":
            return [Write(data_line(to_json(error)))], True
        if fault == "oversized_line":
            return [Write(_oversized_line(padded(sent), directive.size, end))], False
        return [], False

    content_at = [index for index, frame in enumerate(frames) if frame.is_content]
    if directive.after < len(content_at):
        fault_at = content_at[directive.after]
    else:
        fault_at = content_at[-1] + 1 if content_at else 0

    steps: list[Step] = []
    if fault == "stall_headers":
        steps.append(Stall(directive.stall_s))
    steps.extend(filler(True, 0))
    sent = 0
    for index in range(len(frames) + 1):
        if index == fault_at:
            extra, is_final = fault_steps(sent)
            steps.extend(extra)
            if is_final:
                return steps
        if index == len(frames):
            break
        frame = frames[index]
        if index > 0:
            if delay_s > 0:
                steps.append(Gap(delay_s))
            if frame.is_content:
                steps.extend(filler(False, sent))
        steps.append(Write(data_line(frame.payload, frame.trailing_space), is_event=frame.is_content))
        sent += frame.is_content
    return steps


def _oversized_line(event: Mapping[str, Any], size: int, end: str) -> bytes:
    """Build a valid event whose line is exactly ``size`` bytes (before the line end).

    It repeats the given event and pads an extra field, so a relay that accepts
    long lines sees a harmless duplicate rather than corrupted content. A size
    smaller than the bare event gives the bare event.
    """
    head = ("data: " + to_json(event)[:-1] + ',"padding":"').encode()
    tail = b'"}'
    padding = max(0, size - len(head) - len(tail))
    return head + b"x" * padding + tail + (end + end).encode()
