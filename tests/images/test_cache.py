"""The upload cache: per (account, sha256), for the TTL, one upload in flight per key (issue 20 §2)."""

from __future__ import annotations

import asyncio

import pytest

from relay.accounts.credential import CookieJar, Credential
from relay.images.cache import UploadCache, account_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_value_is_reused_within_the_ttl_and_made_again_after() -> None:
    clock = Clock()
    cache: UploadCache[str] = UploadCache(600, clock=clock)
    made: list[int] = []

    async def create() -> str:
        made.append(1)
        return f"upload-{len(made)}"

    assert await cache.get_or_create(("a", "h"), create) == ("upload-1", False)
    clock.now += 599
    assert await cache.get_or_create(("a", "h"), create) == ("upload-1", True)
    clock.now += 2
    assert await cache.get_or_create(("a", "h"), create) == ("upload-2", False)
    assert await cache.get_or_create(("b", "h"), create) == ("upload-3", False), "another account: its own"


async def test_identical_uploads_in_flight_share_one_and_a_leaving_waiter_does_not_cancel_it() -> None:
    cache: UploadCache[str] = UploadCache(600)
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def create() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "shared"

    first = asyncio.create_task(cache.get_or_create(("a", "h"), create))
    await started.wait()
    leaving = asyncio.create_task(cache.get_or_create(("a", "h"), create))
    staying = asyncio.create_task(cache.get_or_create(("a", "h"), create))
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    assert await first == ("shared", False)
    assert await staying == ("shared", True)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert calls == 1


async def test_a_failed_upload_is_not_cached() -> None:
    cache: UploadCache[str] = UploadCache(600)
    attempts = 0

    async def create() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("OSS said no")
        return "second"

    with pytest.raises(RuntimeError):
        await cache.get_or_create(("a", "h"), create)
    assert await cache.get_or_create(("a", "h"), create) == ("second", False)


async def test_the_cache_is_bounded() -> None:
    cache: UploadCache[int] = UploadCache(600, max_entries=3)
    for n in range(5):
        async def create(value: int = n) -> int:
            return value
        await cache.get_or_create(("a", str(n)), create)
    assert len(cache) == 3 and cache.peek(("a", "0")) is None and cache.peek(("a", "4")) == 4


def test_accounts_are_keyed_by_name_and_bare_tokens_by_their_whole_hash() -> None:
    account = Credential("alice", CookieJar({"token": "t1"}), is_account=True)
    rotated = Credential("alice", CookieJar({"token": "t2"}), is_account=True)
    assert account_key(account) == account_key(rotated) == "account:alice"
    one, other = Credential.bare("token-one"), Credential.bare("token-two")
    assert account_key(one) != account_key(other)
    assert account_key(one) == account_key(Credential.bare("token-one"))
    assert "token-one" not in account_key(one)
