"""Stage 1: upstream bytes → SSE events → JSON payloads.

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
from ..sse import LineTooLong, SseDecoder
from ._util import close_source, stage
from .frames import StreamStats

__all__ = ["parse_payloads"]

_log = logging.getLogger("relay.upstream")
_DONE = "[DONE]"


@stage
async def parse_payloads(chunks: AsyncIterable[bytes], max_line_bytes: int,
                         stats: StreamStats) -> AsyncIterator[dict[str, Any]]:
    """Split upstream bytes into SSE events and decode each one's JSON object; stop at ``[DONE]``.

    One generator for both steps: a stage weighs ~0.5 KiB per open stream
    (its frame, and the loop's weak reference to every async generator), and
    costs a resumption per event.
    """
    decoder = SseDecoder(max_line_bytes)
    source = aiter(chunks)
    try:
        try:
            while True:
                chunk = await anext(source, None)
                ended = chunk is None
                events = decoder.feed(chunk) if chunk is not None else decoder.close()  # close: the last event
                del chunk
                events.reverse()  # popped from the end: nothing held while the next read waits
                while events:
                    data = events.pop().data
                    if data.strip() == _DONE:
                        return
                    payload = _payload(data, stats)
                    del data
                    if payload is not None:
                        yield payload
                        del payload
                if ended:
                    return
                decoder.raise_pending()
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


def _payload(data: str, stats: StreamStats) -> dict[str, Any] | None:
    """One event's data as a JSON object, or None (counted) for garbage."""
    try:
        payload = loads(data, parse_constant=_not_json, parse_float=_finite_float)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        stats.garbage += 1
        _log.debug("upstream_garbage_skipped", extra={"fields": {"bytes": len(data)}})
        return None
    stats.events += 1
    return payload
