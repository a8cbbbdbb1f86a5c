"""Refresh an access token at the auth host, once at a time per login (docs/qwen-protocol.md §7.1).

``GET {auth-origin}/api/v2/auths/refresh`` with the login's jar answers a new
access token (~15 minutes) and a new refresh token: the old one is spent, and a
second use of it is assumed to kill the login. So a refresh is single-flight:
within a process by an ``asyncio.Lock`` per login, across workers and hosts by
the store's lock (Redis with ``--state redis://``, else an flock in
``--state-dir``), and whoever waited on another
relay's refresh adopts the jar that relay stored instead of refreshing again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..dialects.v2_errors import payload_error
from ..errors import AuthenticationFailed, RelayError, UpstreamChallenge
from ..upstream import UpstreamClient
from .credential import Credential, token_expiry
from .store import AccountStore

__all__ = ["REFRESH_PATH", "Refresher"]

_log = logging.getLogger("relay.upstream")
REFRESH_PATH = "/api/v2/auths/refresh"
#: how long one relay may hold the fleet's refresh lock of a login: one refresh call and its retries.
_LOCK_S = 45.0
#: polls of the store while another relay refreshes the same login, 0.1 s apart (≤ the lock's life).
_WAIT_POLLS = 450

#: builds the headers of a refresh call for a credential.
RefreshHeaders = Callable[[Credential], Sequence[tuple[str, str]]]


class Refresher:
    """``refresh(name, source, credential)`` → "ok", "joined", "rejected", "challenged" or "error".

    "joined": a concurrent call in this process refreshed it while this one
    waited; the credential holds the fresh token, but no refresh was made here.
    """

    def __init__(self, client: UpstreamClient, headers: RefreshHeaders, store: AccountStore) -> None:
        self._client = client
        self._headers = headers
        self._store = store
        self._locks: dict[str, asyncio.Lock] = {}

    async def refresh(self, name: str, source: str, credential: Credential) -> str:
        """Give ``credential`` a fresh access token, by this call or by a concurrent one."""
        seen = credential.token
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if credential.token != seen:
                return "joined"  # refreshed while this call waited for the lock
            held = await self._store.acquire_lock(name, _LOCK_S)
            polls = 0
            while held is None and polls < _WAIT_POLLS:  # another relay is refreshing this login
                await asyncio.sleep(0.1)
                polls += 1
                if await self._adopt(name, source, credential, seen):
                    return "ok"
                held = await self._store.acquire_lock(name, _LOCK_S)
            if held is None:
                return "error"
            try:
                if await self._adopt(name, source, credential, seen):
                    return "ok"  # the other relay finished just before the lock was ours
                outcome = await self._call(credential)
                if outcome == "ok":
                    await self._store.save(name, source, credential.jar)
                return outcome
            finally:
                await self._store.release_lock(name, held)

    async def _adopt(self, name: str, source: str, credential: Credential, seen: str) -> bool:
        """Take the jar another relay stored, when it holds a newer token than ``seen``."""
        stored = await self._store.load(name, source)
        if stored is None:
            return False
        token = stored.get("token") or ""
        if token == seen or (token_expiry(token) or 0.0) <= (token_expiry(seen) or 0.0):
            return False
        credential.jar.update(stored.as_dict())
        return True

    async def _call(self, credential: Credential) -> str:
        started = time.monotonic()
        try:
            payload: Any = await self._client.send_json(
                "GET", REFRESH_PATH, self._headers(credential), None, proxy=credential.proxy,
                on_cookies=credential.take_cookies)
            error = payload_error(payload)
            if error is not None:
                raise error
        except AuthenticationFailed:
            return _logged("rejected", credential, started)
        except UpstreamChallenge:
            return _logged("challenged", credential, started)
        except RelayError as exc:
            return _logged("error", credential, started, type(exc).__name__)
        data = payload.get("data") if isinstance(payload, dict) else None
        access = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(access, str) or not access:
            return _logged("error", credential, started, "no_access_token")
        update = {"token": access}
        rotated = data.get("refresh_token") if isinstance(data, dict) else None
        if isinstance(rotated, str) and rotated:
            update["refresh_token"] = rotated
        credential.jar.update(update)
        return _logged("ok", credential, started)


def _logged(outcome: str, credential: Credential, started: float, error: str | None = None) -> str:
    fields: dict[str, Any] = {"account": credential.label, "result": outcome,
                              "duration_ms": round((time.monotonic() - started) * 1000, 1)}
    if error:
        fields["error"] = error
    if outcome == "ok":
        fields["expires_in_s"] = round(credential.expires_in_s() or 0.0, 1)
    (_log.info if outcome == "ok" else _log.warning)("account_refresh", extra={"fields": fields})
    return outcome
