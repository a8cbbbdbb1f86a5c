"""The error responses the emulator can inject, as plain data.

Directive parsing lives in ``directive.py`` and is re-exported here, where the first
emulator version defined it. Nothing here does I/O; the server turns
:class:`HttpFault` into a response.

Two error styles exist: the Open-WebUI ``{"detail": …}`` of qwen-v1 (§2.5, [I]) and
the v2 envelope ``{"success": false, "request_id", "data": {"code", "details"}}``
sent with HTTP 200 and the real status in ``x-actual-status-code`` (§4.5, [C]).
A third is the 2026 risk-control ("x5sec") JSON on HTTP 200 (§7.5 [C]), answered
for the ``risk_control`` fault and by the strict checks (``strict.py``).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import (
    DIRECTIVE_LINE,
    FAULTS,
    HTTP_FAULTS,
    NO_DIRECTIVE,
    STREAM_FAULTS,
    Directive,
    DirectiveError,
    build_directive,
    parse_directive,
    strip_directives,
)

__all__ = [
    "ACTUAL_STATUS_HEADER",
    "DIRECTIVE_LINE",
    "FAULTS",
    "GATEWAY_FIELDS",
    "HTTP_FAULTS",
    "IN_STREAM_ERROR",
    "NO_DIRECTIVE",
    "SLOW_DRIBBLE_DELAY_MS",
    "STREAM_FAULTS",
    "UNAUTHORIZED_DETAIL",
    "Directive",
    "DirectiveError",
    "HttpFault",
    "build_gateway_directive",
    "error_event",
    "http_fault",
    "parse_directive",
    "risk_control_body",
    "strip_directives",
    "v2_error_body",
    "v2_status_for",
]

UNAUTHORIZED_DETAIL = "Your session has expired or the token is invalid. Please sign in again."
ACTUAL_STATUS_HEADER = "x-actual-status-code"
# slow_dribble's gap: slow enough to notice, fast enough for an idle timeout test.
SLOW_DRIBBLE_DELAY_MS = 200.0
# The v1 in-stream error of the first emulator version, kept byte for byte.
IN_STREAM_ERROR: Mapping[str, Any] = {"error": {"code": "Bad_Request", "details": "internal error"}}

# [I] The real status behind each v2 code; only Unauthorized/RateLimited are captured.
_V2_STATUS = {
    "Unauthorized": 401,
    "unauthorized": 401,
    "Bad_Request": 400,
    "Not_Found": 404,
    "CHAT_NOT_FOUND": 404,
    "RateLimited": 429,
    "Too_Many_Requests": 429,
    "ContextLengthExceeded": 400,
    "RequestValidationError": 422,
    "invalid_input": 400,
    "PARENT_NOT_FOUND": 404,
}
# [I] Wording is not captured; relays must not depend on it, only on the code.
_V2_DETAILS = {
    "Unauthorized": "You have not logged in or your login has expired. Please sign in again.",
    "unauthorized": "You have not logged in or your login has expired. Please sign in again.",
    "Bad_Request": "internal error",
    "Not_Found": "Not Found",
    "CHAT_NOT_FOUND": "chat not found",
    "RateLimited": "You have reached the usage limit. Please try again later.",
    "Too_Many_Requests": "Too many requests. Please try again later.",
    "ContextLengthExceeded": "The input exceeds the model's context length.",
    "RequestValidationError": "request validation error",
    "invalid_input": "invalid input",
    "PARENT_NOT_FOUND": "parent message not found",
}
# The in-stream error the 2026 service sends as a bare string (§7.4 [C]).
INTERNAL_ERROR_STRING = "Internal error!"
# §7.5 [C]: the localised text after "RGV587_ERROR::SM::" is the captured one.
_RISK_RET = ("FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试")
_RISK_URL = (
    "https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish"
    "?x5secdata={secdata}&x5step=2&action=captcha&pureCaptcha="
)
# Directive fields that make sense on any path, before auth or a body is read.
GATEWAY_FIELDS = frozenset(
    {"fault", "retry_after", "code", "actual_status", "num", "details", "ttfb_ms", "stall_ms"}
)


@dataclass(frozen=True, slots=True)
class HttpFault:
    """A whole error response, as plain data."""

    status: int
    content_type: str | None
    body: bytes
    headers: Mapping[str, str]


def _html_page(status: int, reason: str) -> bytes:
    """Build the kind of bare HTML error page a gateway sends (§2.5: 5xx HTML)."""
    return (
        f"<html><head><title>{status} {reason}</title></head><body>"
        f"<center><h1>{status} {reason}</h1></center><hr><center>Tengine</center>"
        "</body></html>"
    ).encode()


_WAF_PAGE = (
    b"<!doctypehtml><html><head><meta charset=utf-8><title>aliyun_waf_aa</title>"
    b"<script>var _waf_=1;window.aliyun_waf_aa='FAIL_SYS_USER_VALIDATE';</script>"
    b"</head><body><div id=aliyun_waf_aa>Please slide to verify</div></body></html>"
)


def v2_status_for(code: str) -> int:
    """The real HTTP status the service pairs with a v2 error code (500 if unknown)."""
    return _V2_STATUS.get(code, 500)


def v2_error_body(code: str, details: str | None = None, num: int | None = None) -> dict[str, Any]:
    """Build the v2 error envelope (§4.5 [C]); ``num`` = hours to wait for RateLimited.

    [I] ``num`` sits beside ``code`` inside ``data``: the notes name it, not its place.
    """
    data: dict[str, Any] = {"code": code, "details": details or _V2_DETAILS.get(code, "error")}
    if num is not None:
        data["num"] = num
    return {"success": False, "request_id": str(uuid.uuid4()), "data": data}


def risk_control_body() -> dict[str, Any]:
    """The risk-control answer (§7.5 [C]); ``x5secdata`` is fresh each time, as captured."""
    url = _RISK_URL.format(secdata=secrets.token_hex(24))
    return {"ret": list(_RISK_RET), "data": {"url": url}}


def error_event(directive: Directive) -> dict[str, Any]:
    """The in-stream error event for this directive (§4.3, §7.4 [C]).

    ``fault: in_stream_error`` keeps the first version's Bad_Request event;
    ``stream_error`` names the code (details default per code, or ``details``) and
    ``stream_error_form`` the shape: ``{"error": {...}}``, the ``success: false``
    envelope (also for ``bare_json``, whose body is that envelope), or the string.
    """
    if directive.stream_error is None:
        return {"error": dict(IN_STREAM_ERROR["error"])}
    if directive.stream_error_form == "string":
        return {"error": INTERNAL_ERROR_STRING}
    if directive.stream_error_form in ("success_false", "bare_json"):
        return v2_error_body(directive.stream_error, directive.details, directive.num)
    error: dict[str, Any] = {
        "code": directive.stream_error,
        "details": directive.details or _V2_DETAILS.get(directive.stream_error, "error"),
    }
    if directive.num is not None:
        error["num"] = directive.num
    return {"error": error}


def http_fault(name: str, retry_after: float | None = None, directive: Directive | None = None) -> HttpFault:
    """Describe the response for one of :data:`HTTP_FAULTS` (§2.5, §4.5, §6.8)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = _format_seconds(retry_after)
    html = "text/html; charset=utf-8"
    if name in ("html_challenge", "waf"):
        # The WAF answers 200: relays broke while parsing, not on the status.
        return HttpFault(200, html, _WAF_PAGE, headers)
    if name == "v2_error":
        given = directive if directive is not None else NO_DIRECTIVE
        code = given.code or "Bad_Request"
        actual = given.actual_status or v2_status_for(code)
        headers[ACTUAL_STATUS_HEADER] = str(actual)
        body = json.dumps(v2_error_body(code, given.details, given.num)).encode()
        return HttpFault(200, "application/json", body, headers)
    if name == "risk_control":
        body = json.dumps(risk_control_body(), ensure_ascii=False).encode()
        return HttpFault(200, "application/json; charset=utf-8", body, headers)
    if name == "http_500_empty":
        return HttpFault(500, None, b"", headers)
    reasons = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    if name in ("http_500", "http_502", "http_503"):
        status = int(name[-3:])
        return HttpFault(status, html, _html_page(status, reasons[status]), headers)
    if name == "http_401":
        return HttpFault(401, "application/json", _detail(UNAUTHORIZED_DETAIL), headers)
    if name == "http_403":
        return HttpFault(403, html, _html_page(403, "Forbidden"), headers)
    if name == "http_429":
        return HttpFault(429, "application/json", _detail("Too many requests"), headers)
    raise ValueError(f"not an HTTP fault: {name!r}")


def build_gateway_directive(raw: Any) -> Directive:
    """Validate a directive armed for a path (``EmulatorState.arm``).

    A gateway fault is answered before the token is checked or a body read, so only
    HTTP faults, ``stall_before`` and ``ttfb_ms`` are allowed: they are the ones
    that also make sense for ``GET /api/models`` or ``POST /api/v2/chats/new``.
    """
    if not isinstance(raw, Mapping):
        raise DirectiveError("an armed directive must be a JSON object")
    extra = sorted(set(raw) - GATEWAY_FIELDS)
    if extra:
        raise DirectiveError(f"field(s) not allowed in an armed directive: {', '.join(extra)}")
    directive = build_directive(raw)
    if directive.fault not in (None, "stall_before", *HTTP_FAULTS):
        raise DirectiveError(f"fault {directive.fault!r} cannot be armed; only HTTP faults and stall_before")
    return directive


def _detail(message: str) -> bytes:
    return json.dumps({"detail": message}).encode()


def _format_seconds(value: float) -> str:
    """Render Retry-After as delta-seconds; RFC 9110 allows integers only."""
    return str(max(0, round(value)))
