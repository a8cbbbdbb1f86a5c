"""Where limits and pool state live: one small interface, two backends.

The operator code (per-key rpm and concurrency, token disable/cool-down) and the
models cache talk to a ``StateBackend`` and never ask which one it is. ``memory``
keeps everything in this process, as the relay always did; ``redis`` (in
``redis_state``) shares it across every worker of every host.

Each call is async even in memory, because the Redis one is; the memory backend
never awaits anything, so it costs a coroutine call and nothing more.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .usage import UsageCounts, expires_at_s

__all__ = ["WINDOW_S", "Admission", "Lease", "MemoryState", "RpmWindow", "StateBackend", "TokenFlags",
           "UsageCounts"]

#: rpm is counted over a sliding window of this length.
WINDOW_S = 60.0
#: blobs the memory backend keeps at once, and their bytes; beyond either the oldest go first.
MAX_MEMORY_BLOBS = 10_000
MAX_MEMORY_BLOB_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Lease:
    """A held concurrency slot of one relay key; ``id`` is unique per request."""

    key: str
    id: str


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to one request's per-key limit check."""

    #: None when admitted; else "rpm" or "max_concurrent".
    rejected: str | None = None
    #: seconds until the rpm window lets one more request in (for Retry-After).
    retry_after_s: float = 0.0
    #: the slot to give back when the request ends (None without a concurrency limit).
    lease: Lease | None = None


@dataclass(frozen=True, slots=True)
class TokenFlags:
    """Shared state of one pool token, by fingerprint."""

    disabled: str | None = None
    #: seconds of cool-down left (0 = none).
    cooling_s: float = 0.0


class StateBackend(Protocol):
    """What the operator code and the models cache need from shared state."""

    #: "memory" or "redis", for /healthz and the logs.
    name: str

    async def admit(self, key: str, rpm: int | None, max_concurrent: int | None) -> Admission:
        """Count one request of ``key`` against its rpm and take a concurrency slot, atomically."""

    async def release(self, lease: Lease) -> None:
        """Give back a slot taken by ``admit``."""

    async def token_flags(self, fingerprints: Sequence[str]) -> dict[str, TokenFlags]:
        """Disabled / cooling state of these tokens, as far as the backend knows it."""

    async def disable_token(self, fingerprint: str, reason: str) -> None: ...

    async def cool_down_token(self, fingerprint: str, seconds: float) -> None: ...

    async def load_models(self, key: str) -> tuple[bytes, float] | None:
        """A model list stored by any relay: (JSON, seconds left), or None."""

    async def store_models(self, key: str, payload: bytes, ttl_s: float) -> None: ...

    #: True when accounts' jars live here (Redis), so every relay sharing it resumes them.
    keeps_accounts: bool

    async def load_account(self, name: str) -> bytes | None:
        """An account's persisted jar (JSON), or None."""

    async def store_account(self, name: str, payload: bytes) -> None: ...

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        """Take the fleet-wide lock ``name`` for at most ``ttl_s``; its token, or None if another holds it.

        Fails open (a token) when the backend is down: each relay still refreshes
        only once at a time on its own.
        """

    async def release_lock(self, name: str, token: str) -> None: ...

    async def add_usage(self, day: str, counts: Mapping[tuple[str, str, str], int], keep_days: int) -> None:
        """Add ``(kind, name, counter) → n`` to the usage of the UTC ``day`` (``YYYY-MM-DD``).

        The day's record goes away ``keep_days`` days after the day began (``--usage-days``);
        a day already that old is not kept at all.
        """

    async def load_usage(self, days: Sequence[str]) -> dict[str, UsageCounts]:
        """The usage of each of ``days`` (an empty record for a day with none, or expired)."""

    async def put_blob(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds (a stored /v1/responses answer).

        Best effort: memory keeps at most ``MAX_MEMORY_BLOBS`` / ``MAX_MEMORY_BLOB_BYTES``,
        Redis fails open (nothing stored while it is down).
        """

    async def get_blob(self, key: str) -> bytes | None:
        """What ``put_blob`` stored under ``key`` by any relay sharing the backend, or None."""

    def status(self) -> str:
        """"ok", or "down" while the backend cannot be reached (requests fail open)."""

    def render_metrics(self) -> list[str]: ...

    async def close(self) -> None: ...


class RpmWindow:
    """A sliding-window log: at most ``limit`` admissions in any ``WINDOW_S``.

    Exact rather than a fixed window (which lets through 2x the limit across a
    minute boundary); memory is bounded by ``limit`` timestamps per key.
    """

    __slots__ = ("_clock", "_times", "limit")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def admit(self) -> float | None:
        """Record one request and return None, or return the seconds until one is allowed."""
        now = self._clock()
        while self._times and self._times[0] <= now - WINDOW_S:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return self._times[0] + WINDOW_S - now
        self._times.append(now)
        return None


class MemoryState:
    """This process only: what the relay did before it had a choice.

    Token flags are kept by the pool itself (it is the local mirror every
    backend has), so here they are no-ops; the models cache is local too.
    """

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[str, RpmWindow] = {}
        self._in_flight: dict[str, int] = {}
        self._next_id = 0
        #: day → its usage, with the wall-clock second it expires: at most --usage-days days.
        self._usage: dict[str, tuple[float, UsageCounts]] = {}
        #: key → (monotonic expiry, value), oldest first; ``_blob_bytes`` is the values' total.
        self._blobs: dict[str, tuple[float, bytes]] = {}
        self._blob_bytes = 0

    async def admit(self, key: str, rpm: int | None, max_concurrent: int | None) -> Admission:
        held = self._in_flight.get(key, 0)
        if max_concurrent is not None and held >= max_concurrent:
            return Admission(rejected="max_concurrent")
        if rpm is not None:
            window = self._windows.get(key)
            if window is None or window.limit != rpm:  # a reload with a new limit starts afresh
                window = self._windows[key] = RpmWindow(rpm, self._clock)
            wait_s = window.admit()
            if wait_s is not None:
                return Admission(rejected="rpm", retry_after_s=wait_s)
        else:
            self._windows.pop(key, None)
        if max_concurrent is None:
            return Admission()
        self._in_flight[key] = held + 1
        self._next_id += 1
        return Admission(lease=Lease(key, str(self._next_id)))

    async def release(self, lease: Lease) -> None:
        left = self._in_flight.get(lease.key, 0) - 1
        if left > 0:
            self._in_flight[lease.key] = left
        else:
            self._in_flight.pop(lease.key, None)

    async def token_flags(self, fingerprints: Sequence[str]) -> dict[str, TokenFlags]:
        return {}

    async def disable_token(self, fingerprint: str, reason: str) -> None:
        return None

    async def cool_down_token(self, fingerprint: str, seconds: float) -> None:
        return None

    async def load_models(self, key: str) -> tuple[bytes, float] | None:
        return None

    async def store_models(self, key: str, payload: bytes, ttl_s: float) -> None:
        return None

    keeps_accounts = False

    async def load_account(self, name: str) -> bytes | None:
        return None  # jars go to --state-dir files instead

    async def store_account(self, name: str, payload: bytes) -> None:
        return None

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        return "local"  # one process: its own asyncio lock is the single flight

    async def release_lock(self, name: str, token: str) -> None:
        return None

    async def add_usage(self, day: str, counts: Mapping[tuple[str, str, str], int], keep_days: int) -> None:
        self._expire_usage()
        expires = expires_at_s(day, keep_days)
        if expires <= self._wall_clock():
            return
        _, record = self._usage.setdefault(day, (expires, {}))
        for counter, count in counts.items():
            record[counter] = record.get(counter, 0) + count

    async def load_usage(self, days: Sequence[str]) -> dict[str, UsageCounts]:
        self._expire_usage()
        return {day: dict(self._usage[day][1]) if day in self._usage else {} for day in days}

    async def put_blob(self, key: str, value: bytes, ttl_s: float) -> None:
        blobs = self._blobs
        old = blobs.pop(key, None)
        if old is not None:
            self._blob_bytes -= len(old[1])
        if ttl_s <= 0:
            return
        now = self._clock()
        blobs[key] = (now + ttl_s, value)  # insertion order = age: the oldest is first
        self._blob_bytes += len(value)
        while blobs:
            oldest = next(iter(blobs))
            expires, data = blobs[oldest]
            if expires > now and len(blobs) <= MAX_MEMORY_BLOBS and self._blob_bytes <= MAX_MEMORY_BLOB_BYTES:
                break
            del blobs[oldest]
            self._blob_bytes -= len(data)

    async def get_blob(self, key: str) -> bytes | None:
        entry = self._blobs.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._blobs[key]
            self._blob_bytes -= len(entry[1])
            return None
        return entry[1]

    def _expire_usage(self) -> None:
        now = self._wall_clock()
        for day in [day for day, (expires, _) in self._usage.items() if expires <= now]:
            del self._usage[day]

    def status(self) -> str:
        return "ok"

    def render_metrics(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None
