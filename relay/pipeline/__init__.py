"""The streaming pipeline: composable async-generator stages, one job each.

    upstream bytes ─ parse_payloads ───────── dialect.stream_frames ────┐
                     (lines, SSE, line limit;  (normalise; qwen-v1:       │
                      JSON, stop at [DONE])     deaccumulate)             │
      ┌────────────────────────────────────────────────────────────────────┘
      └─ extract_tool_calls ─ thinking ─ cut_at_stop ─┬─ encode ───── client (a stream)
         (when tools were sent:  (drop, or  (stop      │  (the surface's encoder: events,
          <tool_call> → calls)    <think>)   sequences) │   keep-alives, error event)
                                                       └─ aggregate ── client (one body)

``handlers.chain.answer_frames`` assembles it, the same for every surface.
A silent upstream travels down as a ``HEARTBEAT`` frame (see ``frames``).

Timeouts are enforced where the bytes are read (``upstream.client``); the
stages hold no sockets. Every stage closes its source however it ends, so
closing the last one closes the chain.

Cancellation and shutdown flow::

    client disconnects ──▶ aiohttp cancels the handler task (handler_cancellation=True)
        └─ CancelledError at `await response.write` or at the upstream read
            ├─ each stage's `finally: close_source(...)` closes encode ─▶ frames ─▶ bytes
            ├─ UpstreamClient.open exits: response.close() (not release: half-read)
            │     └─ the upstream sees its connection close and stops generating
            └─ the gate's `finally: gate.leave()`: the slot is free again

    upstream fault after headers (stall, reset, long line, in-stream error)
        └─ RelayError raised in a stage ─▶ encode yields the surface's error event
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ._util import close_source, stage, untrack_stages
from .aggregate import Aggregate, aggregate
from .deaccumulate import deaccumulate
from .encode import StreamEncoder, encode
from .frames import Frame, StreamStats, ToolCall
from .parse import parse_payloads
from .toolcalls import ToolCallParser, ToolSpec, extract_tool_calls, tool_calls_json, tool_specs

__all__ = [
    "Aggregate",
    "Frame",
    "StreamEncoder",
    "StreamStats",
    "ToolCall",
    "ToolCallParser",
    "ToolSpec",
    "aggregate",
    "close_source",
    "deaccumulate",
    "encode",
    "extract_tool_calls",
    "parse_payloads",
    "stage",
    "tool_calls_json",
    "tool_specs",
    "untrack_stages",
    "upstream_payloads",
]


def upstream_payloads(body: AsyncIterable[bytes], max_line_bytes: int,
                      stats: StreamStats) -> AsyncIterator[dict[str, Any]]:
    """The dialect-independent front of the chain: bytes → JSON payloads."""
    return parse_payloads(body, max_line_bytes, stats)
