"""The client's stop sequences, applied by the relay (Qwen Chat's web API takes none).

The answer's text is cut before the first occurrence of any sequence, and the
stream ends there with ``finish_reason`` "stop" and ``stop_sequence`` set. A
sequence can be split across frames, so the end of the text that could still
begin one is held back until the next frame settles it; held text leaves
before any call, finish or end, so order is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from ._util import close_source, stage
from .frames import HEARTBEAT, Frame

__all__ = ["cut_at_stop"]


class StopScanner:
    """Text in, text out: what may be sent, and the sequence once one is found."""

    __slots__ = ("_held", "_longest", "_stops", "found")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._longest = max(len(stop) for stop in stops)
        self._held = ""
        self.found: str | None = None

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that can no longer become a stop sequence."""
        text = self._held + text
        cut, found = len(text), None
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and at < cut:
                cut, found = at, stop
        if found is not None:
            self.found, self._held = found, ""
            return text[:cut]
        keep = self._undecided(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _undecided(self, text: str) -> int:
        """How many trailing characters are the start of some stop sequence."""
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0


@stage
async def cut_at_stop(frames: AsyncIterable[Frame], stops: tuple[str, ...]) -> AsyncIterator[Frame]:
    """Cut the content at the first of ``stops``; the upstream is left (closed) there."""
    scanner = StopScanner(stops)
    try:
        async for frame in frames:
            if frame is HEARTBEAT:
                yield frame
                continue
            if frame.content:
                frame.content = scanner.feed(frame.content)
            if scanner.found is not None:
                frame.tool_calls = None  # calls after the stop sequence are past the end
                frame.finish_reason, frame.stop_sequence = "stop", scanner.found
                yield frame
                return
            if frame.tool_calls or frame.finish_reason is not None:
                frame.content += scanner.flush()
            yield frame
        held = scanner.flush()
        if held:
            yield Frame(content=held)
    finally:
        await close_source(frames)
