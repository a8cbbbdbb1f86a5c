"""The one chain of stages every answer runs through, whatever surface asked.

    upstream bytes ─ parse ─ dialect frames ─ tool calls ─ thinking ─ stop sequences ─┐
      ┌─────────────────────────────────────────────────────────────────────────────┘
      ├─ stream:     pipeline.encode with the surface's encoder ─ client
      └─ non-stream: pipeline.aggregate ─ the surface's renderer ─ client

A silent upstream is noticed where its bytes are read and travels down as a
``HEARTBEAT`` frame (pipeline.frames), which the encoder turns into the
surface's keep-alive: the reader never calls into the handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from ..config import Config
from ..dialects import Dialect, UpstreamCall
from ..errors import UpstreamProtocolError
from ..pipeline import Frame, StreamStats, extract_tool_calls, stage, upstream_payloads
from ..pipeline.stops import cut_at_stop
from ..pipeline.think import drop_reasoning, reasoning_as_content
from ..pipeline.toolcalls import require_tool_call
from ..surfaces.base import Turn
from ..upstream import UpstreamResponse

__all__ = ["answer_frames"]


def answer_frames(upstream: UpstreamResponse, call: UpstreamCall, dialect: Dialect, turn: Turn,
                  stats: StreamStats, config: Config, *, shows_reasoning: bool, reasoning_in_content: bool,
                  streaming: bool, before_wait: Callable[[], Awaitable[None]] | None = None,
                  ) -> AsyncIterator[Frame]:
    """The frames of ``upstream``'s answer, as the client asked for them.

    ``streaming``: heartbeats while the upstream is silent (--keepalive-interval),
    and a ``tool_choice`` that demanded a call fails in the stream (a whole
    answer is checked, and retried once, by the handler instead).
    """
    max_line_bytes = config.limits.max_line_bytes
    frames: AsyncIterator[Frame]
    if upstream.content_type == "application/json" or (
            not call.stream and upstream.content_type != "text/event-stream"):
        frames = _whole_answer(upstream, dialect, max_line_bytes, call.stream)
    else:
        silence_s = config.timeouts.keepalive_s if streaming else None
        payloads = upstream_payloads(upstream.iter_bytes(silence_s, before_wait), max_line_bytes, stats)
        frames = dialect.stream_frames(payloads, stats)
    plan = turn.plan
    if plan.specs:
        frames = extract_tool_calls(frames, plan.specs)
        if plan.forced and streaming:
            frames = require_tool_call(frames)
    if not shows_reasoning:
        frames = drop_reasoning(frames)
    elif reasoning_in_content:
        frames = reasoning_as_content(frames)
    if turn.stop_sequences:
        frames = cut_at_stop(frames, turn.stop_sequences)
    return frames


@stage
async def _whole_answer(upstream: UpstreamResponse, dialect: Dialect, max_bytes: int,
                        stream_expected: bool) -> AsyncIterator[Frame]:
    """A JSON body as the one frame of its answer (qwen-v1 without ``stream``)."""
    completion = dialect.completion(await upstream.read_json(max_bytes))  # raises on an error body
    if stream_expected:
        raise UpstreamProtocolError("The upstream answered one JSON body where a stream was expected.")
    yield Frame(content=completion.content, reasoning=completion.reasoning,
                finish_reason=completion.finish_reason, usage=completion.usage, extra=completion.message_extra)


