"""Shapes every dialect shares: error payloads and model lists (§2.5, §4.5)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    AuthenticationFailed,
    RelayError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)

__all__ = ["CONTEXT_LENGTH_CODES", "describe_error", "error_from_payload", "model_entries"]

_AUTH_CODES = frozenset({"unauthorized", "invalid_token", "token_expired"})
_RATE_CODES = frozenset({"too_many_requests", "ratelimited", "rate_limited"})
CONTEXT_LENGTH_CODES = frozenset({"contextlengthexceeded", "context_length_exceeded"})
_MAX_MESSAGE = 300


def describe_error(error: Any) -> tuple[str, str]:
    """Return ``(code, message)`` from any of the upstream's error shapes."""
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("details") or error.get("message") or error.get("detail") or ""
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False)
        return (code if isinstance(code, str) else ""), message[:_MAX_MESSAGE]
    if isinstance(error, str):
        return "", error[:_MAX_MESSAGE]
    return "", ""


def error_from_payload(error: Any) -> RelayError:
    """Map an in-body upstream error (``{"error": {"code": ...}}``) to ours."""
    code, message = describe_error(error)
    key = code.lower()
    text = f"Qwen Chat error {code or 'unknown'}: {message or 'no details'}"
    if key in _AUTH_CODES:
        return AuthenticationFailed("Qwen Chat rejected the token (expired or invalid); sign in again "
                                    "and copy a fresh token.")
    if key in _RATE_CODES:
        return UpstreamRateLimited(text, retry_after_s=60.0)
    return UpstreamError(text, code="upstream_error")


def model_entries(payload: Any) -> list[dict[str, Any]]:
    """The model entries of ``{"data": [...]}`` or ``{"success":…, "data": {"data": [...]}}``."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, list):
        raise UpstreamProtocolError("The upstream model list has no 'data' array.")
    return [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
