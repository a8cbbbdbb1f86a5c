"""The relay's one exception tree, each class knowing its OpenAI wire form.

Errors are raised anywhere and rendered in exactly two places: the middleware
(before response headers: a JSON envelope with the right HTTP status) and
``pipeline.encode`` (after: an SSE ``data: {"error": ...}`` event then
``data: [DONE]``). Like h11's ``ProtocolError.error_status_hint``, the status
travels with the exception, so no handler maps exceptions by hand.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AdminKeyRequired",
    "AuthenticationFailed",
    "BodyTooLarge",
    "Draining",
    "ImageTooLarge",
    "ImageUrlNotAllowed",
    "InvalidRequest",
    "KeyRateLimited",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "OriginNotAllowed",
    "Overloaded",
    "PoolExhausted",
    "RelayError",
    "RequestTimeout",
    "StreamLimitExceeded",
    "UnsupportedImage",
    "UpstreamChallenge",
    "UpstreamError",
    "UpstreamInterrupted",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamUploadFailed",
]


class RelayError(Exception):
    """Base of every error the relay reports to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    #: the connection cannot be trusted for another request after this error.
    closes_connection: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.instance_code = code
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return self.status

    def envelope(self) -> dict[str, Any]:
        """Return the OpenAI error envelope ``{"error": {...}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.instance_code or self.code,
            }
        }


class InvalidRequest(RelayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The client sent its body too slowly (a slowloris, or a stalled upload)."""

    status = 408
    code = "request_timeout"
    closes_connection = True


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class OriginNotAllowed(InvalidRequest):
    status = 403
    type = "permission_error"
    code = "origin_not_allowed"


class ImageTooLarge(InvalidRequest):
    """An input image over the 20 MB Qwen Chat accepts per file (issue 20)."""

    code = "image_too_large"


class UnsupportedImage(InvalidRequest):
    """An input that is not an image the relay can hand to Qwen Chat (bad data URI, not PNG/JPEG/…)."""

    code = "unsupported_image"


class ImageUrlNotAllowed(InvalidRequest):
    """An image URL the relay will not fetch: ``--fetch-image-urls`` is off, or the target is not public."""

    code = "image_url_not_allowed"


class AuthenticationFailed(RelayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class AdminKeyRequired(RelayError):
    """``/status``: a valid relay key, but not one of ``[operator] admin_keys`` (issue 21)."""

    status = 403
    type = "permission_error"
    code = "admin_key_required"


class Overloaded(RelayError):
    """The relay itself is full: every concurrency slot is taken."""

    status = 429
    type = "rate_limit_error"
    code = "relay_overloaded"


class Draining(RelayError):
    """The relay is shutting down: no new requests; open streams are ended."""

    status = 503
    type = "server_error"
    code = "relay_draining"


class UpstreamRateLimited(RelayError):
    """Qwen Chat said 429; its Retry-After travels on to the client."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamRejected(RelayError):
    """Qwen Chat refused the request with a 4xx we pass on with its own status."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self._status = status

    @property
    def http_status(self) -> int:
        return self._status


class UpstreamError(RelayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError, ConnectionError):
    """Connection refused, DNS failure, reset, or 5xx after every retry."""

    code = "upstream_unavailable"


class UpstreamInterrupted(UpstreamUnavailable):
    """The answer broke off after its head: the connection, or an in-stream ``internal_error``.

    Another attempt may succeed; the handler makes one only while no byte has
    reached the client (the transport's own retries end at the response head).
    Clients see ``upstream_unavailable``, as for any broken connection.
    """


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream was silent for longer than ``--timeout``."""

    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not its protocol."""

    code = "upstream_protocol_error"


class UpstreamChallenge(UpstreamProtocolError):
    """An anti-bot (WAF) HTML page instead of JSON or SSE (§2.5, §4.5)."""

    code = "upstream_challenge"


class UpstreamUploadFailed(UpstreamError):
    """Qwen Chat's file store (OSS) refused an upload; the message carries OSS's ``<Code>``."""

    code = "upstream_upload_failed"


class StreamLimitExceeded(UpstreamProtocolError):
    """An upstream SSE line longer than ``--max-line-bytes``."""

    code = "upstream_line_too_long"


class ModelNotAllowed(RelayError):
    """Operator mode: the caller's relay key is not allowed this model.

    403 rather than OpenAI's 404 ``model_not_found``: the model exists, and an
    operator debugging a client wants to see that the key, not the model, is the cause.
    """

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class KeyRateLimited(RelayError):
    """Operator mode: the caller's relay key is over its rpm or concurrency limit."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class PoolExhausted(RelayError):
    """Operator mode: every Qwen token of the pool is disabled or cooling down."""

    status = 503
    type = "server_error"
    code = "no_upstream_token"
