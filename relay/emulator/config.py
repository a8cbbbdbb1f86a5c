"""Settings of one emulator instance.

Kept apart from the server so tests and the relay's demo mode can build a config
without importing aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MODELS", "EmulatorConfig"]

# Ids seen on chat.qwen.ai in Feb-Mar 2025 (QWEN_PROTOCOL.md §2.1), then v2-era ids
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
