"""The per-token model list cache: TTL, single-flight, keyed by a hash.

Each token gets its own entry because the upstream decides per account which
models it offers, and one token's list must never be served to a caller whose
token the upstream has not accepted. Keys are SHA-256 digests, so the cache
never holds a token. Concurrent misses for one key share one upstream call,
run as its own task so that a client leaving does not cancel it for the others.

With a shared state backend (``--state redis://…``) a miss here first looks in
the shared store, and a list fetched upstream is stored there with the TTL: the
fleet fetches a list about once per TTL (two relays missing at the same moment
may both fetch; nothing worse). The store holds the upstream's list, keyed by
the token's SHA-256, never the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .dialects.common import model_variants, models_that_must_think
from .jsonio import dumps, loads
from .openai_wire import model_list
from .state import MemoryState, StateBackend

__all__ = ["CachedModels", "ModelsCache"]

#: distinct tokens remembered at once; the oldest entry goes first beyond it.
MAX_ENTRIES = 10_000


@dataclass(slots=True)
class CachedModels:
    ids: frozenset[str]
    body: bytes
    expires_at: float
    #: synthetic ids (``-thinking``, ``-search``) → (base id, thinking, search).
    variants: dict[str, tuple[str, bool, bool]] = field(default_factory=dict)
    #: models that cannot skip thinking (``info.meta.think_skip.enable: false``, §7.3).
    must_think: frozenset[str] = frozenset()
    #: compressed variants of ``body`` by content coding, filled on first use.
    encoded: dict[str, bytes] = field(default_factory=dict)


Fetch = Callable[[str], Awaitable[list[dict[str, Any]]]]


class ModelsCache:
    def __init__(self, fetch: Fetch, ttl_s: float, max_entries: int = MAX_ENTRIES,
                 state: StateBackend | None = None) -> None:
        self._fetch = fetch
        self._state: StateBackend = state if state is not None else MemoryState()
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[bytes, CachedModels] = {}
        self._inflight: dict[bytes, asyncio.Task[CachedModels]] = {}
        self.upstream_calls = 0

    def peek(self, token: str) -> CachedModels | None:
        """The token's models if cached and fresh, else None: a hit needs no coroutine."""
        return self._fresh(_key(token))

    async def get(self, token: str) -> CachedModels:
        """The token's models, from the cache or one shared upstream call."""
        key = _key(token)
        entry = self._fresh(key)
        if entry is not None:
            return entry
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key, token))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    def _fresh(self, key: bytes) -> CachedModels | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry.expires_at > time.monotonic() else None

    async def _load(self, key: bytes, token: str) -> CachedModels:
        ttl_s = self._ttl_s
        shared = await self._state.load_models(key.hex()) if ttl_s > 0 else None
        if shared is not None:
            payload, ttl_s = shared
            models: list[dict[str, Any]] = loads(payload)
        else:
            self.upstream_calls += 1
            models = await self._fetch(token)
            if ttl_s > 0:
                # ASCII-escaped by the stdlib: once per TTL, and every string round-trips exactly.
                stored = json.dumps(models, separators=(",", ":")).encode()
                await self._state.store_models(key.hex(), stored, ttl_s)
        created = int(time.time())
        variants = model_variants(models)
        names = {m["id"]: m.get("name") for m in models}
        synthetic = [{"id": variant, "name": _variant_name(names.get(base), base, thinking, search)}
                     for variant, (base, thinking, search) in variants.items()]
        listing = model_list([*models, *synthetic], created)
        entry = CachedModels(
            ids=frozenset(item["id"] for item in listing["data"]),
            body=dumps(listing),
            expires_at=time.monotonic() + ttl_s,
            variants=variants,
            must_think=models_that_must_think(models),
        )
        if self._ttl_s > 0:
            self._entries.pop(key, None)
            self._entries[key] = entry
            while len(self._entries) > self._max_entries:
                del self._entries[next(iter(self._entries))]
        return entry

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        self._entries.clear()


def _variant_name(name: object, base: str, thinking: bool, search: bool) -> str:
    switches = " + ".join(part for part, on in (("thinking", thinking), ("search", search)) if on)
    return f"{name if isinstance(name, str) else base} ({switches})"


def _key(token: str) -> bytes:
    """The cache key: the token's SHA-256, so the cache never holds a token."""
    return hashlib.sha256(token.encode()).digest()
