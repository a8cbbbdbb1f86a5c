"""Play a planned SSE body onto a live connection and notice when the peer leaves.

The plan (``script.plan_stream``) fixes the bytes; this module fixes only how they
are cut into writes (``split``) and turns a disconnect into bookkeeping:
``client_disconnected`` on the record, ``streams_aborted`` and ``peer_closed``.

A disconnect shows up in one of three ways, all handled here:

- a write raises ``ConnectionResetError`` (aiohttp's ``ClientConnectionResetError``);
- a stall notices the transport closing (for runners without handler cancellation);
- the handler task is cancelled (``handler_cancellation=True``): the stream is
  counted as aborted here, and the handler marks the record before re-raising.

A v2 stream can also be stopped (§4.2 stop endpoint): gaps and stalls wake on the
stop event, the body ends cleanly after the last whole event, and the stream is
counted as "stopped". [I] Nothing more is sent after a stop: the notes do not say
whether the real service sends a finished frame first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from aiohttp import web

from relay.emulator.framing import Abort, Gap, Stall, Step, Write
from relay.emulator.state import EmulatorState, RequestRecord

__all__ = ["SSE_HEADERS", "abort", "is_peer_gone", "play_stream", "stall"]

SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# How often a stall looks at the transport; only matters without handler cancellation.
PEER_POLL_S = 0.05
# How long an abort waits for already written bytes to leave, at most.
ABORT_FLUSH_S = 1.0


def is_peer_gone(request: web.BaseRequest) -> bool:
    """Tell whether the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def stall(request: web.BaseRequest, seconds: float | None, stop: asyncio.Event | None = None) -> None:
    """Wait ``seconds`` (None: forever) or until ``stop``; raise ConnectionResetError if the peer leaves."""
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    while not is_peer_gone(request):
        if stop is not None and stop.is_set():
            return
        remaining = PEER_POLL_S
        if deadline is not None:
            remaining = min(remaining, deadline - loop.time())
        if remaining <= 0:
            return
        await asyncio.sleep(remaining)
    raise ConnectionResetError("client went away during a stall")


async def abort(request: web.BaseRequest) -> None:
    """Reset the connection mid-body, after letting already written bytes leave.

    ``transport.abort()`` discards its buffer; waiting for it to drain keeps the
    events written before the fault visible to the client.
    """
    transport = request.transport
    if transport is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ABORT_FLUSH_S
    while transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    transport.abort()


async def play_stream(
    request: web.Request,
    state: EmulatorState,
    record: RequestRecord,
    steps: Sequence[Step],
    split: str,
    stop: asyncio.Event | None = None,
) -> web.StreamResponse:
    """Send 200 SSE headers and the planned body; count how the stream ended."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    state.stream_opened()
    outcome = "aborted"
    try:
        await response.prepare(request)
        record.status = 200
        outcome = await _play_steps(request, response, state, record, steps, split, stop)
        if outcome in ("completed", "stopped"):
            await response.write_eof()
    except ConnectionError:
        outcome = "aborted"
        state.client_gone(record)
    finally:  # on CancelledError too; the handler marks the record (server._chat)
        state.stream_closed(record, outcome)
    return response


async def _play_steps(
    request: web.Request,
    response: web.StreamResponse,
    state: EmulatorState,
    record: RequestRecord,
    steps: Sequence[Step],
    split: str,
    stop: asyncio.Event | None,
) -> str:
    """Write the steps; return "completed", "reset" or "stopped" (raises if the peer leaves)."""
    pending = bytearray()  # coalesce: everything up to the next stall goes in one write
    pending_events = 0

    def count_events(events: int) -> None:
        if events and record.events_sent == 0:
            state.first_chunk_sent.set()
        record.events_sent += events

    async def flush() -> None:
        nonlocal pending_events
        if pending:
            await response.write(bytes(pending))
            pending.clear()
        count_events(pending_events)
        pending_events = 0

    def is_stopped() -> bool:
        return stop is not None and stop.is_set()

    for step in steps:
        if is_stopped():
            await flush()
            return "stopped"
        if isinstance(step, Write):
            if split == "coalesce":
                pending.extend(step.data)
                pending_events += step.is_event
                continue
            if split == "byte":
                for index in range(len(step.data)):
                    await response.write(step.data[index : index + 1])
                    await asyncio.sleep(0)  # let each byte leave in its own segment
            else:
                await response.write(step.data)
            count_events(step.is_event)
        elif isinstance(step, Gap):
            if split != "coalesce":
                await _pause(step.seconds, stop)
        elif isinstance(step, Stall):
            await flush()
            await stall(request, step.seconds, stop)
        elif isinstance(step, Abort):
            await flush()
            await abort(request)
            return "reset"
    await flush()
    return "completed"


async def _pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep ``seconds``, waking early if the response is stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
