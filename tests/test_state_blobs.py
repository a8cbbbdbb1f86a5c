"""The state backends' blob API and the response store on it (issue 18: stored /v1/responses answers).

Memory keeps blobs for their TTL, at most ``MAX_MEMORY_BLOBS`` of them and
``MAX_MEMORY_BLOB_BYTES`` in all, the oldest going first; Redis shares them
between relays (tests/integration/test_responses_api.py runs two relays on one
Redis). A response is readable by its owner only, and one too large is not kept.
"""

from __future__ import annotations

import pytest

from relay.operator.auth import Caller
from relay.state import base
from relay.state.base import MemoryState
from relay.surfaces.responses.store import ResponseStore, owner_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_blob_lives_for_its_ttl() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    await state.put_blob("a", b"one", 10)
    assert await state.get_blob("a") == b"one"
    clock.now += 9.9
    assert await state.get_blob("a") == b"one"
    clock.now += 0.2
    assert await state.get_blob("a") is None
    await state.put_blob("b", b"two", 0)  # no TTL: nothing kept
    assert await state.get_blob("b") is None


async def test_memory_keeps_at_most_max_blobs_the_oldest_going_first() -> None:
    state = MemoryState()
    for index in range(base.MAX_MEMORY_BLOBS + 2):
        await state.put_blob(f"k{index}", b"x", 60)
    assert await state.get_blob("k0") is None and await state.get_blob("k1") is None
    assert await state.get_blob("k2") == b"x"
    assert await state.get_blob(f"k{base.MAX_MEMORY_BLOBS + 1}") == b"x"


async def test_memory_keeps_at_most_max_blob_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MAX_MEMORY_BLOB_BYTES", 10)
    state = MemoryState()
    await state.put_blob("a", b"12345", 60)
    await state.put_blob("b", b"12345", 60)
    await state.put_blob("a", b"123", 60)  # replaced: its old bytes no longer count
    assert (await state.get_blob("a"), await state.get_blob("b")) == (b"123", b"12345")
    await state.put_blob("c", b"1234", 60)  # 12 bytes: the oldest (b) goes
    assert (await state.get_blob("b"), await state.get_blob("a"), await state.get_blob("c")) == (None, b"123", b"1234")


async def test_a_stored_response_is_its_owners_only() -> None:
    store = ResponseStore(MemoryState(), ttl_s=60)
    alice, bob = owner_of(Caller(token="alice-token")), owner_of(Caller(token="bob-token"))
    assert alice.startswith("token:") and "alice-token" not in alice
    response = {"id": "resp_1", "output": [{"type": "message", "content": []}]}
    assert await store.save(alice, [{"type": "message", "role": "user", "content": "hi"}], response)
    record = await store.load("resp_1", alice)
    assert record is not None and record.response == response
    assert record.conversation == [{"type": "message", "role": "user", "content": "hi"}, *response["output"]]
    assert await store.load("resp_1", bob) is None
    assert await store.load("resp_2", alice) is None


async def test_a_response_over_the_size_bound_or_with_ttl_zero_is_not_kept() -> None:
    big = ResponseStore(MemoryState(), ttl_s=60, max_bytes=100)
    assert not await big.save("key:a", [{"text": "x" * 200}], {"id": "resp_big", "output": []})
    assert await big.load("resp_big", "key:a") is None
    off = ResponseStore(MemoryState(), ttl_s=0)
    assert not await off.save("key:a", [], {"id": "resp_off", "output": []})
    assert await off.load("resp_off", "key:a") is None
