"""Collect a stream's frames into one answer, for non-stream clients.

Used when the upstream streams although the client asked for one JSON body
(qwen-v2 always streams, §4.2; a v1 upstream may ignore ``stream:false``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from ._util import closing_source
from .frames import Frame

__all__ = ["aggregate"]


async def aggregate(frames: AsyncIterable[Frame]) -> tuple[str, str, str | None, dict[str, Any] | None]:
    """Return ``(content, reasoning, finish_reason, usage)`` of the whole stream."""
    content: list[str] = []
    reasoning: list[str] = []
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    async with closing_source(frames):
        async for frame in frames:
            if frame.content:
                content.append(frame.content)
            if frame.reasoning:
                reasoning.append(frame.reasoning)
            if frame.finish_reason is not None:
                finish_reason = frame.finish_reason
            if frame.usage is not None:
                usage = frame.usage
    return "".join(content), "".join(reasoning), finish_reason, usage
