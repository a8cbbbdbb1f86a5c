"""The translation cache's parts without a server: the LRU, keys, single flight (issue "Translation plugins first" §3).

The LRU is plain data (a fake clock is the only stand-in); ``ItemCache`` runs on
the real memory store; ``translate_texts`` meets a fake model at the network edge.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.dialects import ChatOptions, Completion
from relay.openai_wire import ChatRequest
from relay.translate import TranslateLimits, parse_language, translate_texts
from relay.translate.cache import ItemCache, LruCache, MemoryTranslationCache, entry_bytes, item_key
from relay.translate.languages import Language


def _language(code: str) -> Language:
    language = parse_language(code, param="to", allow_auto=False)
    assert language is not None
    return language


FRENCH, GERMAN = _language("fr"), _language("de")
OPTIONS = ChatOptions(upstream_model="qwen-turbo-latest", thinking=False)
LIMITS = TranslateLimits(max_items=40, max_prompt_bytes=100_000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _key(number: int) -> bytes:
    return number.to_bytes(32, "big")


# --- the LRU ------------------------------------------------------------------------------------------------

operations = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 15), st.binary(max_size=60)),
                      max_size=80)


@settings(max_examples=300)
@given(operations, st.integers(min_value=0, max_value=400))
def test_the_lru_never_holds_more_than_its_bound(ops: list[tuple[str, int, bytes]], bound: int) -> None:
    """Whatever the sequence of puts and gets, the counted bytes stay within the bound and add up."""
    lru = LruCache(bound, ttl_s=60, clock=Clock())
    for op, number, value in ops:
        if op == "put":
            lru.put(_key(number), value)
        else:
            lru.get(_key(number))
        assert lru.bytes <= bound
        live = [(key, entry[0]) for key, entry in lru._entries.items()]
        assert lru.bytes == sum(entry_bytes(key, value) for key, value in live)


@settings(max_examples=300)
@given(operations, st.integers(min_value=92, max_value=400))
def test_the_lru_keeps_the_most_recently_used_entry(ops: list[tuple[str, int, bytes]], bound: int) -> None:
    """After any put or hit, that entry is still there (it fits: 32 + 60 <= bound), with its latest value."""
    lru = LruCache(bound, ttl_s=60, clock=Clock())
    latest: dict[int, bytes] = {}
    for op, number, value in ops:
        if op == "put":
            lru.put(_key(number), value)
            latest[number] = value
            assert lru.get(_key(number)) == value
        elif lru.get(_key(number)) is not None:
            assert list(lru._entries)[-1] == _key(number)
            assert lru.get(_key(number)) == latest[number]


def test_the_least_recently_used_entry_goes_first() -> None:
    lru = LruCache(3 * entry_bytes(_key(0), b"x" * 10), ttl_s=60, clock=Clock())
    for number in (1, 2, 3):
        lru.put(_key(number), b"x" * 10)
    assert lru.get(_key(1)) is not None  # 1 is now the most recent: 2 is the coldest
    lru.put(_key(4), b"x" * 10)
    assert (_key(2) in lru, _key(1) in lru, _key(3) in lru, _key(4) in lru) == (False, True, True, True)
    assert lru.evictions == 1


def test_an_entry_larger_than_the_bound_is_not_kept_and_evicts_nothing() -> None:
    lru = LruCache(100, ttl_s=60, clock=Clock())
    lru.put(_key(1), b"small")
    lru.put(_key(2), b"x" * 100)
    assert _key(1) in lru and _key(2) not in lru and lru.evictions == 0


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    lru = LruCache(1000, ttl_s=10, clock=clock)
    lru.put(_key(1), b"value")
    clock.now = 9.9
    assert lru.get(_key(1)) == b"value"  # reading does not extend the deadline
    clock.now = 10.0
    assert lru.get(_key(1)) is None and len(lru) == 0 and lru.bytes == 0 and lru.evictions == 0


# --- keys -----------------------------------------------------------------------------------------------------

@given(st.text(max_size=50))
def test_a_key_is_a_digest_of_every_field(text: str) -> None:
    key = item_key("qwen-max", None, FRENCH, text)
    assert len(key) == 32  # a fixed-size digest: the text never travels in a key name
    assert key == item_key("qwen-max", None, FRENCH, text)
    assert len({key, item_key("qwen-plus", None, FRENCH, text), item_key("qwen-max", None, GERMAN, text),
                item_key("qwen-max", GERMAN, FRENCH, text), item_key("qwen-max", None, FRENCH, text + " ")}) == 5


def test_the_prompt_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = item_key("m", None, FRENCH, "Hello")
    monkeypatch.setattr("relay.translate.cache.PROMPT_VERSION", 10**6)
    assert item_key("m", None, FRENCH, "Hello") != before


# --- the service with a cache ---------------------------------------------------------------------------------

class SlowModel:
    """Answers ``[FR] text`` per key after ``delay_s``, or once ``release`` is set; records the texts of each call.

    ``called`` is set by the first call: a test waits on it, not on a guessed time.
    """

    def __init__(self, delay_s: float = 0.0, release: asyncio.Event | None = None) -> None:
        self.delay_s = delay_s
        self.release = release
        self.calls: list[list[str]] = []
        self.called = asyncio.Event()

    async def __call__(self, chat: ChatRequest, options: ChatOptions) -> Completion:
        prompt = chat.messages[0]["content"]
        items = json.loads(prompt[prompt.rindex('{\n "1"'):])
        self.calls.append(list(items.values()))
        self.called.set()
        if self.release is not None:
            await self.release.wait()
        else:
            await asyncio.sleep(self.delay_s)
        return Completion(json.dumps({key: f"[FR] {text.strip()}" for key, text in items.items()}), "", "stop", None)


def _cache() -> ItemCache:
    return ItemCache(MemoryTranslationCache(1 << 20, ttl_s=60))


async def test_only_the_texts_not_cached_go_upstream_and_duplicates_once() -> None:
    cache, model = _cache(), SlowModel()
    first = await translate_texts(["One", "Two"], target=FRENCH, source=None, options=OPTIONS, exchange=model,
                                  limits=LIMITS, cache=cache)
    second = await translate_texts(["One", "Three", "Two ", "Three", ""], target=FRENCH, source=None,
                                   options=OPTIONS, exchange=model, limits=LIMITS, cache=cache)
    assert first == ["[FR] One", "[FR] Two"]
    assert second == ["[FR] One", "[FR] Three", "[FR] Two ", "[FR] Three", ""]
    assert model.calls == [["One", "Two"], ["Three", "Two "]]
    assert (cache.hits, cache.misses) == (1, 5)  # "One" hit; "Two", "One", "Three", "Two ", "Three" missed


async def test_concurrent_identical_items_share_one_flight_and_a_failed_leader_hands_over() -> None:
    cache, model = _cache(), SlowModel(delay_s=0.05)
    results = await asyncio.gather(*(translate_texts(["Same"], target=FRENCH, source=None, options=OPTIONS,
                                                     exchange=model, limits=LIMITS, cache=cache)
                                     for _ in range(20)))
    assert results == [["[FR] Same"]] * 20 and model.calls == [["Same"]] and cache.in_flight == 0

    # Then: the leader is held inside its upstream call, the follower has joined its
    # flight, and the leader goes. Each step waits for the one before (issue 21: these
    # were 10 ms sleeps, lost on a loaded machine).
    held = SlowModel(release=asyncio.Event())
    leader = asyncio.create_task(translate_texts(["Left"], target=FRENCH, source=None, options=OPTIONS,
                                                 exchange=held, limits=LIMITS, cache=cache))
    async with asyncio.timeout(5):
        await held.called.wait()
    looked_up = cache.misses
    follower = asyncio.create_task(translate_texts(["Left"], target=FRENCH, source=None, options=OPTIONS,
                                                   exchange=held, limits=LIMITS, cache=cache))
    for _ in range(1000):  # a few loop iterations: the follower's lookup, then its join, in one step
        if cache.misses > looked_up:
            break
        await asyncio.sleep(0)
    assert cache.misses == looked_up + 1 and cache.in_flight == 1, "the follower never joined the flight"
    leader.cancel()  # its client went away: the follower asks on its own
    with pytest.raises(asyncio.CancelledError):
        await leader
    held.release.set()
    assert await follower == ["[FR] Left"]
    assert held.calls == [["Left"], ["Left"]] and cache.in_flight == 0
