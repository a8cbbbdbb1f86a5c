"""How the 2025 service said no (qwen-v1, qwen-phase; docs/qwen-protocol.md §2.5): historic behaviour.

An HTML page with a 2xx or 5xx status was a challenge that the seed family
retried, and so does the relay; a 5xx is retried; 401/403 reject the token; 429
rate limits; a ``{"success": false}`` body is mapped by its code; any other 4xx
is passed on with its status. qwen-v2's conventions live in ``v2_errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import (
    AuthenticationFailed,
    RelayError,
    UpstreamChallenge,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ..jsonio import loads
from ..upstream.retry import parse_retry_after
from .common import CONTEXT_LENGTH_CODES, describe_error, error_from_payload
from .v2_errors import CONTEXT_LENGTH_CODE, Refusal, is_challenge_page

__all__ = ["payload_error", "refusal"]


def payload_error(payload: Any) -> RelayError | None:
    """The error an in-stream ``{"error": …}`` payload carries (qwen-phase), or None.

    A context overflow comes back with ``CONTEXT_LENGTH_CODE``, as ``v2_errors`` does.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if error is None:
        return None
    code, message = describe_error(error)
    if code.lower() in CONTEXT_LENGTH_CODES:
        return UpstreamError(f"Qwen Chat error {code}: {message}", code=CONTEXT_LENGTH_CODE)
    return error_from_payload(error)


def refusal(status: int, headers: Mapping[str, str], content_type: str, body: bytes) -> Refusal | None:
    """What an answer that is not plainly successful means (None: it is fine after all)."""
    actual = headers.get("x-actual-status-code", "")
    if 200 <= status < 300 and actual.isdigit() and int(actual) >= 400:
        status = int(actual)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if 200 <= status < 300:
        if content_type == "text/html":
            return Refusal(_challenge(body, status), retryable=True)
        return None
    if 300 <= status < 400:
        return Refusal(UpstreamProtocolError(f"Qwen Chat redirected the API request (HTTP {status}); "
                                             "check --upstream."))
    if status >= 500:
        if content_type == "text/html" and is_challenge_page(body):
            return Refusal(_challenge(body, status), retryable=True)
        return Refusal(UpstreamUnavailable(f"The upstream failed with HTTP {status} on every attempt "
                                           f"({_detail(body)})."), retryable=True, retry_after_s=retry_after)
    unsuccessful = _unsuccessful(body)
    if unsuccessful is not None:
        mapped = error_from_payload(unsuccessful, status)
        if isinstance(mapped, UpstreamRateLimited) and retry_after is not None:
            mapped.retry_after_s = retry_after
        return Refusal(mapped)
    if status in (401, 403):
        return Refusal(AuthenticationFailed(
            f"Qwen Chat rejected the token (HTTP {status}: {_detail(body)}). Sign in to Qwen Chat "
            "again and use a fresh token."))
    if status == 429:
        return Refusal(UpstreamRateLimited(f"Qwen Chat is rate limiting this token ({_detail(body)}).",
                                           retry_after_s=retry_after if retry_after is not None else 60.0))
    if content_type == "text/html" and is_challenge_page(body):
        return Refusal(_challenge(body, status), retryable=True)
    error: RelayError = UpstreamRejected(f"Qwen Chat refused the request with HTTP {status}: {_detail(body)}",
                                         status=status if status in (400, 404, 413, 422) else 400)
    return Refusal(error)


def _detail(body: bytes) -> str:
    """A short, JSON-safe description of an upstream error body."""
    try:
        payload = loads(body)
    except (ValueError, RecursionError):
        text = body[:200].decode("utf-8", "replace").strip()
        return text if text and not text.startswith("<") else "no details"
    if isinstance(payload, dict):
        for key in ("error", "detail", "data", "message"):
            if key in payload:
                code, message = describe_error(payload[key])
                return f"{code}: {message}" if code and message else (message or code or "no details")
    return "no details"


def _unsuccessful(body: bytes) -> dict[str, Any] | None:
    """The ``data`` of a ``{"success": false, "data": {"code": ...}}`` body."""
    try:
        payload = loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, dict) and payload.get("success") is False and isinstance(payload.get("data"), dict):
        data: dict[str, Any] = payload["data"]
        return data
    return None


def _challenge(body: bytes, status: int) -> UpstreamChallenge:
    kind = "an anti-bot (WAF) challenge page" if is_challenge_page(body) else "an HTML page"
    return UpstreamChallenge(
        f"Qwen Chat answered with {kind} (HTTP {status}) instead of the API response, on every "
        "attempt. Its firewall is blocking this server's requests; retry later, or from another address."
    )
