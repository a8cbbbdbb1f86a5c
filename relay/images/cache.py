"""Uploads re-used per (account, SHA-256 of the bytes), for ``--upload-cache-ttl``; one upload in flight per key.

Coding agents resend the same screenshot with every turn of a conversation, and
qwen-v2 resends the whole conversation each time: without this cache each turn
would upload every earlier image again (two round trips and the bytes, each).

Keys are never shared across accounts: an uploaded object lives under its
account's user id (``<user_id>/<file_id>_<name>``, QWEN_IMAGES.md §1.2) and
the completion is checked against that user, so another account's file id is
useless to it, and a leak of what another account uploaded. The account part of
the key is an account's name, or the SHA-256 of a bare token (``account_key``).

Concurrency: the first request for a key starts the upload as a task of its own;
identical requests meanwhile wait on that task (``asyncio.shield``), so a waiter
that leaves (its client disconnected) neither cancels the upload for the others
nor is kept waiting. A failed upload is not cached: the next request tries anew.

Bounded: at most ``max_entries`` (expired entries go first, then the oldest).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..accounts.credential import Credential

__all__ = ["DEFAULT_MAX_ENTRIES", "UploadCache", "account_key"]

V = TypeVar("V")
#: entries of a few hundred bytes each: 10,000 is a few MB, a busy hour of screenshots.
DEFAULT_MAX_ENTRIES = 10_000
Key = tuple[str, str]


def account_key(credential: Credential) -> str:
    """Who owns an upload: the account's name (its token rotates), else a hash of the bare token."""
    if credential.is_account:
        return "account:" + credential.label
    return "token:" + hashlib.sha256(credential.token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float


class UploadCache(Generic[V]):
    """``(account, sha256) → value`` for ``ttl_s`` seconds, with single flight per key."""

    def __init__(self, ttl_s: float, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[Key, _Entry[V]] = {}
        self._flights: dict[Key, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Key) -> V | None:
        """The live cached value of ``key``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry.value

    async def get_or_create(self, key: Key, create: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The value of ``key`` and whether it was re-used (cached, or another request's upload)."""
        cached = self.peek(key)
        if cached is not None:
            return cached, True
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = self._flights[key] = asyncio.get_running_loop().create_task(self._run(key, create))
            flight.add_done_callback(_retrieve)
        return await asyncio.shield(flight), joined

    async def _run(self, key: Key, create: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await create()
            if self._ttl_s > 0:
                self._store(key, value)
            return value
        finally:
            self._flights.pop(key, None)

    def _store(self, key: Key, value: V) -> None:
        now = self._clock()
        if len(self._entries) >= self._max_entries:
            for old in [k for k, entry in self._entries.items() if entry.expires_at <= now]:
                del self._entries[old]
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries.pop(key, None)
        self._entries[key] = _Entry(value, now + self._ttl_s)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a failed upload's error as seen when every waiter had already left (no asyncio warning)."""
    if not task.cancelled():
        task.exception()
