"""How today's Qwen Chat says no (qwen-v2, §4.5, §7.4, §7.5): every convention, one place.

The service answers errors in many shapes, often with HTTP 200: the real status in
``x-actual-status-code`` and ``{"success": false, "data": {"code": …}}`` as the body;
the risk-control answer ``{"ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::…"]}``;
a WAF slider page in HTML; and inside a stream ``data: {"error": {…}}``,
``data: {"error": "Internal error!"}`` or ``data: {"success": false, …}``. The
transport only knows HTTP (status, headers, bytes); it hands a refused answer to
``refusal`` here, and the stream stages hand each payload to ``payload_error``.

What each code means for the client (the issue "Today's chat.qwen.ai, for real"):

- risk control (``ret`` or a WAF page) → 502 ``upstream_challenge``; never retried
  on the same credential: the credential cools (``UpstreamChallenge``), the pool
  moves the request to another one;
- ``Unauthorized`` (also 401-in-200) → 401 ``invalid_api_key``;
- ``Bad_Request`` → 502 ``upstream_bad_request`` (in 2026 almost always the
  missing ``version`` header); ``RequestValidationError``, ``invalid_input``,
  ``PARENT_NOT_FOUND`` → 502 with the upstream's own text;
  ``CHAT_NOT_FOUND`` → ``ChatNotFound`` (the handler retries once on a new chat);
- ``RateLimited`` (``num`` hours), ``Too_Many_Requests``, ``quota_limit``,
  ``quotaLimited``, HTTP 429 → 429 with ``Retry-After``;
- ``internal_error`` / "Internal error!" → ``UpstreamUnavailable``: retried like a
  5xx before any byte reached the client, an error event after;
- ``ContextLengthExceeded`` → ``finish_reason: "length"`` in a stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AuthenticationFailed,
    RelayError,
    UpstreamChallenge,
    UpstreamError,
    UpstreamInterrupted,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ..jsonio import loads
from ..upstream.retry import parse_retry_after
from .common import describe_error

__all__ = [
    "CONTEXT_LENGTH_CODE",
    "ChatNotFound",
    "Refusal",
    "challenge",
    "code_error",
    "is_challenge_page",
    "payload_error",
    "refusal",
]

#: ``instance_code`` of the error ``payload_error`` returns for a context overflow.
CONTEXT_LENGTH_CODE = "context_length_exceeded"
_SECONDS_PER_HOUR = 3600
#: a 429 without Retry-After or ``num``: Qwen Chat's short limits are per minute.
_DEFAULT_RETRY_AFTER_S = 60.0
#: markers of the WAF slider page (§7.5 [C]); any one in an HTML body is a challenge.
_WAF_MARKERS = (b"aliyun_waf", b"_____tmd_____", b"punish", b"x5sec", b"x5referer", b"baxia",
                b"FAIL_SYS_USER_VALIDATE", b"RGV587_ERROR", "人机验证".encode(), "安全验证".encode())
_RISK_CONTROL_RET = ("FAIL_SYS_USER_VALIDATE", "RGV587_ERROR")
_AUTH_CODES = frozenset({"unauthorized", "invalid_token", "token_expired"})
_RATE_CODES = frozenset({"ratelimited", "rate_limited", "too_many_requests", "quota_limit", "quotalimited",
                         "quota_limited"})
_REJECTED_CODES = frozenset({"requestvalidationerror", "invalid_input", "parent_not_found", "not_found"})
_INTERNAL_CODES = frozenset({"internal_error", "internalerror"})
_CONTEXT_CODES = frozenset({"contextlengthexceeded", "context_length_exceeded"})
CHALLENGE_ADVICE = (
    "Qwen Chat's risk control challenged this account's request ({what}). The relay will not retry it on "
    "the same credential, which would deepen the mark; the credential rests for {cooldown}. What helps: "
    "paste the browser's current cookie jar and bx-ua / bx-umidtoken / bx-v values for this login, use a "
    "clean egress IP or proxy, keep folded prompts under --max-upstream-body-bytes, and slow bursts down."
)


class ChatNotFound(UpstreamRejected):
    """``CHAT_NOT_FOUND``: the chat is gone (deleted); a new chat may succeed."""

    code = "upstream_chat_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a refused upstream answer means: the error, and whether another attempt may fix it."""

    error: RelayError
    retryable: bool = False
    retry_after_s: float | None = None


def challenge(what: str, cooldown: str = "--challenge-cooldown seconds") -> UpstreamChallenge:
    return UpstreamChallenge(CHALLENGE_ADVICE.format(what=what, cooldown=cooldown))


def is_challenge_page(body: bytes) -> bool:
    """An HTML body carrying any marker of the WAF slider page."""
    return any(marker in body for marker in _WAF_MARKERS)


def _risk_control(payload: dict[str, Any]) -> UpstreamChallenge | None:
    ret = payload.get("ret")
    if isinstance(ret, list) and any(isinstance(item, str) and item.startswith(_RISK_CONTROL_RET) for item in ret):
        return challenge("risk-control answer FAIL_SYS_USER_VALIDATE / RGV587")
    return None


def code_error(error: Any, status: int | None = None) -> RelayError:
    """One upstream error object (``{"code", "details", "num"}`` or a string) as our error."""
    code, message = describe_error(error)
    key = code.lower()
    text = f"Qwen Chat error {code or status or 'unknown'}: {message or 'no details'}"
    if key in _CONTEXT_CODES:
        return UpstreamError(text, code=CONTEXT_LENGTH_CODE)
    if key in _AUTH_CODES or status in (401, 403):
        return AuthenticationFailed("Qwen Chat rejected the token (expired or invalid); sign in again "
                                    "and copy a fresh token.")
    if key in _RATE_CODES or status == 429:
        hours = error.get("num") if isinstance(error, dict) else None
        retry_after = (float(hours) * _SECONDS_PER_HOUR if isinstance(hours, int | float) and hours > 0
                       else _DEFAULT_RETRY_AFTER_S)
        return UpstreamRateLimited(text, retry_after_s=retry_after)
    if key == "bad_request":
        return UpstreamError(f"{text}. Qwen Chat answers Bad_Request when the web app's 'version' header "
                             "is missing or too old: set --web-version to the version chat.qwen.ai sends now.",
                             code="upstream_bad_request")
    if key == "chat_not_found":
        return ChatNotFound(text)
    if key in _INTERNAL_CODES or (not code and message.strip().lower().rstrip("!.") == "internal error"):
        return UpstreamInterrupted(text, code="upstream_internal_error")
    if key in _REJECTED_CODES:
        return UpstreamError(text, code="upstream_rejected")
    return UpstreamError(text, code="upstream_error")


def payload_error(payload: Any, status: int | None = None) -> RelayError | None:
    """The error a JSON payload (a whole body, or one ``data:`` event) carries, or None.

    Recognised: the risk-control ``ret``, ``{"success": false, "data": {…}}``,
    ``{"error": {…}}`` and ``{"error": "Internal error!"}``. A context overflow comes
    back as an error whose ``instance_code`` is ``CONTEXT_LENGTH_CODE``: a stream
    ends with ``finish_reason: "length"`` instead.
    """
    if not isinstance(payload, dict):
        return None
    risk = _risk_control(payload)
    if risk is not None:
        return risk
    if payload.get("success") is False:
        return code_error(payload.get("data"), status)
    error = payload.get("error")
    if error is not None and error != {}:
        return code_error(error, status)
    return None


def _detail(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return text if text and not text.startswith("<") else "no details"


def refusal(status: int, headers: Mapping[str, str], content_type: str, body: bytes) -> Refusal | None:
    """What an answer that is not plainly a stream means; None when it is fine after all.

    ``status`` is the HTTP status, ``body`` the start of the answer (up to 64 KiB),
    read by the transport only when the status, ``x-actual-status-code`` or the
    content type made it necessary.
    """
    actual = headers.get("x-actual-status-code", "")
    if 200 <= status < 300 and actual.isdigit() and int(actual) >= 400:
        status = int(actual)  # JSON errors as HTTP 200 with the real status here (§4.5 [C])
    retry_after = parse_retry_after(headers.get("retry-after"))
    if content_type == "text/html" or (body[:1] == b"<" and is_challenge_page(body)):
        if is_challenge_page(body):
            return Refusal(challenge(f"the WAF slider page, HTTP {status}"))
        if status >= 500 or 200 <= status < 300:
            return Refusal(UpstreamUnavailable(f"Qwen Chat answered an HTML page (HTTP {status}) instead of "
                                               "the API response, on every attempt."), retryable=True,
                           retry_after_s=retry_after)
    payload = None
    if body[:1] in (b"{", b"[") or content_type == "application/json":
        try:
            payload = loads(body)
        except (ValueError, RecursionError):
            payload = None
    error = payload_error(payload, status if status >= 400 else None)
    if error is not None:
        if isinstance(error, UpstreamRateLimited) and retry_after is not None:
            error.retry_after_s = retry_after
        return Refusal(error, retryable=isinstance(error, UpstreamUnavailable), retry_after_s=retry_after)
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return Refusal(UpstreamProtocolError(f"Qwen Chat redirected the API request (HTTP {status}); "
                                             "check --upstream."))
    if status >= 500:
        return Refusal(UpstreamUnavailable(f"The upstream failed with HTTP {status} on every attempt "
                                           f"({_detail(body)})."), retryable=True, retry_after_s=retry_after)
    if status in (401, 403):
        return Refusal(code_error(None, status))
    if status == 429:
        return Refusal(UpstreamRateLimited(f"Qwen Chat is rate limiting this token ({_detail(body)}).",
                                           retry_after_s=retry_after or _DEFAULT_RETRY_AFTER_S))
    return Refusal(UpstreamRejected(f"Qwen Chat refused the request with HTTP {status}: {_detail(body)}",
                                    status=status if status in (400, 404, 413, 422) else 400))
