"""Stage 1: upstream bytes → SSE events → JSON payloads.

Garbage never crashes the stream: a ``data:`` that is not JSON, or JSON that
is not an object, is counted and skipped (§6 item 7 of the protocol notes),
and the rest of the answer still flows.

A bare JSON body: the upstream sometimes answers ``text/event-stream`` with a
body that is one JSON object and no ``data:`` prefix, e.g. a refusal
``{"success":false,"data":{"code":"RateLimited","num":2}}`` (§7.4 [C]). An SSE
stream never starts with ``{`` (a line has a field name, a colon or nothing), so
when the first byte after any whitespace is ``{`` the whole body, up to
``max_line_bytes``, is taken as one payload; the stages after see it as they
would see it in a ``data:`` line.

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
from .frames import SILENT_CHUNK, SILENT_PAYLOAD, StreamStats

__all__ = ["parse_payloads"]

_log = logging.getLogger("relay.upstream")
_DONE = "[DONE]"
#: JSON's whitespace (RFC 8259), skipped while looking for a bare body's ``{``.
_JSON_SPACE = b" \t\r\n"
_OPEN_BRACE = ord("{")


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
    sniffing = True  # until the first byte that is not whitespace: SSE, or a bare JSON body
    try:
        try:
            while True:
                chunk = await anext(source, None)
                if chunk is SILENT_CHUNK:
                    yield SILENT_PAYLOAD
                    continue
                if sniffing and chunk:
                    start = len(chunk) - len(chunk.lstrip(_JSON_SPACE))
                    sniffing = start == len(chunk)  # whitespace only: the decoder skips it too
                    if not sniffing and chunk[start] == _OPEN_BRACE:
                        body = bytearray(chunk)
                        del chunk, body[:start]
                        await _read_rest(body, source, max_line_bytes)
                        payload = _payload(body.decode("utf-8", "replace"), stats)
                        del body
                        if payload is not None:
                            yield payload
                        return
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


async def _read_rest(body: bytearray, source: AsyncIterator[bytes], max_bytes: int) -> None:
    """Append the rest of a bare JSON body to ``body``, which stays within ``max_bytes``.

    The limit is --max-line-bytes: such a body is one line's worth of JSON, and
    bounded the same way, so a peer cannot make the relay buffer without end.
    """
    while True:
        if len(body) > max_bytes:
            raise StreamLimitExceeded(
                f"the upstream sent a bare JSON body longer than {max_bytes} bytes (--max-line-bytes)")
        chunk = await anext(source, None)
        if chunk is None:
            return
        if chunk is SILENT_CHUNK:
            continue  # a whole body is not streamed to the client: nothing to keep alive
        body += chunk
        del chunk


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
