"""The values that flow between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Frame", "StreamStats"]


@dataclass(slots=True)
class Frame:
    """One upstream event, normalised: text so far or new text, plus metadata.

    ``content`` is cumulative until ``deaccumulate`` has run (qwen-v1), then
    incremental; ``extra`` carries delta fields we do not know, so they reach the
    client instead of being dropped.
    """

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class StreamStats:
    """Per-request counters the stages fill in, read by the access log and metrics."""

    events: int = 0
    comments: int = 0
    garbage: int = 0
    divergences: int = 0
    content_chars: int = 0
    reasoning_chars: int = 0
    bytes_out: int = 0
    #: qwen-v2's ``response.created`` id, needed to stop generation.
    response_id: str | None = None
    #: web-search results seen so far (qwen-v1), appended to the answer at its end.
    sources: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
