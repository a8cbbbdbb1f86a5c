"""The pool of server-side Qwen tokens: which one serves the next request.

Choice: least in-flight first, round robin among equals, so sequential traffic
spreads evenly and a token stuck on long streams gets fewer new ones. A token
the upstream rejects (401/403) is disabled until the config is reloaded; one
answered 429 cools down for the upstream's Retry-After. Tokens are only ever
named by a short fingerprint (SHA-256, 8 hex digits) in logs and metrics.

The pool is this process's view. With a shared state backend, ``merge`` folds
in what other relays found (a token disabled or cooling elsewhere) before each
choice; a token disabled here stays disabled even if the shared record expires
or cannot be read, as it always did in memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..accounts.credential import BX_HEADERS, CookieJar, Credential, fingerprint
from ..errors import PoolExhausted, UpstreamChallenge
from ..state import TokenFlags
from .config import AccountSpec, Secret

__all__ = ["DEFAULT_COOL_DOWN_S", "PooledToken", "RestingTokens", "TokenPool", "fingerprint"]

_log = logging.getLogger("relay.upstream")

#: a 429 without Retry-After: Qwen Chat's limits are per minute.
DEFAULT_COOL_DOWN_S = 60.0


#: what identifies a pool entry across a reload: a bare token, or an account's name and pasted jar.
_EntryKey = tuple[str, ...]


@dataclass(slots=True, eq=False)
class PooledToken:
    """One credential of the pool (an ``[operator.tokens]`` token or an account), with its state."""

    credential: Credential
    #: the shared-state key: a token's fingerprint, or ``a:<name>:<fingerprint of the pasted jar>``.
    fingerprint: str
    in_flight: int = 0
    requests: int = 0
    cooling_until: float = 0.0
    #: why it was taken out of rotation ("upstream_401"), or None while usable.
    disabled: str | None = None
    #: risk-control answers this credential met (§7.5).
    challenges: int = 0
    #: refresh attempts by result ("ok", "rejected", "challenged", "error").
    refreshes: dict[str, int] = field(default_factory=dict)
    #: wall-clock time of the last successful refresh.
    last_refresh: float | None = None
    key: _EntryKey = field(default=(), repr=False)

    @property
    def token(self) -> str:
        return self.credential.token

    @property
    def name(self) -> str:
        return self.credential.label

    def state(self, now: float) -> str:
        if self.disabled is not None:
            return "disabled"
        return "cooling" if self.cooling_until > now else "active"


class TokenPool:
    def __init__(self, tokens: tuple[Secret, ...] = (), clock: Callable[[], float] = time.monotonic,
                 accounts: tuple[AccountSpec, ...] = ()) -> None:
        self._clock = clock
        self._tokens: list[PooledToken] = []
        self._next = 0
        self.update(tokens, accounts)

    @property
    def tokens(self) -> tuple[PooledToken, ...]:
        return tuple(self._tokens)

    def update(self, tokens: tuple[Secret, ...], accounts: tuple[AccountSpec, ...] = ()) -> None:
        """Take a reloaded list; kept entries keep their state (and rotated jars), leases stay valid.

        Accounts come first, then bare tokens. A disabled entry that is still
        listed stays disabled: the operator replaces it with a fresh one (a new
        token, or new cookies for the account), which is a new entry.
        """
        kept = {entry.key: entry for entry in self._tokens}
        entries: list[PooledToken] = []
        for spec in accounts:
            key: _EntryKey = ("account", spec.name, spec.cookies.reveal())
            # The shared-state key names the pasted login, not just the name: a login pasted anew
            # under an old name must not inherit the old one's "disabled" flag from Redis.
            state_key = f"a:{spec.name}:{fingerprint(spec.cookies.reveal())}"
            entries.append(kept.get(key) or PooledToken(_account_credential(spec), state_key, key=key))
        for secret in tokens:
            key = ("token", secret.reveal())
            entries.append(kept.get(key) or PooledToken(Credential.bare(secret.reveal()),
                                                        fingerprint(secret.reveal()), key=key))
        self._tokens = entries
        self._next = 0

    def accounts(self) -> list[PooledToken]:
        """The entries that are logins (refreshable), not bare tokens."""
        return [entry for entry in self._tokens if entry.credential.is_account]

    @contextmanager
    def acquire(self) -> Iterator[PooledToken]:
        """Lease the best usable token for the block; 503 ``no_upstream_token`` if none."""
        entry = self._choose()
        entry.in_flight += 1
        entry.requests += 1
        try:
            yield entry
        finally:
            entry.in_flight -= 1

    def merge(self, flags: Mapping[str, TokenFlags]) -> None:
        """Apply shared state read from the backend: disabled elsewhere, cooling elsewhere."""
        if not flags:
            return
        now = self._clock()
        for entry in self._tokens:
            shared = flags.get(entry.fingerprint)
            if shared is None:
                continue
            if shared.disabled is not None and entry.disabled is None:
                entry.disabled = shared.disabled
            if shared.cooling_s > 0:
                entry.cooling_until = max(entry.cooling_until, now + shared.cooling_s)

    def disable(self, entry: PooledToken, reason: str) -> None:
        if entry.disabled is None:
            entry.disabled = reason
            _log.warning("token_disabled", extra={"fields": {"token_fingerprint": entry.fingerprint, "reason": reason}})

    def cool_down(self, entry: PooledToken, seconds: float | None, event: str = "token_cooling") -> float:
        """Take ``entry`` out of rotation for ``seconds`` (default 60); return the seconds applied."""
        seconds = DEFAULT_COOL_DOWN_S if seconds is None or seconds <= 0 else seconds
        entry.cooling_until = max(entry.cooling_until, self._clock() + seconds)
        _log.warning(event, extra={"fields": {"token_fingerprint": entry.fingerprint,
                                              "seconds": round(seconds, 3)}})
        return seconds

    def count_challenge(self, entry: PooledToken) -> None:
        entry.challenges += 1

    def any_active(self) -> bool:
        now = self._clock()
        return any(entry.state(now) == "active" for entry in self._tokens)

    def _choose(self) -> PooledToken:
        now = self._clock()
        count = len(self._tokens)
        best: PooledToken | None = None
        best_index = 0
        for offset in range(count):  # starting at the cursor: ties go round robin
            index = (self._next + offset) % count
            entry = self._tokens[index]
            if entry.state(now) == "active" and (best is None or entry.in_flight < best.in_flight):
                best, best_index = entry, index
        if best is None:
            raise self.exhausted()
        self._next = (best_index + 1) % count
        return best

    def exhausted(self) -> PoolExhausted:
        """The 503 for a request no token can serve; Retry-After when one is only cooling."""
        now = self._clock()
        cooling = [entry.cooling_until - now for entry in self._tokens if entry.state(now) == "cooling"]
        if cooling:
            return PoolExhausted("Every upstream Qwen token of this relay is rate limited; retry later.",
                                 retry_after_s=max(1, math.ceil(min(cooling))))
        return PoolExhausted("No upstream Qwen token of this relay is usable (all were rejected by Qwen "
                             "Chat or none is configured); the operator must add fresh tokens.")


def _account_credential(spec: AccountSpec) -> Credential:
    bundle = {"bx_ua": spec.bx_ua.reveal() if spec.bx_ua else None,
              "bx_umidtoken": spec.bx_umidtoken.reveal() if spec.bx_umidtoken else None, "bx_v": spec.bx_v}
    bx = tuple((header, value) for field_name, header in BX_HEADERS if (value := bundle[field_name]))
    return Credential(spec.name, CookieJar.parse(spec.cookies.reveal()), bx=bx,
                      proxy=spec.proxy.reveal() if spec.proxy else None, is_account=True)


class RestingTokens:
    """Passthrough tokens resting after risk control: refused at once, the upstream untouched.

    The caller owns the token, but a retry at once would deepen the mark on the
    caller's account (§7.5), so the relay answers for Qwen Chat until the rest
    is over. Per process; bounded, the oldest entry going first.
    """

    _MAX_ENTRIES = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def rest(self, token: str, seconds: float) -> None:
        if seconds <= 0:
            return
        key = fingerprint(token)
        self._until.pop(key, None)
        self._until[key] = self._clock() + seconds
        while len(self._until) > self._MAX_ENTRIES:
            del self._until[next(iter(self._until))]
        _log.warning("token_challenged", extra={"fields": {"token_fingerprint": key, "seconds": round(seconds, 3)}})

    def check(self, token: str) -> None:
        """Raise the challenge again while ``token`` rests (502 ``upstream_challenge`` with Retry-After)."""
        if not self._until:
            return
        key = fingerprint(token)
        until = self._until.get(key)
        if until is None:
            return
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return
        raise UpstreamChallenge(
            f"Qwen Chat answered this token with risk control; it rests {math.ceil(left)} s more "
            "(--challenge-cooldown), because retrying at once deepens the mark. Meanwhile refresh the "
            "browser session of this account, or use another account or egress.", retry_after_s=math.ceil(left))
