"""Logins of the emulated auth host (auth.qwen.ai, §7.1): sessions, JWTs, rotating refresh tokens.

Strategy: a *login* is one signed-in browser session: an id, the account's email,
the current refresh token, and the cookies of its browser jar (``acw_tc``,
``x-ap``, ``ssxmod_itna``). Access tokens are HS256 JWTs signed with a secret of
this emulator instance, so they are self-contained: the emulator judges one by its
signature, its ``exp`` and whether its login is still alive, and keeps no list of
them. Refresh tokens are opaque and rotate: each one may be spent once; spending
one again kills the login (§7.1 [S]: "treat a used refresh token as spent"; the kill
is the emulator's reading of what a reuse-detecting service does).

Nothing here does I/O; ``auth.py`` speaks HTTP, ``auth_control.py`` the test hooks.

[I] choices where the notes are silent:

- ``x-ap`` (the pairing cookie) is the login id itself; ``acw_tc`` and
  ``ssxmod_itna`` are random per login.
- the payload carries ``jti`` (random) besides ``id``, ``exp`` and ``iat``, so two
  tokens minted in one second differ; ``exp`` is whole seconds, rounded up, so a
  token lives between ``access_ttl_s`` and one second more.
- a token is "an emulator JWT" when it has three base64url parts and its header
  says HS256/JWT; any other token keeps the pre-login rules (``handling.py``).
- verdict order: signature, then ``exp``, then the login (unknown or dead).
- a sign-in makes a new login each time; older logins of that account stay alive.
- logins survive :meth:`EmulatorState.reset` (accounts are service state, as seen
  request ids are); refresh records, walls, challenges and sign-in counts do not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.emulator.config import EmulatorConfig

__all__ = [
    "JAR_COOKIES",
    "Access",
    "Login",
    "LoginBook",
    "LoginSeed",
    "RefreshOutcome",
    "RefreshRecord",
    "RefreshResult",
    "password_digest",
]

# The browser jar a login carries besides its tokens (§7.1); x-ap is the pairing cookie.
JAR_COOKIES = ("acw_tc", "x-ap", "ssxmod_itna")
RefreshResult = Literal["ok", "reused", "unknown", "dead", "bad_headers", "challenged"]
_JWT_HEADER = {"alg": "HS256", "typ": "JWT"}


def password_digest(password: str) -> str:
    """What the web app sends as ``password``: the sha256 hex of the password (§7.1 [C])."""
    return hashlib.sha256(password.encode()).hexdigest()


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: Mapping[str, Any]) -> str:
    """A JWT segment: compact JSON (no spaces, as JWT libraries write it), base64url."""
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(slots=True)
class Login:
    """One signed-in session; ``jar`` holds the current value of each jar cookie."""

    id: str
    email: str
    refresh_token: str = field(repr=False)
    jar: dict[str, str] = field(repr=False)
    alive: bool = True
    refresh_count: int = 0
    # Fingerprints of this login's spent refresh tokens (reuse detection).
    spent: set[str] = field(default_factory=set, repr=False)
    # Test hooks (auth_control.py): risk-control answers still owed, and the bx-* demand.
    challenge_writes: int = 0
    challenge_refreshes: int = 0
    requires_bx: bool = False

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/logins`` (no secrets)."""
        return {"id": self.id, "email": self.email, "alive": self.alive, "refresh_count": self.refresh_count}


@dataclass(frozen=True, slots=True)
class LoginSeed:
    """Credentials of a fresh login, as a test or a relay's account file wants them."""

    id: str
    email: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int
    # The whole jar as a Cookie header: token, refresh_token, acw_tc, x-ap, ssxmod_itna.
    cookie: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "access_token": self.access_token,
                "refresh_token": self.refresh_token, "expires_at": self.expires_at, "cookie": self.cookie}


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """One refresh attempt: which token (fingerprint), whose, and how it ended."""

    token_fingerprint: str | None
    login_id: str | None
    result: RefreshResult
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"token_fingerprint": self.token_fingerprint, "login_id": self.login_id,
                "result": self.result, "at": self.at}


@dataclass(frozen=True, slots=True)
class Access:
    """The verdict on an access token; ``rule`` names a refusal ("ok" when accepted)."""

    rule: Literal["ok", "bad_token", "bad_signature", "token_expired", "dead_login"]
    # The login of a well-signed emulator JWT (even expired or dead); None otherwise.
    login: Login | None = None

    @property
    def ok(self) -> bool:
        return self.rule == "ok"


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What a refresh produced: the login and its new tokens (only for "ok")."""

    result: RefreshResult
    login: Login | None = None
    access_token: str = field(default="", repr=False)
    expires_at: int = 0


@dataclass(slots=True)
class LoginBook:
    """Every login of one emulator, the signing secret, and the auth host's test switches."""

    users: dict[str, str] = field(default_factory=lambda: {"demo@example.com": "demo-password"}, repr=False)
    access_ttl_s: float = 900.0
    signin_limit: int = 12
    signin_window_s: float = 360.0
    # Wall clock (epoch s); tests may swap it to move time without sleeping.
    clock: Callable[[], float] = time.time
    logins: dict[str, Login] = field(default_factory=dict)
    refreshes: list[RefreshRecord] = field(default_factory=list)
    # "off", or what every sign-in answers: "waf" (slider page) or "risk_control".
    signin_wall: str = "off"
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # Current refresh token → login id (spent ones live in Login.spent).
    _by_refresh: dict[str, str] = field(default_factory=dict, repr=False)
    _spent_owner: dict[str, str] = field(default_factory=dict, repr=False)
    _signins: dict[str, deque[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: EmulatorConfig) -> LoginBook:
        return cls(users=dict(config.users), access_ttl_s=config.access_ttl_s,
                   signin_limit=config.signin_limit, signin_window_s=config.signin_window_s)

    def reset(self) -> None:
        """Forget attempts and switches between tests; logins themselves stay."""
        self.refreshes.clear()
        self.signin_wall = "off"
        self._signins.clear()
        for login in self.logins.values():
            login.challenge_writes = login.challenge_refreshes = 0
            login.requires_bx = False

    # -- logins --------------------------------------------------------------

    def create_login(self, email: str) -> LoginSeed:
        """Sign ``email`` in without a password (tests); an unknown email becomes an account."""
        self.users.setdefault(email, secrets.token_urlsafe(12))
        login_id = str(uuid.uuid4())
        jar = {"acw_tc": secrets.token_hex(32), "x-ap": login_id, "ssxmod_itna": secrets.token_urlsafe(48)}
        login = Login(login_id, email, secrets.token_urlsafe(48), jar)
        self.logins[login_id] = login
        self._by_refresh[login.refresh_token] = login_id
        access, expires_at = self.mint_access(login)
        cookie = "; ".join([f"token={access}", f"refresh_token={login.refresh_token}",
                            *(f"{name}={jar[name]}" for name in JAR_COOKIES)])
        return LoginSeed(login_id, email, access, login.refresh_token, expires_at, cookie)

    def find(self, key: str) -> Login | None:
        """A login by id, else the newest login of that email."""
        if key in self.logins:
            return self.logins[key]
        matches = [login for login in self.logins.values() if login.email == key]
        return matches[-1] if matches else None

    def check_password(self, email: str, digest: str) -> bool:
        password = self.users.get(email)
        return password is not None and hmac.compare_digest(password_digest(password), digest.lower())

    def note_signin(self, client: str) -> bool:
        """Count a sign-in from ``client``; False once it is over the rate wall (§7.1 [S])."""
        now = self.clock()
        attempts = self._signins.setdefault(client, deque())
        while attempts and attempts[0] <= now - self.signin_window_s:
            attempts.popleft()
        attempts.append(now)
        return len(attempts) <= self.signin_limit

    def rotate_itna(self, login: Login) -> str:
        """Give the login a new ``ssxmod_itna`` (sent as Set-Cookie) and remember it."""
        login.jar["ssxmod_itna"] = secrets.token_urlsafe(48)
        return login.jar["ssxmod_itna"]

    def stale_cookies(self, login: Login, cookies: Mapping[str, str]) -> list[str]:
        """Jar cookies presented with a value that is not the login's current one."""
        return [name for name in JAR_COOKIES if name in cookies and cookies[name] != login.jar[name]]

    def write_gate(self, login: Login, cookies: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The risk-control rule a write of ``login`` breaks, or None (``headers`` lower-cased).

        A challenge owed comes first and is used up whatever else the write does;
        then the pairing (§7.1 [S]: a token with another login's jar got the captcha;
        a jar without ``x-ap`` passes); then the ``bx-*`` bundle, when demanded.
        """
        if login.challenge_writes > 0:
            login.challenge_writes -= 1
            return "challenged"
        x_ap = cookies.get("x-ap")
        if x_ap is not None and x_ap != login.id:
            return "jar_mismatch"
        if login.requires_bx and not (headers.get("bx-ua") and headers.get("bx-umidtoken")):
            return "no_bx"
        return None

    # -- access tokens -------------------------------------------------------

    def mint_access(self, login: Login) -> tuple[str, int]:
        """A fresh HS256 JWT for ``login`` and its ``exp``."""
        now = self.clock()
        expires_at = math.ceil(now + self.access_ttl_s)
        payload = {"id": login.id, "exp": expires_at, "iat": int(now), "jti": secrets.token_hex(8)}
        signing_input = f"{_compact(_JWT_HEADER)}.{_compact(payload)}"
        return f"{signing_input}.{self._sign(signing_input)}", expires_at

    def _sign(self, signing_input: str) -> str:
        return _b64(hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest())

    def judge(self, token: str | None) -> Access | None:
        """Judge an emulator JWT; None when ``token`` is not one (the old rules apply)."""
        parts = (token or "").split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_unb64(parts[0]))
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):  # also UnicodeDecodeError
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("typ") != "JWT":
            return None
        if not hmac.compare_digest(parts[2], self._sign(f"{parts[0]}.{parts[1]}")):
            return Access("bad_signature")
        if not isinstance(payload, dict):
            return Access("bad_token")
        exp, login_id = payload.get("exp"), payload.get("id")
        login = self.logins.get(login_id) if isinstance(login_id, str) else None
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or login is None:
            return Access("bad_token")
        if self.clock() >= exp:
            return Access("token_expired", login)
        return Access("ok" if login.alive else "dead_login", login)

    # -- refresh tokens ------------------------------------------------------

    def login_of_refresh(self, refresh_token: str) -> Login | None:
        """The login a refresh token belongs to, current or spent."""
        login_id = self._by_refresh.get(refresh_token) or self._spent_owner.get(_fingerprint(refresh_token))
        return self.logins.get(login_id) if login_id else None

    def refresh(self, refresh_token: str) -> RefreshOutcome:
        """Spend ``refresh_token``: new tokens, or the refusal (a reuse kills the login)."""
        login = self.login_of_refresh(refresh_token)
        if login is None:
            return RefreshOutcome("unknown")
        if not login.alive:
            return RefreshOutcome("dead", login)
        if login.refresh_token != refresh_token:
            self.kill(login)
            return RefreshOutcome("reused", login)
        del self._by_refresh[refresh_token]
        spent = _fingerprint(refresh_token)
        login.spent.add(spent)
        self._spent_owner[spent] = login.id
        login.refresh_token = secrets.token_urlsafe(48)
        self._by_refresh[login.refresh_token] = login.id
        login.refresh_count += 1
        access, expires_at = self.mint_access(login)
        return RefreshOutcome("ok", login, access, expires_at)

    def kill(self, login: Login) -> None:
        """End a session: its access tokens and refresh token are refused from now on."""
        login.alive = False  # its current refresh token stays known, to be answered "dead"

    def record_refresh(self, refresh_token: str | None, login: Login | None, result: RefreshResult) -> None:
        fingerprint = _fingerprint(refresh_token) if refresh_token else None
        self.refreshes.append(RefreshRecord(fingerprint, login.id if login else None, result, self.clock()))
