"""Token pool choice, disabling and cool-down; relay-key lookup and limits (issue 9)."""

from __future__ import annotations

import pytest

from relay.errors import KeyRateLimited, ModelNotAllowed, PoolExhausted
from relay.operator import KeyRing, Secret, TokenPool, hash_key
from relay.operator.config import KeySpec
from relay.operator.keys import RpmWindow
from relay.operator.pool import fingerprint
from relay.state import MemoryState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(*tokens: str, clock: Clock | None = None) -> TokenPool:
    return TokenPool(tuple(Secret(token) for token in tokens), clock=clock or Clock())


def spec(key: str, name: str = "k", **limits: object) -> KeySpec:
    return KeySpec(name=name, digest=bytes.fromhex(hash_key(key)[7:]), **limits)  # type: ignore[arg-type]


def test_sequential_leases_go_round_robin() -> None:
    pool = pool_of("a", "b", "c")
    chosen = []
    for _ in range(9):
        with pool.acquire() as entry:
            chosen.append(entry.token)
    assert chosen == ["a", "b", "c"] * 3


def test_least_in_flight_wins_over_round_robin() -> None:
    pool = pool_of("a", "b", "c")
    with pool.acquire() as first, pool.acquire() as second:
        assert (first.token, second.token) == ("a", "b")
        with pool.acquire() as third:
            assert third.token == "c"
            with pool.acquire() as fourth:  # all at 1: round robin continues at a
                assert fourth.token == "a"
    assert [entry.in_flight for entry in pool.tokens] == [0, 0, 0]


def test_disabled_token_leaves_rotation_and_all_out_is_503() -> None:
    pool = pool_of("a", "b")
    pool.disable(pool.tokens[0], "upstream_401")
    for _ in range(3):
        with pool.acquire() as entry:
            assert entry.token == "b"
    pool.disable(pool.tokens[1], "upstream_401")
    with pytest.raises(PoolExhausted) as info, pool.acquire():
        pass
    assert info.value.http_status == 503 and info.value.envelope()["error"]["code"] == "no_upstream_token"
    assert info.value.retry_after_s is None


def test_cooling_token_returns_after_its_retry_after() -> None:
    clock = Clock()
    pool = pool_of("a", "b", clock=clock)
    pool.cool_down(pool.tokens[0], 30)
    assert pool.tokens[0].state(clock.now) == "cooling"
    with pool.acquire() as entry:
        assert entry.token == "b"
    pool.cool_down(pool.tokens[1], None)  # no Retry-After: the default 60 s
    with pytest.raises(PoolExhausted) as info, pool.acquire():
        pass
    assert info.value.retry_after_s == 30
    clock.now += 30.5
    with pool.acquire() as entry:
        assert entry.token == "a"


def test_reload_keeps_state_of_kept_tokens() -> None:
    pool = pool_of("a", "b")
    pool.disable(pool.tokens[0], "upstream_401")
    pool.update((Secret("a"), Secret("c")))
    assert [(entry.token, entry.disabled) for entry in pool.tokens] == [("a", "upstream_401"), ("c", None)]


def test_fingerprint_is_short_and_not_the_token() -> None:
    assert len(fingerprint("secret-token")) == 8 and "secret" not in fingerprint("secret-token")
    assert "secret-token" not in repr(pool_of("secret-token").tokens)


def test_key_ring_finds_only_the_configured_key() -> None:
    ring = KeyRing((spec("sk-a", "a"), spec("sk-b", "b")))
    found = ring.find("sk-b")
    assert found is not None and found.name == "b"
    assert ring.find("sk-c") is None and ring.find("") is None


def test_rpm_window_slides() -> None:
    clock = Clock()
    window = RpmWindow(2, clock=clock)
    assert window.admit() is None
    clock.now += 10
    assert window.admit() is None
    assert window.admit() == pytest.approx(50)
    clock.now += 50
    assert window.admit() is None  # the first left the window
    assert window.admit() == pytest.approx(10)


async def test_key_limits_reject_with_openai_errors() -> None:
    (key,) = KeyRing((spec("sk-a", "a", rpm=3, max_concurrent=2, models=frozenset({"m"})),)).keys
    state = MemoryState()
    with pytest.raises(ModelNotAllowed):
        key.check_model("other")
    key.check_model("m")
    async with key.admit(state), key.admit(state):
        with pytest.raises(KeyRateLimited) as busy:
            async with key.admit(state):
                pass
        assert busy.value.retry_after_s == 1
    async with key.admit(state):
        pass
    with pytest.raises(KeyRateLimited) as rpm:
        async with key.admit(state):
            pass
    assert rpm.value.http_status == 429 and rpm.value.envelope()["error"]["code"] == "rate_limit_exceeded"
    assert rpm.value.retry_after_s is not None and rpm.value.retry_after_s >= 59
    assert key.state.rejected == {"model_not_allowed": 1, "max_concurrent": 1, "rpm": 1}
    assert (key.state.requests, key.state.in_flight) == (3, 0)


async def test_reload_keeps_live_state_of_a_kept_key_name() -> None:
    old = KeyRing((spec("sk-a", "a", max_concurrent=1),))
    (old_key,) = old.keys
    state = MemoryState()  # limits are kept by name in the backend, which a reload never swaps
    async with old_key.admit(state):
        new = KeyRing((spec("sk-a2", "a", max_concurrent=1), spec("sk-b", "b")), previous=old)
        new_key = new.find("sk-a2")
        assert new_key is not None and new_key.state.in_flight == 1
        with pytest.raises(KeyRateLimited):
            async with new_key.admit(state):
                pass
    assert new_key.state.in_flight == 0
    assert new.find("sk-a") is None
