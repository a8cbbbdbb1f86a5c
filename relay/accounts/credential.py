"""What an upstream call is made with: a login's cookie jar, bx-* bundle and egress.

Since 2026 Qwen Chat authenticates by the ``token`` cookie, and wants the rest of
the same login's jar with it (``acw_tc``, ``x-ap``, ``ssxmod_itna``…): a token
sent with another login's jar gets the captcha (docs/qwen-protocol.md §7.1). So
each credential owns its jar, ``Set-Cookie`` answers update only that jar, and
nothing ever crosses to another credential.

A passthrough caller's token is a credential whose jar holds only ``token=``;
a ``[operator.tokens]`` entry likewise; an ``[[operator.accounts]]`` entry has the
whole jar, its ``refresh_token`` included, and so can be refreshed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CookieJar", "Credential", "fingerprint", "token_expiry"]

#: the names of the bx-* bundle's headers, by their config field.
BX_HEADERS = (("bx_ua", "bx-ua"), ("bx_umidtoken", "bx-umidtoken"), ("bx_v", "bx-v"))


def fingerprint(token: str) -> str:
    """8 hex digits of the token's SHA-256: enough to tell tokens apart, useless to an attacker."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


@functools.lru_cache(maxsize=1024)  # read on every pooled request (logins.due_in_s); tokens are few
def token_expiry(token: str) -> float | None:
    """The ``exp`` (epoch seconds) of a JWT access token, or None when it cannot be read.

    Read, not verified: the relay only needs to know when to refresh.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeEncodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class CookieJar:
    """One login's cookies for chat.qwen.ai, in the order they were set."""

    __slots__ = ("_cookies", "version")

    def __init__(self, cookies: Mapping[str, str] | None = None) -> None:
        self._cookies: dict[str, str] = dict(cookies or {})
        #: bumped on every change, so a refresh can tell whether the jar moved meanwhile.
        self.version = 0

    @classmethod
    def parse(cls, header: str) -> CookieJar:
        """A jar from a browser's ``Cookie`` header (``a=1; b=2``)."""
        cookies: dict[str, str] = {}
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                cookies[name.strip()] = value.strip()
        return cls(cookies)

    def get(self, name: str) -> str | None:
        return self._cookies.get(name)

    def as_dict(self) -> dict[str, str]:
        return dict(self._cookies)

    def header(self) -> str:
        """The ``Cookie`` header: ``token`` first, as the web app's jar has it."""
        token = self._cookies.get("token")
        rest = [f"{name}={value}" for name, value in self._cookies.items() if name != "token"]
        return "; ".join(([f"token={token}"] if token is not None else []) + rest)

    def update(self, cookies: Mapping[str, str]) -> None:
        """Apply ``Set-Cookie`` values; an empty value deletes the cookie."""
        changed = False
        for name, value in cookies.items():
            if not value:
                changed |= self._cookies.pop(name, None) is not None
            elif self._cookies.get(name) != value:
                self._cookies[name] = value
                changed = True
        if changed:
            self.version += 1


@dataclass(slots=True, eq=False)
class Credential:
    """What one upstream call is made with."""

    #: the name in logs and metrics: an account's name, or a token's fingerprint.
    label: str
    jar: CookieJar = field(repr=False)
    #: ``(header, value)`` of the bx-* bundle, sent on writes.
    bx: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: this credential's egress, or None for the relay's default.
    proxy: str | None = field(default=None, repr=False)
    #: an ``[[operator.accounts]]`` login (refreshable), not a bare token.
    is_account: bool = False

    @classmethod
    def bare(cls, token: str) -> Credential:
        """A token alone (passthrough, ``[operator.tokens]``): a jar with only ``token=``."""
        return cls(fingerprint(token), CookieJar({"token": token}))

    @property
    def token(self) -> str:
        return self.jar.get("token") or ""

    @property
    def can_refresh(self) -> bool:
        return bool(self.jar.get("refresh_token"))

    def expires_in_s(self, now: float | None = None) -> float | None:
        """Seconds until the access token expires (negative once expired), or None if unknown."""
        expiry = token_expiry(self.token)
        return None if expiry is None else expiry - (time.time() if now is None else now)

    def take_cookies(self, cookies: Mapping[str, str]) -> None:
        """``Set-Cookie`` of an answer to this credential's call."""
        self.jar.update(cookies)
