"""Collect a stream's frames into one answer: the non-stream answer of every surface.

The non-stream path runs the same chain as a stream and ends it here instead
of in an encoder, so both answers hold the same text, reasoning and calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

from ._util import close_source
from .frames import Frame, ToolCall

__all__ = ["Aggregate", "aggregate"]


@dataclass(slots=True)
class Aggregate:
    """A whole answer: the texts joined, the last finish_reason and usage, every call."""

    content: str
    reasoning: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: unknown message fields the upstream sent (qwen-v1), first value kept.
    extra: dict[str, Any] | None = None
    #: the client's stop sequence the relay cut the text at, if it did.
    stop_sequence: str | None = None


async def aggregate(frames: AsyncIterable[Frame]) -> Aggregate:
    """Collect the whole stream; later finish_reason and usage values win."""
    content: list[str] = []
    reasoning: list[str] = []
    answer = Aggregate("", "", None, None)
    try:
        async for frame in frames:
            if frame.content:
                content.append(frame.content)
            if frame.reasoning:
                reasoning.append(frame.reasoning)
            if frame.tool_calls:
                answer.tool_calls.extend(frame.tool_calls)
            if frame.finish_reason is not None:
                answer.finish_reason, answer.stop_sequence = frame.finish_reason, frame.stop_sequence
            if frame.usage is not None:
                answer.usage = frame.usage
            if frame.extra:
                answer.extra = {**frame.extra, **(answer.extra or {})}
    finally:
        await close_source(frames)
    answer.content, answer.reasoning = "".join(content), "".join(reasoning)
    return answer
