"""What the emulator says: the answer text and the exact bytes of a qwen-v1 stream.

Strategy: a stream is planned up front as a list of steps (write these bytes, wait,
stall, abort) by pure functions, and ``server.py`` only plays the plan back. Every
framing quirk of §6 is then a property of a list that tests can read without a
socket, and the player stays small enough to get cancellation right.

Why this differs from real Qwen: the real service streams tokens as the model
produces them. Here the whole answer is known first, which is what makes the
cumulative invariant (each event a prefix of the next) checkable at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.faults import Directive

__all__ = [
    "IN_STREAM_ERROR",
    "Abort",
    "Answer",
    "Gap",
    "Stall",
    "Step",
    "Write",
    "build_answer",
    "completion_body",
    "default_reply",
    "event_texts",
    "plan_stream",
    "split_even",
    "usage_counts",
]

# Echo at most this much of the prompt: enough to recognise it, small in logs.
ECHO_CHARS = 200
# Non-JSON and non-chunk payloads seen or feared on the wire (§6.7).
GARBAGE_PAYLOADS: tuple[str, ...] = (
    "this is not json",
    "[1,2,3]",
    "42",
    '{"choices":[]}',
)
IN_STREAM_ERROR = {"error": {"code": "Bad_Request", "details": "internal error"}}


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
class Answer:
    """The full assistant text and the increments it is streamed in."""

    text: str
    increments: tuple[str, ...]


def default_reply(user_text: str) -> str:
    """Echo the prompt so a test can tell which request an answer belongs to."""
    snippet = user_text.strip()[:ECHO_CHARS]
    return f"Hello! You said: {snippet}" if snippet else "Hello!"


def split_even(text: str, chunks: int) -> tuple[str, ...]:
    """Cut text into ``chunks`` near-equal pieces of whole characters.

    Characters, not bytes: the JSON must stay valid; splitting inside a UTF-8
    sequence is the job of ``split: "byte"`` on the wire.
    """
    if not text:
        return ("",)
    count = min(chunks, len(text))
    size, extra = divmod(len(text), count)
    pieces: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return tuple(pieces)


def build_answer(directive: Directive, user_text: str, default_chunks: int) -> Answer:
    """Decide the answer text and its increments (§2.3 thinking is inline)."""
    think = directive.think
    think_block = f"<think>{think}</think>" if think is not None else ""
    if directive.pieces is not None:
        head = (think_block,) if think_block else ()
        increments = head + directive.pieces
        return Answer("".join(increments), increments)
    reply = directive.reply
    text = think_block + (reply if reply is not None else default_reply(user_text))
    return Answer(text, split_even(text, directive.chunks or default_chunks))


def event_texts(
    answer: Answer, *, incremental: bool, repeat_identical: bool, rewrite: str | None
) -> list[str]:
    """List the ``delta.content`` of every event, in order.

    Cumulative by default (§2.3). A rewrite is inserted after the midpoint event and
    the stream then carries on with the true text, so the final event still equals
    the answer; it is skipped for incremental streams, where it has no meaning.
    """
    if incremental:
        texts = list(answer.increments)
    else:
        texts = []
        so_far = ""
        for piece in answer.increments:
            so_far += piece
            texts.append(so_far)
        if rewrite is not None:
            middle = max(1, len(texts) // 2)
            rewritten = _rewritten(texts[middle - 1], rewrite)
            tail = texts[middle:] or texts[-1:]
            texts = texts[:middle] + [rewritten] + tail
    if repeat_identical:
        texts = [text for text in texts for _ in range(2)]
    return texts


def _rewritten(text: str, mode: str) -> str:
    """Return a cumulative text that is not a prefix extension of ``text``."""
    if mode == "shrink":
        return text[: len(text) // 2]
    if not text:
        return "X"
    return ("Y" if text[0] == "X" else "X") + text[1:]


def usage_counts(prompt_text: str, completion_text: str) -> dict[str, int]:
    """Rough token counts (4 characters a token): the shape matters, not the numbers."""
    prompt = math.ceil(len(prompt_text) / 4)
    completion = math.ceil(len(completion_text) / 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(
    text: str,
    model: str,
    request_number: int,
    created: int,
    usage: Mapping[str, int] | None,
) -> dict[str, Any]:
    """Build the non-stream answer; relays read only ``choices[0].message.content`` (§2.4)."""
    body: dict[str, Any] = {
        "id": f"chatcmpl-emulator-{request_number}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    return body


def _json(value: object) -> str:
    # ensure_ascii=False: real multi-byte UTF-8 on the wire, so a byte split can cut a character.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _chunk(text: str, usage: Mapping[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"choices": [{"delta": {"role": "assistant", "content": text}}]}
    if usage is not None:
        chunk["usage"] = dict(usage)
    return chunk


def plan_stream(
    texts: Sequence[str],
    directive: Directive,
    *,
    fault: str | None,
    delay_s: float,
    incremental: bool,
    usage: Mapping[str, int] | None,
) -> list[Step]:
    """Plan every byte and pause of one SSE body (after the headers).

    ``fault`` is the stream fault actually applied to this request (after
    ``fail_times``), or None. ``usage``, when given, rides on the last event.
    """
    end = directive.line_ending

    def data_line(payload: str) -> bytes:
        space = " " if directive.trailing_space else ""
        return f"data: {payload}{space}{end}{end}".encode()

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
            return [Write(data_line(_json(IN_STREAM_ERROR)))], True
        if fault == "oversized_line":
            current = "" if incremental or sent == 0 else texts[sent - 1]
            return [Write(_oversized_line(current, directive.size, end))], False
        return [], False

    steps: list[Step] = []
    if fault == "stall_headers":
        steps.append(Stall(directive.stall_s))
    steps.extend(filler(True, 0))
    fault_at = min(directive.after, len(texts))
    for sent in range(len(texts) + 1):
        if sent == fault_at:
            extra, is_final = fault_steps(sent)
            steps.extend(extra)
            if is_final:
                return steps
        if sent == len(texts):
            break
        if sent > 0:
            if delay_s > 0:
                steps.append(Gap(delay_s))
            steps.extend(filler(False, sent))
        is_last = sent == len(texts) - 1
        chunk = _chunk(texts[sent], usage if is_last else None)
        steps.append(Write(data_line(_json(chunk)), is_event=True))
    if directive.done:
        if delay_s > 0:
            steps.append(Gap(delay_s))
        steps.append(Write(data_line("[DONE]")))
    return steps


def _oversized_line(content: str, size: int, end: str) -> bytes:
    """Build a valid event whose line is exactly ``size`` bytes (before the line end).

    It repeats the current text and pads an extra field, so a relay that accepts
    long lines sees a harmless duplicate rather than corrupted content. A size
    smaller than the bare event gives the bare event.
    """
    head = ("data: " + _json(_chunk(content))[:-1] + ',"padding":"').encode()
    tail = b'"}'
    padding = max(0, size - len(head) - len(tail))
    return head + b"x" * padding + tail + (end + end).encode()
