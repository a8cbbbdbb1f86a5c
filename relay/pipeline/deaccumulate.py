"""Stage 3 (qwen-v1): turn cumulative text into true increments.

qwen-v1 resends the whole answer so far in every frame (§2.3). The new part is
what lies beyond the characters already sent, by position: "ha", "haha",
"hahaha" gives "ha", "ha", "ha", and a repeated identical frame gives nothing.
The original Worker guessed with ``startsWith`` and resent the whole text when
the guess failed, doubling it. When a frame does not extend the previous one
(the upstream rewrote earlier text), we cannot unsend what the client has; we
count a divergence, log it, and go on by position, so text is never doubled.
A frame with no text (no ``content`` key, or an empty first chunk) is not a
rewrite: it leaves the position where it was.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator

from ._util import close_source, stage
from .frames import HEARTBEAT, Frame, StreamStats

__all__ = ["deaccumulate"]

_log = logging.getLogger("relay.upstream")


@stage
async def deaccumulate(frames: AsyncIterable[Frame], stats: StreamStats) -> AsyncIterator[Frame]:
    """Yield frames whose ``content`` is only the new text."""
    previous = ""
    sent = 0  # characters of the cumulative text already passed on
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            text = frame.content
            if text:
                if not text.startswith(previous):
                    stats.divergences += 1
                    _log.warning(
                        "deaccumulate_divergence",
                        extra={"fields": {"previous_chars": len(previous), "chars": len(text)}},
                    )
                previous = text
                frame.content = text[sent:]
                sent = max(sent, len(text))
            # An empty frame (no content key, or a first empty chunk) carries no text.
            if frame.content or frame.finish_reason or frame.usage or frame.extra or frame.reasoning:
                yield frame
    finally:
        await close_source(frames)
