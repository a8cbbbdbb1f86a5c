"""A sans-IO Server-Sent Events codec: bytes in, events out, and back.

Strategy (after h11's ``_readers.py``): ``SseDecoder.feed`` takes whatever
bytes a TCP read delivered and returns the events completed by them, keeping
the unfinished tail. Lines end in ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r`` at
the end of one read and ``\\n`` at the start of the next is one line end).
A line longer than ``max_line_bytes`` raises ``LineTooLong`` as soon as it is
known to be too long, so memory stays bounded whatever the peer sends. We do
not use aiohttp's ``readline`` because its limit is fixed and its overflow
error is not one we can report cleanly.

Lines are decoded as UTF-8 only once complete, so a multi-byte character split
across reads is never mangled; invalid bytes become U+FFFD instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DONE_EVENT", "LineTooLong", "SseDecoder", "SseEvent", "encode_event"]

DONE_EVENT = b"data: [DONE]\n\n"
_LINE_END = re.compile(r"\r\n|\r|\n")


class LineTooLong(ValueError):
    """An SSE line exceeded the configured maximum."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"SSE line longer than {limit} bytes")
        self.limit = limit


class _TooLongAfter(Exception):
    """Internal: a too-long line was found after these complete lines."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SseDecoder:
    """Incremental SSE parser per the WHATWG event-stream rules."""

    __slots__ = ("_data", "_event", "_id", "_max_line", "_partial", "_pending_error", "_skip_lf", "comments")

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line = max_line_bytes
        self._partial = bytearray()
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        #: comment lines seen so far (keep-alives); counted, never dispatched.
        self.comments = 0
        self._pending_error: LineTooLong | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume one read's bytes; return the events it completed.

        Events completed before a too-long line are returned first; the
        ``LineTooLong`` is raised by the next call, so no good text is lost.
        """
        if self._pending_error is not None:
            raise self._pending_error
        events: list[SseEvent] = []
        try:
            lines = self._split_lines(chunk)
        except _TooLongAfter as stop:
            lines = stop.lines
            self._pending_error = LineTooLong(self._max_line)
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        if self._pending_error is not None and not events:
            raise self._pending_error
        return events

    def raise_pending(self) -> None:
        """Raise the ``LineTooLong`` held back by the last ``feed``, if any.

        Lets a caller report a too-long line right after delivering the events
        before it, instead of at the next read (which may never come).
        """
        if self._pending_error is not None:
            raise self._pending_error

    def close(self) -> list[SseEvent]:
        """Flush at end of stream.

        Why this differs from the spec: the spec drops an event not followed by a
        blank line. An upstream that closes right after its last ``data:`` line
        would then lose the end of the answer, so we dispatch it.
        """
        if self._pending_error is not None:
            raise self._pending_error
        events: list[SseEvent] = []
        if self._partial:
            line = self._partial.decode("utf-8", "replace")
            self._partial.clear()
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _split_lines(self, chunk: bytes) -> list[str]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        last = chunk[-1]
        complete = last == 0x0A or last == 0x0D
        self._skip_lf = last == 0x0D
        # bytes.splitlines splits on exactly \n, \r and \r\n (str's would split on more).
        lines = chunk.splitlines()
        tail = b"" if complete else lines.pop()
        partial = self._partial
        carried = len(partial)
        if partial and lines:
            partial += lines[0]
            lines[0] = bytes(partial)
            partial.clear()
        # Only a read longer than the limit can hold a too-long line: skip the scan otherwise.
        if len(chunk) + carried > self._max_line:
            for index, line in enumerate(lines):
                if len(line) > self._max_line:
                    raise _TooLongAfter([good.decode("utf-8", "replace") for good in lines[:index]])
        decoded = [line.decode("utf-8", "replace") for line in lines]
        if tail:
            partial += tail
            if len(partial) > self._max_line:
                partial.clear()
                raise _TooLongAfter(decoded)
        return decoded

    def _process_line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        # "retry" and unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self) -> SseEvent | None:
        data, self._data = self._data, []
        event, self._event = self._event, ""
        if not data:
            return None
        return SseEvent("\n".join(data), event or "message", self._id)


def encode_event(data: str, event: str | None = None) -> bytes:
    """Encode one event; a newline in ``data`` becomes several ``data:`` lines."""
    head = f"event: {event}\n" if event else ""
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINE_END.split(data))
    else:
        body = f"data: {data}\n"
    return (head + body + "\n").encode("utf-8")
