"""Last stage: frames → the client's event bytes, through a surface's encoder.

The stage is the same for every surface; what the bytes look like is the
encoder's (OpenAI chunks, Anthropic events, Responses events). It decides
what only the end of the chain can know:

- **When the stream starts.** The head goes out with the first frame that
  carries something (text, reasoning, a call, an unknown field), or with the
  first keep-alive. Frames with only usage or only a finish do not start it:
  an empty answer must still be able to fail with a status.
- **Errors.** A ``RelayError`` before the head is raised, so the handler
  answers with a status (and may retry on another try or credential); after
  it, the encoder's error event ends the stream, never a cut connection.
- **The end.** Exactly one ``finish``, with the last finish reason and usage
  seen (or the estimate), unless an error ended the stream.

The first yield is the commit: the handler prepares the response when the
first bytes leave this stage, and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from ..errors import RelayError, UpstreamProtocolError
from ._util import close_source, stage
from .frames import HEARTBEAT, Frame, StreamStats

__all__ = ["StreamEncoder", "encode"]

_log = logging.getLogger("relay.error")
_EMPTY = "The upstream ended the stream without any answer text."


class StreamEncoder(Protocol):
    """Frames of one stream → a client's event bytes; a surface implements it."""

    def start(self) -> bytes:
        """The stream's head (the role chunk, ``message_start``, ``response.created``)."""

    def frame(self, frame: Frame) -> bytes:
        """One frame's text, reasoning and tool calls; may be empty."""

    def keep_alive(self) -> bytes:
        """What tells the client the relay is alive while the upstream is silent."""

    async def finish(self, finish_reason: str, stop_sequence: str | None, usage: dict[str, Any]) -> bytes:
        """The stream's end. Async: the Responses surface stores the answer before it says so."""

    def error(self, exc: RelayError) -> bytes:
        """A fault after the head went out, as the client's own error event, ending the stream."""


@stage
async def encode(frames: AsyncIterable[Frame], encoder: StreamEncoder, stats: StreamStats,
                 usage_estimate: Callable[[int], dict[str, Any]]) -> AsyncIterator[bytes]:
    """Encode ``frames`` with ``encoder``; see the module docstring for the rules."""
    started = False
    finish_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, Any] | None = None
    try:
        try:
            async for frame in frames:
                if frame is HEARTBEAT:
                    head = b""
                    if not started:
                        started, head = True, encoder.start()
                    yield head + encoder.keep_alive()
                    continue
                if frame.finish_reason is not None:
                    finish_reason, stop_sequence = frame.finish_reason, frame.stop_sequence
                if frame.usage is not None:
                    usage = frame.usage
                if not (frame.content or frame.reasoning or frame.tool_calls or frame.extra):
                    continue  # usage or a finish only: nothing to send yet
                _count(stats, frame)
                head = b""
                if not started:  # the head first: an encoder may number its events
                    started, head = True, encoder.start()
                data = head + encoder.frame(frame)
                del frame, head
                if data:
                    yield data
                del data
            is_empty = not (stats.content_chars or stats.reasoning_chars or stats.tool_calls)
            if is_empty and finish_reason != "length":
                raise UpstreamProtocolError(_EMPTY, code="upstream_empty_answer")
        except RelayError as exc:
            if not started:
                raise  # nothing sent: the handler answers with a status, or tries again
            stats.error_code = exc.envelope()["error"]["code"]
            _log.warning("stream_error", extra={"fields": {"error_code": stats.error_code}})
            yield encoder.error(exc)
            return
        head = b"" if started else encoder.start()  # an answer cut by max_tokens before any text
        stats.usage = usage or usage_estimate(stats.content_chars + stats.tool_call_chars)
        yield head + await encoder.finish(finish_reason or "stop", stop_sequence, stats.usage)
    finally:
        await close_source(frames)


def _count(stats: StreamStats, frame: Frame) -> None:
    stats.content_chars += len(frame.content)
    stats.reasoning_chars += len(frame.reasoning)
    if frame.tool_calls:
        stats.tool_calls += len(frame.tool_calls)
        stats.tool_call_chars += sum(len(call.name) + len(call.arguments) for call in frame.tool_calls)
