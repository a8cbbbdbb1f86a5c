"""Settings of one emulator instance.

Kept apart from the server so tests and the relay's demo mode can build a config
without importing aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_LOG_SIZE", "DEFAULT_MODELS", "DEFAULT_USERS", "EmulatorConfig"]

# Requests the log keeps (``--log-size``), the oldest dropped first; stop calls and deleted
# chats alike. A record holds the request's headers and body (a coding agent's prompt is
# 100 KB+): 10,000 bound the log at about 100 MB even then, and a test reads a few dozen.
DEFAULT_LOG_SIZE = 10_000

# Ids seen on chat.qwen.ai in Feb-Mar 2025 (docs/qwen-protocol.md §2.1), then v2-era ids
# (qwen3.8-plus: the 2026 line that cannot skip thinking, §7.3);
# enough variety to exercise vision, thinking and search flags (catalogue.py)
# without pretending to be the full catalogue. New ids go last: relay tests pick
# the first as their default model.
DEFAULT_MODELS: tuple[str, ...] = (
    "qwen-max-latest",
    "qwen-plus-latest",
    "qwen-turbo-latest",
    "qwq-32b",
    "qwen2.5-coder-32b-instruct",
    "qwen3-235b-a22b",
    "qwen3-coder-plus",
    "qwen3-max",
    "qwen3.8-plus",
)

# One account, so a relay's sign-in works out of the box (``--user`` adds more).
DEFAULT_USERS: dict[str, str] = {"demo@example.com": "demo-password"}


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Behaviour of the emulator when a request carries no directive.

    Tokens are plain strings on purpose: they are fake test tokens, and the request
    log only ever stores their fingerprint (recorded headers and cookies included).
    """

    # Answer qwen-v2 writes as strictly as the 2026 service (§7, ``strict.py``):
    # cookie auth, browser headers, fresh request ids, the 2026 body shape. False
    # (``--lenient``) keeps the pre-2026 behaviour: Bearer or cookie, no header checks.
    strict: bool = True

    # Bearer tokens answered 401, as an expired Qwen JWT would be (§2.5).
    expired_tokens: frozenset[str] = frozenset({"expired-token"})
    # None accepts any non-empty Bearer token (demo mode); otherwise only these.
    valid_tokens: frozenset[str] | None = None
    # Eight pieces: enough to see cumulative growth, few enough to read in a log.
    default_chunks: int = 8
    # No gap by default so the test-suite stays fast; latency tests ask for it.
    default_delay_ms: float = 0.0
    models: tuple[str, ...] = DEFAULT_MODELS

    # The auth host (auth.qwen.ai, §7.1; ``auth.py``): accounts that may sign in
    # (email → password; the client sends the password's sha256 hex).
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS), repr=False, hash=False)
    # Access-token lifetime: ~15 min on the service (§7.1 [C]); tests use 1-3 s.
    access_ttl_s: float = 900.0
    # Sign-ins per client within the window before the WAF page (§7.1 [S]: ~12 per 6 min).
    signin_limit: int = 12
    signin_window_s: float = 360.0
    # Records kept by ``EmulatorState`` (its ``log``, ``stop_calls``, ``deleted_chats``): a ring,
    # so that ``--upstream emulator`` and a long benchmark run for days in bounded memory.
    log_size: int = DEFAULT_LOG_SIZE

    def __post_init__(self) -> None:
        """Reject settings that would make every stream misbehave silently."""
        if self.default_chunks < 1:
            raise ValueError("default_chunks must be at least 1")
        if self.default_delay_ms < 0:
            raise ValueError("default_delay_ms must not be negative")
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.valid_tokens is not None and not self.valid_tokens:
            raise ValueError("valid_tokens must be None or non-empty")
        if self.access_ttl_s <= 0:
            raise ValueError("access_ttl_s must be positive")
        if self.signin_limit < 1:
            raise ValueError("signin_limit must be at least 1")
        if self.signin_window_s <= 0:
            raise ValueError("signin_window_s must be positive")
        if self.log_size < 1:
            raise ValueError("log_size must be at least 1")
