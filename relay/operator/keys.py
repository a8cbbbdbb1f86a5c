"""Relay API keys: who the caller is, and the per-key limits it is held to.

A presented key is hashed once and compared with ``hmac.compare_digest``
against every configured digest, without stopping at a match, so the time taken
says nothing about which key (or how much of one) was right. Limits live in
memory, per relay process: an operator running several relays divides them.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import KeyRateLimited, ModelNotAllowed
from .config import KeySpec

__all__ = ["KeyRing", "KeyState", "RelayKey", "RpmWindow"]

#: rpm is counted over a sliding window of this length.
WINDOW_S = 60.0
#: a key at its concurrency limit is free again as soon as one request ends.
RETRY_AFTER_CONCURRENT_S = 1


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


@dataclass(slots=True)
class KeyState:
    """A key's live counters; shared by the old and new RelayKey across a SIGHUP reload."""

    rpm: RpmWindow | None = None
    in_flight: int = 0
    requests: int = 0
    #: rejection reason → count, for /metrics.
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RelayKey:
    """A configured key and its live limit state."""

    spec: KeySpec
    state: KeyState = field(default_factory=KeyState)

    @property
    def name(self) -> str:
        return self.spec.name

    def allows_model(self, model: str) -> bool:
        return self.spec.models is None or model in self.spec.models

    def check_model(self, model: str) -> None:
        """403 ``model_not_allowed`` when this key may not use ``model``."""
        if not self.allows_model(model):
            self._reject("model_not_allowed")
            raise ModelNotAllowed(f"This API key may not use the model `{model}`.", param="model")

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request against rpm and hold a concurrency slot for the block."""
        limit = self.spec.max_concurrent
        state = self.state
        if limit is not None and state.in_flight >= limit:
            self._reject("max_concurrent")
            raise KeyRateLimited(f"This API key has {limit} requests in flight, its limit; retry shortly.",
                                 retry_after_s=RETRY_AFTER_CONCURRENT_S)
        if state.rpm is not None:
            wait_s = state.rpm.admit()
            if wait_s is not None:
                self._reject("rpm")
                raise KeyRateLimited(f"This API key is limited to {state.rpm.limit} requests per minute.",
                                     retry_after_s=max(1, math.ceil(wait_s)))
        state.requests += 1
        state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1

    def _reject(self, reason: str) -> None:
        self.state.rejected[reason] = self.state.rejected.get(reason, 0) + 1


class KeyRing:
    """The configured keys; ``find`` matches a presented key in constant time."""

    def __init__(self, specs: tuple[KeySpec, ...] = (), previous: KeyRing | None = None) -> None:
        kept = {key.name: key for key in previous.keys} if previous is not None else {}
        self.keys: tuple[RelayKey, ...] = tuple(_carry(spec, kept.get(spec.name)) for spec in specs)

    def find(self, presented: str) -> RelayKey | None:
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found = None
        for key in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, key.spec.digest):
                found = key
        return found


def _carry(spec: KeySpec, old: RelayKey | None) -> RelayKey:
    """A key for ``spec``; a reload keeps the live state of a key whose name it keeps."""
    state = old.state if old is not None else KeyState()
    if spec.rpm is None:
        state.rpm = None
    elif state.rpm is None or state.rpm.limit != spec.rpm:
        state.rpm = RpmWindow(spec.rpm)
    return RelayKey(spec, state)
