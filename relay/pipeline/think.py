"""Thinking text: split inline ``<think>…</think>`` out of the answer, or put it back.

qwen-v1 thinking models write their reasoning inline at the start of the
answer as ``<think>…</think>`` (§2.3). OpenAI clients (Roo Code, Cline, the
SDKs) read reasoning from ``delta.reasoning_content``; Immersive Translate would
show inline tags as translation text. ``split_think`` moves the tagged text to
``reasoning`` as it streams: text is held back only while it may still be the
start of a tag, so nothing is batched. ``reasoning_as_content`` does the
reverse for clients that want tags in ``content`` (``--reasoning-in-content``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from ._util import close_source, stage
from .frames import HEARTBEAT, Frame

__all__ = ["THINK_CLOSE", "THINK_OPEN", "ThinkSplitter", "drop_reasoning", "reasoning_as_content", "split_think"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _held_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkSplitter:
    """Sans-IO: feed answer text in pieces, get ``(reasoning, content)`` increments."""

    __slots__ = ("_held", "_state")

    def __init__(self) -> None:
        self._state = "start"  # start → think → answer, or start → answer
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        text = self._held + text
        self._held = ""
        if self._state == "start":
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._state = "think"
                text = stripped[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(stripped):
                self._held = text  # maybe the start of "<think>": wait for more
                return "", ""
            else:
                self._state = "answer"
                return "", text
        if self._state == "think":
            end = text.find(THINK_CLOSE)
            if end < 0:
                held = _held_suffix(text, THINK_CLOSE)
                self._held = text[len(text) - held:] if held else ""
                return text[: len(text) - held], ""
            self._state = "answer_start"
            reasoning, text = text[:end], text[end + len(THINK_CLOSE):]
            return reasoning, self._answer_start(text)
        if self._state == "answer_start":
            return "", self._answer_start(text)
        return "", text

    def _answer_start(self, text: str) -> str:
        # The model separates "</think>" from the answer with blank lines; drop them.
        text = text.lstrip("\r\n")
        if text:
            self._state = "answer"
        return text

    def flush(self) -> tuple[str, str]:
        """What is still held back when the stream ends."""
        held, self._held = self._held, ""
        if self._state == "think":
            return held, ""
        return "", held


@stage
async def split_think(frames: AsyncIterable[Frame]) -> AsyncIterator[Frame]:
    """Move inline ``<think>`` text from ``content`` to ``reasoning``."""
    splitter = ThinkSplitter()
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            if frame.content:
                reasoning, frame.content = splitter.feed(frame.content)
                frame.reasoning += reasoning
            if frame.content or frame.reasoning or frame.finish_reason or frame.usage or frame.extra:
                yield frame
        reasoning, content = splitter.flush()
        if reasoning or content:
            yield Frame(content=content, reasoning=reasoning)
    finally:
        await close_source(frames)


@stage
async def drop_reasoning(frames: AsyncIterable[Frame]) -> AsyncIterator[Frame]:
    """Discard reasoning: the client turned thinking off (``enable_thinking: false``).

    An upstream model may think anyway (QwQ always does); the client asked for
    none of it, so none of it reaches the client, in any field.
    """
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            if frame.reasoning:
                frame.reasoning = ""
                if not (frame.content or frame.finish_reason or frame.usage or frame.extra):
                    continue
            yield frame
    finally:
        await close_source(frames)


@stage
async def reasoning_as_content(frames: AsyncIterable[Frame]) -> AsyncIterator[Frame]:
    """Put reasoning back into ``content`` as a leading ``<think>…</think>`` block."""
    thinking = False
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            text = ""
            if frame.reasoning:
                text = frame.reasoning if thinking else THINK_OPEN + frame.reasoning
                thinking = True
                frame.reasoning = ""
            if frame.content and thinking:
                text += THINK_CLOSE + "\n\n"
                thinking = False
            frame.content = text + frame.content
            if thinking and frame.finish_reason is not None:
                frame.content += THINK_CLOSE
                thinking = False
            yield frame
        if thinking:
            yield Frame(content=THINK_CLOSE)
    finally:
        await close_source(frames)
