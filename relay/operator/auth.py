"""Who is calling, and which Qwen token serves them.

passthrough: the Bearer is the caller's own Qwen token (the relay's original
behaviour). pool: the Bearer must be a relay key, else 401 before the upstream
is contacted. both: a Bearer matching a relay key uses the pool, anything else
is passed through.

``with_upstream_token`` runs one upstream exchange with the caller's token, or
with pool tokens one after another: a token rejected (401/403) is disabled, a
token answered 429 cools down, and the exchange is retried on the next token.
A token answered with risk control (``UpstreamChallenge``) is never tried again
at once, which would deepen the mark (docs/qwen-protocol.md §7.5): it rests for
``--challenge-cooldown``, in the pool and in passthrough alike, and a pooled
request moves on to the next token.
That retry is safe only while no byte has reached the client; the chat handler
guarantees it, because once it has prepared its response every error becomes an
SSE error event instead of an exception leaving the exchange.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ..accounts.credential import Credential
from ..errors import AuthenticationFailed, UpstreamChallenge, UpstreamRateLimited
from ..state import StateBackend
from .keys import RelayKey
from .pool import PooledToken
from .runtime import Operator

__all__ = ["Caller", "Served", "identify", "with_upstream_token"]

T = TypeVar("T")


class Served(Protocol):
    """Where a request notes who it was served for and by (the handlers' ``RequestInfo``).

    Filled here, where the key and the pool credential are chosen, for every
    surface alike; read when the request ends, for the usage records. A mutable
    record passed along rather than a return value: the credential is chosen deep
    inside an exchange whose result belongs to the surface.
    """

    #: the relay key's name (operator mode), else None.
    key_name: str | None
    #: the pool credential that served the request (an account's name, a token's fingerprint), else None.
    account_name: str | None
    #: pool credentials that met risk control on the way (the request then moved on to another).
    challenged: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Caller:
    """A request's credentials: its own Qwen token, or a relay key served by the pool.

    Without a token the pool serves it; ``Caller()`` (no key either) is the
    relay's own use of the pool, e.g. the shared model-list fetch.
    """

    #: the caller's Qwen token in passthrough; None when the pool serves it.
    token: str | None = field(default=None, repr=False)
    key: RelayKey | None = None
    #: where the pool credential chosen for this caller is noted (None: nowhere, e.g. the relay's own use).
    served: Served | None = field(default=None, repr=False, compare=False)

    @property
    def pooled(self) -> bool:
        return self.key is not None

    def admit(self, model: str | None, state: StateBackend) -> AbstractAsyncContextManager[None]:
        """Apply the key's model, rpm and concurrency limits for the block (no-op in passthrough).

        Passthrough gets one shared no-op: a generator-based manager per request
        cost an async generator and about 3 µs for nothing.
        """
        if self.key is None:
            return _NO_LIMITS
        return self._admit_key(self.key, model, state)

    @staticmethod
    @asynccontextmanager
    async def _admit_key(key: RelayKey, model: str | None, state: StateBackend) -> AsyncIterator[None]:
        if model is not None:
            key.check_model(model)
        async with key.admit(state):
            yield


class _NoLimits:
    """``async with`` that does nothing: a passthrough caller has no relay-side limits."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_LIMITS = _NoLimits()


def identify(operator: Operator, presented: str, served: Served | None = None) -> Caller:
    """Resolve the Bearer to a Caller; 401 in pool mode for anything but a relay key.

    ``served`` gets the key's name now, and the pool credential's once chosen.
    """
    mode = operator.mode
    if mode == "passthrough":
        return Caller(token=presented)
    key = operator.keys.find(presented)
    if key is not None:
        if served is not None:
            served.key_name = key.name
        return Caller(key=key, served=served)
    if mode == "both":
        return Caller(token=presented)
    raise AuthenticationFailed("Invalid API key: this relay accepts only its own API keys.")


async def with_upstream_token(operator: Operator, caller: Caller,
                              exchange: Callable[[Credential], Awaitable[T]], challenge_cooldown_s: float) -> T:
    """Run ``exchange(credential)`` with the caller's token, or with pool credentials until one works.

    Each pool credential is tried at most once per request (plus once more after
    a refresh); the lease is held for the whole exchange, so in-flight counts
    include streams until their end.
    """
    if caller.token is not None:
        resting = operator.resting
        resting.check(caller.token)
        try:
            return await exchange(Credential.bare(caller.token))
        except UpstreamChallenge:
            resting.rest(caller.token, challenge_cooldown_s)
            raise
    pool, state, served = operator.pool, operator.state, caller.served
    # What other relays sharing the state found out about these credentials (memory: nothing).
    pool.merge(await state.token_flags([entry.fingerprint for entry in pool.tokens]))
    last_challenge: UpstreamChallenge | None = None
    for _ in range(max(1, len(pool.tokens))):  # never more attempts than credentials: no loop
        if served is not None:
            served.account_name = None  # a credential passed over (below) did not serve the request
        with pool.acquire() as entry:  # raises PoolExhausted (503) when none is usable
            if served is not None:
                served.account_name = entry.name
            try:
                return await _with_refresh(operator, entry, exchange)
            except AuthenticationFailed as exc:
                reason = exc.instance_code or "upstream_auth_failed"
                pool.disable(entry, reason)
                await state.disable_token(entry.fingerprint, reason)
            except UpstreamRateLimited as exc:
                await state.cool_down_token(entry.fingerprint, pool.cool_down(entry, exc.retry_after_s))
            except UpstreamChallenge as exc:
                last_challenge = exc
                pool.count_challenge(entry)
                if served is not None:
                    served.challenged += (entry.name,)
                if challenge_cooldown_s > 0:
                    await state.cool_down_token(entry.fingerprint, pool.cool_down(entry, challenge_cooldown_s,
                                                                                  "token_challenged"))
    if served is not None:
        served.account_name = None
    if last_challenge is not None and not pool.any_active():
        raise last_challenge
    raise pool.exhausted()


async def _with_refresh(operator: Operator, entry: PooledToken,
                        exchange: Callable[[Credential], Awaitable[T]]) -> T:
    """``exchange`` on ``entry``; an account answered ``Unauthorized`` is refreshed and tried once more.

    An account already past its refresh margin is refreshed first: the schedule
    that should have done it runs late in a busy process, and a token sent that
    close to its expiry may be expired when Qwen Chat reads it.
    Safe: an error leaves ``exchange`` only before any byte reached the client.
    """
    logins = operator.logins
    if logins is not None:
        due = logins.due_in_s(entry, time.time())
        if due is not None and due <= 0:
            await logins.refresh(entry, "due")
    try:
        return await exchange(entry.credential)
    except AuthenticationFailed:
        if logins is None or not await logins.refresh(entry, "unauthorized"):
            raise
    return await exchange(entry.credential)
