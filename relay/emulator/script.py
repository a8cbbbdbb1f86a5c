"""What the emulator says: the answer text and the qwen-v1 stream of it.

Strategy: a stream is planned up front as a list of steps (write these bytes, wait,
stall, abort) by pure functions, and the server only plays the plan back. Every
framing quirk of §6 is then a property of a list that tests can read without a
socket, and the player stays small enough to get cancellation right. This module
decides the text and the v1 events; ``framing.py`` lays the framing and faults over
them, for every dialect.

Why this differs from real Qwen: the real service streams tokens as the model
produces them. Here the whole answer is known first, which is what makes the
cumulative invariant (each event a prefix of the next) checkable at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import Directive
from relay.emulator.faults import IN_STREAM_ERROR, error_event
from relay.emulator.framing import Abort, Frame, Gap, Stall, Step, Write, plan_events, to_json
from relay.emulator.tool_calls import tool_call_answer
from relay.emulator.translation import translation_reply

__all__ = [
    "DEFAULT_SOURCES",
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
    "default_thought",
    "event_texts",
    "plan_stream",
    "reply_text",
    "split_even",
    "usage_counts",
    "v1_frames",
    "web_search_delta",
]

# Echo at most this much of the prompt: enough to recognise it, small in logs.
ECHO_CHARS = 200
# [I] Two results: enough to see a list, short enough to read. Only title and url
# are in the notes (§2.3); ``sources`` in a directive replaces them.
DEFAULT_SOURCES: tuple[Mapping[str, Any], ...] = (
    {"title": "Qwen Chat emulator: first source", "url": "https://example.com/emulator/first"},
    {"title": "Qwen Chat emulator: second source", "url": "https://example.com/emulator/second"},
)


@dataclass(frozen=True, slots=True)
class Answer:
    """The full assistant text and the increments it is streamed in."""

    text: str
    increments: tuple[str, ...]


def default_reply(user_text: str) -> str:
    """Echo the prompt so a test can tell which request an answer belongs to."""
    snippet = user_text.strip()[:ECHO_CHARS]
    return f"Hello! You said: {snippet}" if snippet else "Hello!"


def reply_text(directive: Directive, user_text: str) -> str:
    """The answer text when no ``pieces`` give it: tool-call blocks, the reply, a translation, or an echo."""
    if directive.has_tool_calls:
        return tool_call_answer(directive.text_before, directive.tool_calls,
                                malformed=directive.malformed_tool_call)
    if directive.reply is not None:
        return directive.reply
    translated = translation_reply(user_text, directive)
    return translated if translated is not None else default_reply(user_text)


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


def build_answer(directive: Directive, user_text: str, default_chunks: int, *, thinking: bool = True) -> Answer:
    """Decide the answer text and its increments (§2.3 thinking is inline).

    ``thinking=False`` (the request said ``thinking_enabled: false``) drops the
    directive's ``think``; [I] any other request keeps it, as the first emulator did.
    """
    think = directive.think if thinking else None
    think_block = f"<think>{think}</think>" if think is not None else ""
    if directive.pieces is not None:
        head = (think_block,) if think_block else ()
        increments = head + directive.pieces
        return Answer("".join(increments), increments)
    text = think_block + reply_text(directive, user_text)
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


def _chunk(text: str, usage: Mapping[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"choices": [{"delta": {"role": "assistant", "content": text}}]}
    if usage is not None:
        chunk["usage"] = dict(usage)
    return chunk


def default_thought(user_text: str) -> str:
    """Thinking text for a thinking request without ``think``: two paragraphs.

    [I] Two paragraphs so summary thinking (a list of paragraphs, §4.3) has a list
    longer than one; the echo ties the thought to its request, as the reply does.
    """
    snippet = user_text.strip()[:ECHO_CHARS]
    return f"The user wrote: {snippet}\n\nI will answer with a friendly echo."


def web_search_delta(sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The search-results delta sent before the answer (§2.3, §4.3 [C]).

    [I] No ``role``: the notes give only name, content and extra. Phase and v2
    streams add ``phase``/``status`` to it.
    """
    return {"name": "web_search", "content": "", "extra": {"web_search_info": [dict(s) for s in sources]}}


def v1_frames(
    texts: Sequence[str],
    *,
    usage: Mapping[str, int] | None,
    done: bool,
    sources: Sequence[Mapping[str, Any]] | None = None,
) -> list[Frame]:
    """List the events of a qwen-v1 stream (§2.3): chunks, then ``[DONE]`` if asked.

    ``usage``, when given, rides on the last chunk; ``sources`` (chat_type search)
    adds the web-search delta first.
    """
    frames: list[Frame] = []
    if sources is not None:
        frames.append(Frame(to_json({"choices": [{"delta": web_search_delta(sources)}]})))
    for index, text in enumerate(texts):
        is_last = index == len(texts) - 1
        frames.append(Frame(to_json(_chunk(text, usage if is_last else None)), is_content=True))
    if done:
        frames.append(Frame("[DONE]"))
    return frames


def plan_stream(
    texts: Sequence[str],
    directive: Directive,
    *,
    fault: str | None,
    delay_s: float,
    incremental: bool,
    usage: Mapping[str, int] | None,
    sources: Sequence[Mapping[str, Any]] | None = None,
) -> list[Step]:
    """Plan every byte and pause of one qwen-v1 SSE body (after the headers).

    ``fault`` is the stream fault actually applied to this request (after
    ``fail_times``), or None. ``usage``, when given, rides on the last event.
    An oversized line repeats the current text (cumulative) or nothing (incremental).
    """

    def padded(sent: int) -> dict[str, Any]:
        return _chunk("" if incremental or sent == 0 else texts[sent - 1])

    frames = v1_frames(texts, usage=usage, done=directive.done is not False, sources=sources)
    error = error_event(directive)
    return plan_events(frames, directive, fault=fault, delay_s=delay_s, error=error, padded=padded)
