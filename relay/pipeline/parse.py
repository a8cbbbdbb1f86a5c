"""Stages 1–2: upstream bytes → SSE events → JSON payloads.

Garbage never crashes the stream: a ``data:`` that is not JSON, or JSON that
is not an object, is counted and skipped (§6 item 7 of the protocol notes),
and the rest of the answer still flows.

A stage waits for its next item with its locals alive, and a slow stream waits
there for seconds between events; so each stage drops the item it passed on
(``del``) before it waits. With 9,000 open streams that is ~2 KiB each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..errors import StreamLimitExceeded
from ..jsonio import loads
from ..sse import LineTooLong, SseDecoder, SseEvent
from ._util import close_source
from .frames import StreamStats

__all__ = ["decode_json", "parse_events"]

_log = logging.getLogger("relay.upstream")
_DONE = "[DONE]"


async def parse_events(chunks: AsyncIterable[bytes], max_line_bytes: int,
                       stats: StreamStats) -> AsyncIterator[SseEvent]:
    """Split upstream bytes into SSE events, enforcing the line-length limit."""
    decoder = SseDecoder(max_line_bytes)
    try:
        try:
            async for chunk in chunks:
                events = decoder.feed(chunk)
                del chunk
                events.reverse()
                while events:
                    yield events.pop()  # not `for event in`: nothing held while the next read waits
                decoder.raise_pending()
            for event in decoder.close():
                yield event
        except LineTooLong as exc:
            raise StreamLimitExceeded(
                f"the upstream sent an SSE line longer than {exc.limit} bytes (--max-line-bytes)"
            ) from exc
        finally:
            stats.comments = decoder.comments
    finally:
        await close_source(chunks)


def _not_json(name: str) -> None:
    # NaN/Infinity are not JSON: passed on, they would break every client's parser.
    return None


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999 overflows to inf: not JSON either


async def decode_json(events: AsyncIterable[SseEvent], stats: StreamStats) -> AsyncIterator[dict[str, Any]]:
    """Decode each event's data as a JSON object; stop at ``[DONE]``."""
    try:
        async for event in events:
            data = event.data
            del event
            if data.strip() == _DONE:
                return
            try:
                payload = loads(data, parse_constant=_not_json, parse_float=_finite_float)
            except (ValueError, RecursionError):
                payload = None
            if not isinstance(payload, dict):
                stats.garbage += 1
                _log.debug("upstream_garbage_skipped", extra={"fields": {"bytes": len(data)}})
                continue
            del data
            stats.events += 1
            yield payload
            del payload  # a long stream waits here between events: hold nothing
    finally:
        await close_source(events)
