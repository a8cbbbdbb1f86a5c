"""Errors as Anthropic's clients read them: ``{"type": "error", "error": {"type", "message"}}``.

The status follows the relay's error, with Anthropic's type names; a relay that
is full answers 529 ``overloaded_error`` (the SDKs and Claude Code back off and
retry on it).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import ModelNotFound, Overloaded, RelayError
from ...jsonio import dumps

__all__ = ["error_body", "error_response"]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
          413: "request_too_large", 429: "rate_limit_error"}
MODELS_TABLE_HINT = (" Name a Qwen model (GET /v1/models), or map this id in the relay's config file: "
                     '[surfaces.anthropic.models] "claude-*" = "qwen3-coder-plus".')


def _status_and_type(exc: RelayError) -> tuple[int, str]:
    if isinstance(exc, Overloaded):
        return 529, "overloaded_error"
    status = exc.http_status
    return status, _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: RelayError) -> dict[str, Any]:
    message = exc.message
    if isinstance(exc, ModelNotFound):
        message += MODELS_TABLE_HINT
    return {"type": "error", "error": {"type": _status_and_type(exc)[1], "message": message}}


def error_response(exc: RelayError) -> web.Response:
    response = web.Response(status=_status_and_type(exc)[0], body=dumps(error_body(exc)),
                            content_type="application/json")
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if exc.closes_connection:
        response.force_close()
    return response
