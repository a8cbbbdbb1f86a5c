"""Shared state in Redis: every worker on every host sees the same limits and pool.

Strategy. Each request costs one Redis round trip for its key's limits: a Lua
script prunes the key's sliding rpm log and its concurrency leases, checks both
limits and records the request, atomically, with Redis' own clock (``TIME``), so
hosts with skewed clocks still agree. Every key carries a TTL:

  ``qwen-relay:{key:<name>}:rpm``      sorted set of request ids scored by ms; PEXPIRE 60 s
  ``qwen-relay:{key:<name>}:leases``   sorted set of lease ids scored by expiry; PEXPIRE 2 x lease
  ``qwen-relay:token:<fp>:disabled``   the reason; EX 1 day (a reload with fresh tokens is expected sooner)
  ``qwen-relay:token:<fp>:cooling``    PX = the upstream's Retry-After
  ``qwen-relay:models:<sha256>``       the model list JSON; PX = --models-ttl
  ``qwen-relay:tr:<sha256>``           one cached translation (UTF-8); PX = --translation-cache-ttl
  ``qwen-relay:usage:<YYYY-MM-DD>``    hash ``<kind>:<name>:<counter>`` → count (HINCRBY);
                                       EXPIREAT the day's start + --usage-days
  ``qwen-relay:blob:<key>``            ``put_blob``'s bytes (``response:<id>``: a stored
                                       /v1/responses answer); PX = its TTL (--responses-ttl)

(``{…}`` is a cluster hash tag: one key's two sets live on one shard, as the
script needs.) A concurrency slot is a lease scored by its expiry; one task per
process renews all the leases it holds every ``lease_s / 3``, and expired leases
are pruned on every read, so a worker that dies (SIGKILL, OOM, host lost) frees
its slots within ``lease_s`` without anyone cleaning up after it.

Redis down (the documented policy). Every call has a deadline (``--state-timeout``,
100 ms by default) and any failure answers with the permissive value: the
request is admitted without a slot, the pool uses what this process knows, the
models list is fetched upstream. The first failure logs ``state_backend_down``
and counts ``qwen_relay_state_errors_total``; then calls skip Redis entirely for
a backoff (0.1 s doubling to 5 s) before the next one probes it again, so while
Redis is gone requests pay nothing at all, and when it is back the first probe
restores sharing (``state_backend_up``). redis-py's own retries are off: the
backoff above is the only one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import WINDOW_S, Admission, Lease, TokenFlags
from .usage import UsageCounts, expires_at_s

__all__ = ["RedisState"]

_log = logging.getLogger("relay.error")
T = TypeVar("T")

PREFIX = "qwen-relay:"
#: a disabled token stays out of rotation this long unless the operator reloads sooner.
DISABLED_TTL_S = 86_400
#: after a failure, skip Redis for this long, doubling up to _BACKOFF_MAX_S.
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

#: KEYS: rpm set, lease set. ARGV: rpm (0 = none), max_concurrent (0 = none), lease ms, id.
#: → {0, 0} admitted, {1, 0} at the concurrency limit, {2, ms until a slot} over rpm.
_ADMIT = _NOW_MS + f"""
local rpm, conc, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then return {{1, 0}} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - {int(WINDOW_S * 1000)})
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {{2, tonumber(oldest[2]) + {int(WINDOW_S * 1000)} - now}}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], {int(WINDOW_S * 1000)})
end
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
return {{0, 0}}
"""

#: KEYS: lease sets. ARGV: lease ms, then the lease id for each key.
_RENEW = _NOW_MS + """
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + lease, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', key, lease * 2)
  end
end
return 0
"""


def _key(name: str, kind: str) -> str:
    return f"{PREFIX}{{key:{name}}}:{kind}"


def _usage_counts(record: dict[bytes, bytes]) -> UsageCounts:
    """A day's hash as counts; a field not of the ``kind:name:counter`` form is skipped."""
    counts: UsageCounts = {}
    for field_name, value in record.items():
        kind, _, rest = field_name.decode(errors="replace").partition(":")
        name, _, counter = rest.rpartition(":")  # kind and counter never hold a colon; the name might
        if kind and name and counter:
            counts[(kind, name, counter)] = int(value)
    return counts


#: delete the lock only if it is still ours (it may have expired and been taken since).
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_FAILED = object()


class RedisState:
    name = "redis"

    def __init__(self, url: str, timeout_s: float = 0.1, lease_s: float = 10.0) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._timeout_s = timeout_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._admit = self._client.register_script(_ADMIT)
        self._renew = self._client.register_script(_RENEW)
        self._unlock = self._client.register_script(_UNLOCK)
        self._leases: dict[Lease, None] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        self._up = True
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_MIN_S
        self.errors: dict[str, int] = {}
        self.fail_open: dict[str, int] = {}

    # -- the interface ---------------------------------------------------------------

    async def admit(self, key: str, rpm: int | None, max_concurrent: int | None) -> Admission:
        lease_id = os.urandom(8).hex()
        result = await self._call("admit", lambda: self._admit(
            keys=[_key(key, "rpm"), _key(key, "leases")],
            args=[rpm or 0, max_concurrent or 0, self._lease_ms, lease_id]), None)
        if result is None:
            return Admission()  # fail open: admitted, no slot to give back
        verdict, wait_ms = int(result[0]), int(result[1])
        if verdict == 1:
            return Admission(rejected="max_concurrent")
        if verdict == 2:
            return Admission(rejected="rpm", retry_after_s=wait_ms / 1000)
        if not max_concurrent:
            return Admission()
        lease = Lease(key, lease_id)
        self._leases[lease] = None
        self._ensure_keeper()
        return Admission(lease=lease)

    async def release(self, lease: Lease) -> None:
        if lease not in self._leases:
            return  # never ours, or released twice
        del self._leases[lease]
        await self._call("release", lambda: self._client.zrem(_key(lease.key, "leases"), lease.id), None)

    async def token_flags(self, fingerprints: Sequence[str]) -> dict[str, TokenFlags]:
        if not fingerprints:
            return {}

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.mget([f"{PREFIX}token:{fp}:disabled" for fp in fingerprints])
            for fp in fingerprints:
                pipe.pttl(f"{PREFIX}token:{fp}:cooling")
            return list(await pipe.execute())

        result = await self._call("token_flags", read, None)
        if result is None:
            return {}
        reasons, ttls = result[0], result[1:]
        return {fp: TokenFlags(disabled=reason.decode() if reason is not None else None,
                               cooling_s=max(0, int(ttl)) / 1000)
                for fp, reason, ttl in zip(fingerprints, reasons, ttls, strict=True)}

    async def disable_token(self, fingerprint: str, reason: str) -> None:
        await self._call("disable_token", lambda: self._client.set(
            f"{PREFIX}token:{fingerprint}:disabled", reason, ex=DISABLED_TTL_S), None)

    async def cool_down_token(self, fingerprint: str, seconds: float) -> None:
        await self._call("cool_down_token", lambda: self._client.set(
            f"{PREFIX}token:{fingerprint}:cooling", b"1", px=max(1, int(seconds * 1000))), None)

    async def load_models(self, key: str) -> tuple[bytes, float] | None:
        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(f"{PREFIX}models:{key}")
            pipe.pttl(f"{PREFIX}models:{key}")
            return list(await pipe.execute())

        result = await self._call("load_models", read, None)
        if result is None or result[0] is None or int(result[1]) <= 0:
            return None
        return bytes(result[0]), int(result[1]) / 1000

    async def store_models(self, key: str, payload: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        await self._call("store_models", lambda: self._client.set(
            f"{PREFIX}models:{key}", payload, px=max(1, int(ttl_s * 1000))), None)

    # -- the translation cache (relay/translate/cache.py) ----------------------------

    async def load_translations(self, keys: Sequence[str]) -> list[bytes | None]:
        """The translations stored under ``keys`` (hex digests), in one MGET; all None when down."""
        found = await self._call("load_translations", lambda: self._client.mget(
            [f"{PREFIX}tr:{key}" for key in keys]), None)
        return [value if isinstance(value, bytes) else None for value in found] if found else [None] * len(keys)

    async def store_translations(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Store ``(hex digest, translation)`` pairs for ``ttl_s``, pipelined in one round trip."""
        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(f"{PREFIX}tr:{key}", value, px=max(1, int(ttl_s * 1000)))
            await pipe.execute()

        if items:
            await self._call("store_translations", write, None)

    # -- usage by day (relay/status) ----------------------------------------------------

    async def add_usage(self, day: str, counts: Mapping[tuple[str, str, str], int], keep_days: int) -> None:
        """HINCRBY each counter, then EXPIREAT: one pipelined round trip per day and batch."""
        if not counts:
            return
        key, expires = f"{PREFIX}usage:{day}", expires_at_s(day, keep_days)

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            for (kind, name, counter), count in counts.items():
                pipe.hincrby(key, f"{kind}:{name}:{counter}", count)
            pipe.expireat(key, expires)  # in the past: Redis deletes the day at once
            await pipe.execute()

        await self._call("add_usage", write, None)

    async def load_usage(self, days: Sequence[str]) -> dict[str, UsageCounts]:
        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(f"{PREFIX}usage:{day}")
            return list(await pipe.execute())

        found = await self._call("load_usage", read, None) if days else None
        if found is None:
            return {day: {} for day in days}
        return {day: _usage_counts(record) for day, record in zip(days, found, strict=True)}

    # -- blobs (stored /v1/responses answers, relay/surfaces/responses/store.py) ------------

    async def put_blob(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        await self._call("put_blob", lambda: self._client.set(
            f"{PREFIX}blob:{key}", value, px=max(1, int(ttl_s * 1000))), None)

    async def get_blob(self, key: str) -> bytes | None:
        value = await self._call("get_blob", lambda: self._client.get(f"{PREFIX}blob:{key}"), None)
        return value if isinstance(value, bytes) else None

    def status(self) -> str:
        return "ok" if self._up else "down"

    def render_metrics(self) -> list[str]:
        out = ["# HELP qwen_relay_state_up 1 while the shared state backend (Redis) answers.",
               "# TYPE qwen_relay_state_up gauge", f"qwen_relay_state_up {int(self._up)}",
               "# HELP qwen_relay_state_errors_total Failed or timed-out state backend calls by operation.",
               "# TYPE qwen_relay_state_errors_total counter"]
        out += [f'qwen_relay_state_errors_total{{op="{op}"}} {n}' for op, n in sorted(self.errors.items())]
        out += ["# HELP qwen_relay_state_fail_open_total Calls answered without the backend (fail open).",
                "# TYPE qwen_relay_state_fail_open_total counter"]
        out += [f'qwen_relay_state_fail_open_total{{op="{op}"}} {n}' for op, n in sorted(self.fail_open.items())]
        return out

    async def close(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        leases, self._leases = list(self._leases), {}
        if leases and self._up:  # best effort: unreleased leases expire anyway
            await self._call("release", lambda: self._release_all(leases), None)
        await self._client.aclose()

    # -- accounts (issue 17) ----------------------------------------------------------

    keeps_accounts = True

    async def load_account(self, name: str) -> bytes | None:
        value = await self._call("load_account", lambda: self._client.get(f"{PREFIX}account:{name}"), None)
        return value if isinstance(value, bytes) else None

    async def store_account(self, name: str, payload: bytes) -> None:
        # No TTL: a refresh token lives 30 days and rotates; the record is the login.
        await self._call("store_account", lambda: self._client.set(f"{PREFIX}account:{name}", payload), None)

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        token = os.urandom(8).hex()
        taken = await self._call("lock", lambda: self._client.set(
            f"{PREFIX}lock:{name}", token, nx=True, px=max(1, int(ttl_s * 1000))), _FAILED)
        if taken is _FAILED:
            return token  # fail open: this relay's own lock still makes it one at a time here
        return token if taken else None

    async def release_lock(self, name: str, token: str) -> None:
        await self._call("unlock", lambda: self._unlock(keys=[f"{PREFIX}lock:{name}"], args=[token]), None)

    # -- plumbing --------------------------------------------------------------------

    async def _call(self, op: str, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run one Redis call within the deadline; on any failure return ``fallback``."""
        self._ensure_keeper()
        if not self._up and time.monotonic() < self._retry_at:
            self.fail_open[op] = self.fail_open.get(op, 0) + 1
            return fallback  # backing off: do not make this request wait on a dead Redis
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(op, exc)
            return fallback
        if not self._up:
            self._up, self._backoff_s = True, _BACKOFF_MIN_S
            _log.warning("state_backend_up", extra={"fields": {"backend": "redis"}})
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        self.fail_open[op] = self.fail_open.get(op, 0) + 1
        if self._up:
            _log.warning("state_backend_down", extra={"fields": {
                "backend": "redis", "op": op, "error": type(exc).__name__, "policy": "fail_open"}})
            self._up = False
        else:
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
        self._retry_at = time.monotonic() + self._backoff_s

    async def _release_all(self, leases: list[Lease]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for lease in leases:
            pipe.zrem(_key(lease.key, "leases"), lease.id)
        await pipe.execute()

    def _ensure_keeper(self) -> None:
        """One renewal task per process for all its leases (not one per stream), started on first use."""
        if not self._closed and (self._keeper is None or self._keeper.done()):
            self._keeper = asyncio.get_running_loop().create_task(self._keep_leases())

    async def _keep_leases(self) -> None:
        """Renew this process's leases; with none to renew, PING, so /healthz tells the truth when idle."""
        interval_s = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            leases = list(self._leases)
            if not leases:
                await self._call("ping", self._client.ping, None)
                continue
            keys = [_key(lease.key, "leases") for lease in leases]
            args = [self._lease_ms, *(lease.id for lease in leases)]
            await self._call("renew", partial(self._renew, keys=keys, args=args), None)
