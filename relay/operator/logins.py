"""Keep the pool's accounts signed in: resume, refresh before expiry and after a 401.

At start each account resumes the jar persisted by an earlier run (if it grew
from the same pasted cookies). One task per process then refreshes every account
a margin before its access token's ``exp`` (a quarter of the token's life, at
most 60 s; every ``_UNREADABLE_EXP_S`` when ``exp`` cannot be read), and a
request answered ``Unauthorized`` refreshes at once and is retried once.

Outcomes: ``ok`` → active; ``rejected`` (the refresh answered 401) → the account
is disabled, logged ``account_disabled`` and shown in ``/metrics``; ``challenged``
or ``error`` → it cools down for a backoff (5 s doubling to 5 min) and is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from ..accounts.credential import token_expiry
from ..accounts.refresh import Refresher
from ..accounts.store import AccountStore, source_digest
from .pool import PooledToken
from .runtime import Operator

__all__ = ["Logins"]

_log = logging.getLogger("relay.upstream")
_MAX_MARGIN_S = 60.0
_UNREADABLE_EXP_S = 600.0
_BACKOFF_MIN_S = 5.0
_BACKOFF_MAX_S = 300.0
#: the schedule never sleeps longer than this, so a reload's new accounts are picked up.
_MAX_SLEEP_S = 30.0


class Logins:
    def __init__(self, operator: Operator, refresher: Refresher, store: AccountStore) -> None:
        self._operator = operator
        self._refresher = refresher
        self._store = store
        self._lifetimes: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Resume persisted jars, then start the schedule."""
        for entry in self._operator.pool.accounts():
            stored = await self._store.load(entry.name, _source(entry))
            if stored is not None:
                entry.credential.jar.update(stored.as_dict())
                _log.info("account_resumed", extra={"fields": {"account": entry.name}})
        self._task = asyncio.get_running_loop().create_task(self._schedule())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self, entry: PooledToken, reason: str) -> bool:
        """Refresh ``entry`` now; True when it holds a fresh access token."""
        if not entry.credential.can_refresh or entry.disabled is not None:
            return False
        outcome = await self._refresher.refresh(entry.name, _source(entry), entry.credential)
        if outcome == "joined":  # another request of this process refreshed it just now: counted there
            return True
        entry.refreshes[outcome] = entry.refreshes.get(outcome, 0) + 1
        pool, state = self._operator.pool, self._operator.state
        if outcome == "ok":
            entry.last_refresh = time.time()
            if self._backoff.pop(entry.name, None) is not None:
                entry.cooling_until = 0.0  # the rest a failed refresh set; a challenge's or a 429's stands
            self._retry_at.pop(entry.name, None)
            self._lifetimes.pop(entry.name, None)
            self._wake.set()
            return True
        if outcome == "rejected":
            _log.error("account_disabled", extra={"fields": {"account": entry.name, "reason": "refresh_rejected",
                                                             "trigger": reason}})
            pool.disable(entry, "refresh_rejected")
            await state.disable_token(entry.fingerprint, "refresh_rejected")
            return False
        if outcome == "challenged":
            pool.count_challenge(entry)
        backoff = min(self._backoff.get(entry.name, _BACKOFF_MIN_S / 2) * 2, _BACKOFF_MAX_S)
        self._backoff[entry.name] = backoff
        self._retry_at[entry.name] = time.monotonic() + backoff
        await state.cool_down_token(entry.fingerprint, pool.cool_down(entry, backoff, "account_refresh_failed"))
        self._wake.set()
        return False

    def due_in_s(self, entry: PooledToken, now: float) -> float | None:
        """Seconds until ``entry`` should be refreshed (≤ 0: now), or None if it cannot be."""
        if entry.disabled is not None or not entry.credential.can_refresh:
            return None
        retry_at = self._retry_at.get(entry.name)
        if retry_at is not None:
            return retry_at - time.monotonic()
        expiry = token_expiry(entry.token)
        if expiry is None:
            last = entry.last_refresh or 0.0
            return last + _UNREADABLE_EXP_S - now
        left = expiry - now
        lifetime = self._lifetimes.setdefault(entry.name, max(left, 0.0))
        return left - min(_MAX_MARGIN_S, lifetime / 4)

    async def _schedule(self) -> None:
        while True:
            now = time.time()
            waits = []
            for entry in self._operator.pool.accounts():
                due = self.due_in_s(entry, now)
                if due is None:
                    continue
                if due <= 0:
                    await self.refresh(entry, "schedule")
                    due = self.due_in_s(entry, time.time())
                if due is not None:
                    waits.append(due)
            sleep_s = min([_MAX_SLEEP_S, *waits])
            self._wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(max(sleep_s, 0.05)):
                    await self._wake.wait()


def _source(entry: PooledToken) -> str:
    return source_digest(entry.key[2]) if len(entry.key) == 3 else ""
