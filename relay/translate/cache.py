"""The translation cache: one translated text per key, in memory or in the fleet's Redis.

Strategy. Translation plugins send the same paragraphs again and again (a page
reloaded, the same menu on every page of a site), so each *item* is cached, not
each request: a request whose texts are partly known sends only the others
upstream. An item's key is the SHA-256 of (prompt version, model, source
language, target language, text), so a new prompt (``prompt.PROMPT_VERSION``) or
another model never serves an old answer, and no text ever appears in a Redis
key name.

Three layers, each small:

- ``LruCache``: pure and synchronous, bounded by bytes (a key's 32 bytes plus
  the translation's UTF-8 bytes; Python's own per-entry overhead comes on top
  and is not counted), least recently used out first, each entry with a deadline.
- ``TranslationCache``: where items live, ``MemoryTranslationCache`` (an
  ``LruCache`` in this process) or ``RedisTranslationCache`` (the state
  backend's client: one MGET to read, one pipeline of SETs with PX to write,
  failing open as every Redis call does, so Redis down means cache misses).
- ``ItemCache``: what ``service`` talks to. It counts hits and misses and
  shares identical items in flight: the first request to miss an item leads
  it upstream, later ones wait for its answer instead of asking again (within
  one process; across processes Redis only shares finished translations).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .languages import Language
from .prompt import PROMPT_VERSION

__all__ = ["MIB", "ItemCache", "LruCache", "MemoryTranslationCache", "RedisTranslationCache", "TranslationCache",
           "TranslationStore", "entry_bytes", "item_key", "open_translation_cache"]

#: ``--translation-cache-mb`` counts MiB.
MIB = 1024 * 1024


def item_key(model: str, source: Language | None, target: Language, text: str) -> bytes:
    """The SHA-256 of (prompt version, model, source, target, text): an item's cache key.

    JSON of the tuple, so no two tuples share an encoding (a text holding a separator
    cannot pass for another field).
    """
    fields = [PROMPT_VERSION, model, source.tag if source is not None else "auto", target.tag, text]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")).digest()


def entry_bytes(key: bytes, value: bytes) -> int:
    """What one entry counts against the bound: its key's and its value's bytes."""
    return len(key) + len(value)


class LruCache:
    """Byte-bounded least-recently-used map with one time to live for every entry.

    ``bytes`` never exceeds ``max_bytes``: a put evicts from the cold end until the
    new entry fits, and an entry larger than the whole bound is not kept at all.
    Expired entries leave when they are next read or pushed out; they are not
    evictions (``evictions`` counts what the bound pushed out).
    """

    __slots__ = ("_clock", "_entries", "bytes", "evictions", "max_bytes", "ttl_s")

    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[bytes, float]] = collections.OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[key]
            self.bytes -= entry_bytes(key, value)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= entry_bytes(key, old[0])
        size = entry_bytes(key, value)
        if size > self.max_bytes:
            return  # it would push out everything and still not fit
        while self._entries and self.bytes + size > self.max_bytes:
            cold, (cold_value, _) = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(cold, cold_value)
            self.evictions += 1
        self._entries[key] = (value, self._clock() + self.ttl_s)
        self.bytes += size


class TranslationCache(Protocol):
    """Where finished translations live, by ``item_key``."""

    #: "memory" or "redis".
    name: str

    async def load(self, keys: Sequence[bytes]) -> list[str | None]:
        """The translation under each key, None where there is none (or the store is down)."""

    async def store(self, items: Sequence[tuple[bytes, str]]) -> None: ...

    def render_metrics(self) -> list[str]: ...


class MemoryTranslationCache:
    """This process's ``LruCache``: UTF-8 bytes, so the bound counts what is really kept."""

    name = "memory"

    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lru = LruCache(max_bytes, ttl_s, clock)

    async def load(self, keys: Sequence[bytes]) -> list[str | None]:
        values = [self.lru.get(key) for key in keys]
        return [value.decode("utf-8", "surrogatepass") if value is not None else None for value in values]

    async def store(self, items: Sequence[tuple[bytes, str]]) -> None:
        for key, text in items:
            self.lru.put(key, text.encode("utf-8", "surrogatepass"))

    def render_metrics(self) -> list[str]:
        lru = self.lru
        return [
            "# HELP qwen_relay_translation_cache_items Translations in the memory cache.",
            "# TYPE qwen_relay_translation_cache_items gauge", f"qwen_relay_translation_cache_items {len(lru)}",
            ("# HELP qwen_relay_translation_cache_bytes Bytes the memory cache counts against "
             "--translation-cache-mb (keys and translations)."),
            "# TYPE qwen_relay_translation_cache_bytes gauge", f"qwen_relay_translation_cache_bytes {lru.bytes}",
            "# HELP qwen_relay_translation_cache_evictions_total Translations pushed out by the size bound.",
            "# TYPE qwen_relay_translation_cache_evictions_total counter",
            f"qwen_relay_translation_cache_evictions_total {lru.evictions}",
        ]


@runtime_checkable
class TranslationStore(Protocol):
    """What ``RedisTranslationCache`` needs of the state backend (``RedisState`` has it)."""

    async def load_translations(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def store_translations(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None: ...


class RedisTranslationCache:
    """The fleet's cache in ``--state``'s Redis: every relay reads what any relay stored.

    Size and eviction are Redis' own (its ``maxmemory`` policy, and the TTL), so the
    items, bytes and evictions series exist only for the memory cache.
    """

    name = "redis"

    def __init__(self, state: TranslationStore, ttl_s: float) -> None:
        self._state = state
        self._ttl_s = ttl_s

    async def load(self, keys: Sequence[bytes]) -> list[str | None]:
        values = await self._state.load_translations([key.hex() for key in keys])
        return [_decode(value) if value is not None else None for value in values]

    async def store(self, items: Sequence[tuple[bytes, str]]) -> None:
        await self._state.store_translations(
            [(key.hex(), text.encode("utf-8", "surrogatepass")) for key, text in items], self._ttl_s)

    def render_metrics(self) -> list[str]:
        return []


def _decode(value: bytes) -> str | None:
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None  # not ours: a miss, and the next store overwrites it


class ItemCache:
    """A ``TranslationCache`` with hit/miss counters and single flight per item.

    A miss is any item not found in the store: it goes upstream, or waits for an
    identical item another request is already translating (``join``). A leader
    must end each key it leads with ``settle`` (translated) or ``abandon``
    (failed, cancelled); followers then get the translation, or None and ask
    themselves.
    """

    def __init__(self, store: TranslationCache) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0
        self._flights: dict[bytes, asyncio.Future[str | None]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def lookup(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """The stored translations of ``keys`` (each asked once); counts a hit or miss per key given."""
        unique = list(dict.fromkeys(keys))
        loaded = await self.store.load(unique)
        found = {key: text for key, text in zip(unique, loaded, strict=True) if text is not None}
        hits = sum(1 for key in keys if key in found)
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def join(self, key: bytes) -> asyncio.Future[str | None] | None:
        """The flight translating ``key``; or None, and the caller now leads it."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    async def settle(self, translations: dict[bytes, str]) -> None:
        """Store translations, then hand them to whoever waits (stored first: no gap for a newcomer)."""
        await self.store.store(list(translations.items()))
        for key, text in translations.items():
            flight = self._flights.pop(key, None)
            if flight is not None and not flight.done():
                flight.set_result(text)

    def abandon(self, keys: Sequence[bytes]) -> None:
        """Release keys led but not settled: their followers translate them themselves."""
        for key in keys:
            flight = self._flights.pop(key, None)
            if flight is not None and not flight.done():
                flight.set_result(None)

    def render_metrics(self) -> list[str]:
        return [
            "# HELP qwen_relay_translation_cache_hits_total Translation items answered from the cache.",
            "# TYPE qwen_relay_translation_cache_hits_total counter",
            f"qwen_relay_translation_cache_hits_total {self.hits}",
            ("# HELP qwen_relay_translation_cache_misses_total Translation items not in the cache (sent "
             "upstream, or shared with an identical item in flight)."),
            "# TYPE qwen_relay_translation_cache_misses_total counter",
            f"qwen_relay_translation_cache_misses_total {self.misses}",
            *self.store.render_metrics(),
        ]


def open_translation_cache(mode: str, *, ttl_s: float, max_mb: float, state: object) -> ItemCache | None:
    """The cache ``--translation-cache`` names; None for ``off``. ``state`` is the ``--state`` backend."""
    if mode == "off":
        return None
    if mode == "redis":
        if not isinstance(state, TranslationStore):  # Config refuses this first; a guard for other callers
            raise ValueError("--translation-cache redis needs --state redis://…")
        return ItemCache(RedisTranslationCache(state, ttl_s))
    return ItemCache(MemoryTranslationCache(max(1, int(max_mb * MIB)), ttl_s))
