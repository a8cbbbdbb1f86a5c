"""What the emulator has seen, shared with in-process tests.

Tests synchronise on these events and counters instead of sleeping (STYLE.md §6):
"the n-th request arrived", "a first event was written", "the peer closed", "no
stream is open any more". Waiters use a pulse: every change sets the current event
and swaps in a fresh one, so notifying never needs to await a lock.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EmulatorState", "RequestRecord", "fingerprint"]


def fingerprint(token: str) -> str:
    """Identify a token in logs without storing it: sha256 hex, first 12 digits."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(slots=True)
class RequestRecord:
    """One request as the emulator saw and answered it; updated while it runs."""

    number: int
    method: str
    path: str
    token_fingerprint: str | None
    model: str | None = None
    stream: bool | None = None
    directive: dict[str, Any] | None = None
    # 1-based count of requests sharing this directive's fail-times counter.
    attempt: int = 1
    fault: str | None = None
    status: int | None = None
    events_sent: int = 0
    client_disconnected: bool = False
    finished: bool = False

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/log``."""
        return {
            "number": self.number,
            "method": self.method,
            "path": self.path,
            "token_fingerprint": self.token_fingerprint,
            "model": self.model,
            "stream": self.stream,
            "directive": self.directive,
            "attempt": self.attempt,
            "fault": self.fault,
            "status": self.status,
            "events_sent": self.events_sent,
            "client_disconnected": self.client_disconnected,
            "finished": self.finished,
        }


@dataclass(slots=True)
class EmulatorState:
    """Request log, counters and events of one emulator app.

    ``streams_started == streams_completed + streams_aborted + streams_reset +
    open_streams`` holds at every await point.
    """

    log: list[RequestRecord] = field(default_factory=list)
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    # The client went away mid-stream (or the emulator shut down under it).
    streams_aborted: int = 0
    # The emulator dropped the connection on purpose (fault reset_mid).
    streams_reset: int = 0
    open_streams: int = 0
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    fail_counters: dict[str, int] = field(default_factory=dict)
    _pulse: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def reset(self) -> None:
        """Forget history between tests; streams still open stay counted."""
        self.log.clear()
        self.requests = 0
        self.streams_started = self.open_streams
        self.streams_completed = 0
        self.streams_aborted = 0
        self.streams_reset = 0
        self.first_chunk_sent.clear()
        self.peer_closed.clear()
        self.fail_counters.clear()
        self.notify()

    def notify(self) -> None:
        """Wake every waiter so it re-checks its condition."""
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; callers bound it with asyncio.timeout()."""
        while not predicate():
            await self._pulse.wait()

    async def wait_for_request(self, n: int) -> None:
        """Return once the n-th request (1-based, since the last reset) has arrived."""
        await self.wait_until(lambda: len(self.log) >= n)

    async def wait_for_idle(self) -> None:
        """Return once no stream is open: the check that a relay closed its upstream."""
        await self.wait_until(lambda: self.open_streams == 0)

    def begin(self, method: str, path: str, token: str | None) -> RequestRecord:
        """Log a request the moment it arrives, before anything can fail."""
        self.requests += 1
        record = RequestRecord(
            number=self.requests,
            method=method,
            path=path,
            token_fingerprint=fingerprint(token) if token else None,
        )
        self.log.append(record)
        self.notify()
        return record

    def count_attempt(self, key: str | None) -> int:
        """Bump and return the fail-times counter for ``key`` (1 without a key)."""
        if key is None:
            return 1
        attempt = self.fail_counters.get(key, 0) + 1
        self.fail_counters[key] = attempt
        return attempt

    def stream_opened(self) -> None:
        self.streams_started += 1
        self.open_streams += 1
        self.notify()

    def stream_closed(self, record: RequestRecord, outcome: str) -> None:
        """Count how a stream ended: "completed", "aborted" (client gone) or "reset"."""
        self.open_streams -= 1
        if outcome == "completed":
            self.streams_completed += 1
        elif outcome == "aborted":
            self.streams_aborted += 1
        else:
            self.streams_reset += 1
        record.finished = True
        self.notify()

    def client_gone(self, record: RequestRecord) -> None:
        """Note a disconnect on the record and wake ``peer_closed`` waiters."""
        record.client_disconnected = True
        self.peer_closed.set()
        self.notify()
