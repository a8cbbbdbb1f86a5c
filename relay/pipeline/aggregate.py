"""Collect a stream's frames into one answer, for non-stream clients.

Used when the upstream streams although the client asked for one JSON body
(qwen-v2 always streams, §4.2; a v1 upstream may ignore ``stream:false``).
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


async def aggregate(frames: AsyncIterable[Frame]) -> Aggregate:
    """Collect the whole stream; later finish_reason and usage values win."""
    content: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[ToolCall] = []
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    try:
        async for frame in frames:
            if frame.content:
                content.append(frame.content)
            if frame.reasoning:
                reasoning.append(frame.reasoning)
            if frame.tool_calls:
                tool_calls.extend(frame.tool_calls)
            if frame.finish_reason is not None:
                finish_reason = frame.finish_reason
            if frame.usage is not None:
                usage = frame.usage
    finally:
        await close_source(frames)
    return Aggregate("".join(content), "".join(reasoning), finish_reason, usage, tool_calls)
