"""Relay API keys: who the caller is, and the per-key limits it is held to.

A presented key is hashed once and compared with ``hmac.compare_digest``
against every configured digest, without stopping at a match, so the time taken
says nothing about which key (or how much of one) was right. Limits live in
the state backend (``--state``): in memory they hold per relay process, in
Redis across every worker and host sharing it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..errors import KeyRateLimited, ModelNotAllowed
from ..state import RpmWindow, StateBackend
from .config import KeySpec

__all__ = ["KeyRing", "KeyState", "RelayKey", "RpmWindow"]  # RpmWindow: moved to state, kept here

#: a key at its concurrency limit is free again as soon as one request ends.
RETRY_AFTER_CONCURRENT_S = 1


@dataclass(slots=True)
class KeyState:
    """A key's counters in this process (for /metrics); kept across a SIGHUP reload.

    The limits themselves are enforced by the state backend, keyed by name.
    """

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

    @asynccontextmanager
    async def admit(self, state: StateBackend) -> AsyncIterator[None]:
        """Count one request against rpm and hold a concurrency slot for the block."""
        spec = self.spec
        admission = await state.admit(spec.name, spec.rpm, spec.max_concurrent)
        if admission.rejected == "max_concurrent":
            self._reject("max_concurrent")
            raise KeyRateLimited(f"This API key has {spec.max_concurrent} requests in flight, its limit; "
                                 "retry shortly.", retry_after_s=RETRY_AFTER_CONCURRENT_S)
        if admission.rejected == "rpm":
            self._reject("rpm")
            raise KeyRateLimited(f"This API key is limited to {spec.rpm} requests per minute.",
                                 retry_after_s=max(1, math.ceil(admission.retry_after_s)))
        counters = self.state
        counters.requests += 1
        counters.in_flight += 1
        try:
            yield
        finally:
            counters.in_flight -= 1
            if admission.lease is not None:
                await state.release(admission.lease)

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
    return RelayKey(spec, old.state if old is not None else KeyState())
