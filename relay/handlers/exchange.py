"""What every upstream exchange shares, whatever surface asked for it.

Admission to the concurrency gate, the caller's token or a pool credential,
the retries while nothing reached the client, the non-stream deadline, and the
clean-up of the chat afterwards. The surfaces' handlers compose these; none
copies them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from ..accounts.credential import Credential
from ..calls import Calls
from ..deadline import Deadline
from ..dialects import UpstreamCall
from ..dialects.v2_errors import ChatNotFound
from ..errors import UpstreamChallenge, UpstreamInterrupted, UpstreamTimeout
from ..keys import CONFIG, GATE, METRICS, NONSTREAM_DEADLINES, OPERATOR
from ..metrics import Metrics
from ..operator.auth import Caller, with_upstream_token
from ..pipeline import StreamStats
from ..upstream.retry import backoff_s

__all__ = ["NonstreamDeadline", "clean_up", "count_stream_stats", "gated", "nonstream_deadline",
           "until_committed", "with_token"]

T = TypeVar("T")
_log = logging.getLogger("relay.upstream")


def nonstream_deadline(app: web.Application) -> NonstreamDeadline:
    """``async with nonstream_deadline(app):`` the block finishes within --nonstream-deadline, else 504.

    The deadline cancels the task; a cancellation that is the deadline's becomes
    ``UpstreamTimeout``, any other (the client left) goes on.
    """
    return NonstreamDeadline(app)


class NonstreamDeadline:
    """A class rather than ``@asynccontextmanager``: no async generator per request."""

    __slots__ = ("_deadline", "_deadlines")

    def __init__(self, app: web.Application) -> None:
        self._deadlines = app[NONSTREAM_DEADLINES]
        self._deadline: Deadline | None = None

    async def __aenter__(self) -> None:
        self._deadline = self._deadlines.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        deadline = self._deadline
        assert deadline is not None  # set by __aenter__
        try:
            if kind is not None and issubclass(kind, asyncio.CancelledError) and deadline.expired():
                raise UpstreamTimeout(f"No complete answer within {self._deadlines.delay_s:g} s "
                                      "(--nonstream-deadline).", code="nonstream_deadline") from None
        finally:
            deadline.cancel()


async def gated(request: web.Request, caller: Caller, exchange: Callable[[Credential], Awaitable[T]]) -> T:
    """Run ``exchange(credential)`` holding a concurrency slot."""
    app = request.app
    async with app[GATE].slot(app[CONFIG].timeouts.queue_s):
        return await with_token(app, caller, exchange)


def with_token(app: web.Application, caller: Caller,
                exchange: Callable[[Credential], Awaitable[T]]) -> Awaitable[T]:
    """``exchange`` with the caller's token (passthrough), or a pool credential; risk control rests it."""
    return with_upstream_token(app[OPERATOR], caller, exchange, app[CONFIG].challenge_cooldown_s)


def until_committed(app: web.Application, exchange: Callable[[Credential], Awaitable[T]]) -> Callable[[Credential], Awaitable[T]]:
    """``exchange`` tried again while no byte reached the client, for faults another try may fix.

    The transport retries up to the response head; this covers what breaks after
    it: the connection, or an in-stream ``internal_error`` (``UpstreamInterrupted``),
    within ``--retries`` attempts, and one ``CHAT_NOT_FOUND`` (a new chat is made).
    An error leaves ``exchange`` only before its response is committed (after,
    it becomes an SSE error event), so a retry never resends to a client.
    """
    config, metrics = app[CONFIG], app[METRICS]

    async def attempts(credential: Credential) -> T:
        new_chat_made = False
        interrupted = 0
        while True:  # at most --retries interruptions plus one new chat
            try:
                return await exchange(credential)
            except UpstreamChallenge:
                metrics.challenges += 1
                raise
            except ChatNotFound:
                if new_chat_made:
                    raise
                new_chat_made, reason, delay = True, "chat_not_found", 0.0
            except UpstreamInterrupted as exc:
                interrupted += 1
                if interrupted >= config.retries:
                    raise
                reason = exc.instance_code or "upstream_interrupted"
                delay = backoff_s(interrupted, config.timeouts.backoff_base_s, config.timeouts.backoff_max_s,
                                  None)
            metrics.count_retry(reason)
            _log.warning("upstream_retry", extra={"fields": {"reason": reason, "delay_s": round(delay, 3)}})
            if delay:
                await asyncio.sleep(delay)

    return attempts


def clean_up(app: web.Application, calls: Calls, call: UpstreamCall, credential: Credential,
              stop_response_id: str | None = None) -> None:
    """After the answer (or a disconnect): stop generation if asked, then delete the chat, in the background."""
    dialect = calls.dialect
    stop = dialect.stop_call(call, stop_response_id) if stop_response_id else None
    delete = None if app[CONFIG].keep_chats else dialect.delete_call(call)
    calls.send_in_background(credential, (stop, "upstream_stopped"), (delete, "upstream_chat_deleted"))


def count_stream_stats(metrics: Metrics, stats: StreamStats) -> None:
    """What the stages counted in one upstream stream, into /metrics (stream and non-stream alike)."""
    metrics.divergences += stats.divergences
    metrics.garbage_events += stats.garbage
    metrics.foreign_frames += stats.foreign_frames
    metrics.dropped_phase_frames += stats.dropped_phase_frames
