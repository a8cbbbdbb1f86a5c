"""Request id, CORS, the access log, and errors rendered as OpenAI envelopes.

Errors raised before a response is prepared are rendered here, and only here,
as JSON with the right status (after the headers went out, ``pipeline.encode``
renders them as an SSE error event). Unknown exceptions become a generic 500:
the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .config import Config
from .errors import (
    BodyTooLarge,
    Draining,
    InvalidRequest,
    KeyRateLimited,
    MethodNotAllowed,
    ModelNotAllowed,
    NotFound,
    OriginNotAllowed,
    RelayError,
)
from .images.counters import take_request_images
from .keys import CONFIG, LIFECYCLE, METRICS, STATUS
from .logs import DeferredLog, request_id_var, request_tally_var
from .metrics import Metrics

__all__ = ["API_PATHS", "INFO", "RequestInfo", "error_response", "method_not_allowed", "not_found", "preflight", "relay_route",
           "response_headers"]

_access = logging.getLogger("relay.access")
_access_lines = DeferredLog(_access, "request")
_error = logging.getLogger("relay.error")

_ALLOW_METHODS = "GET, POST, OPTIONS"
#: the API: drained on SIGTERM, answered with CORS headers (the OpenAI paths and the translation endpoints).
API_PATHS = ("/v1/", "/translate", "/imme", "/kiss")
_DEFAULT_ALLOW_HEADERS = "authorization, content-type, api-key, x-api-key"
_EXPOSE_HEADERS = "Retry-After, X-Request-Id"
_PREFLIGHT_MAX_AGE_S = "86400"


#: the error codes of a relay key's own limits (rpm, max_concurrent, models): its "rejections".
_KEY_REJECTIONS = frozenset({KeyRateLimited.code, ModelNotAllowed.code})


@dataclass(slots=True)
class RequestInfo:
    """What a handler learns about a request, for its access-log line and the usage records.

    Who: ``key_name``, ``account_name`` and ``challenged`` are filled by
    ``operator.auth`` (it is the ``Served`` record of the caller) for every
    surface. What: ``prompt_tokens`` and ``completion_tokens`` by the handler
    once the answer's usage is known (``note_usage``), and ``error_code`` for an
    error after the response was committed (an in-stream error event).
    """

    request_id: str
    model: str | None = None
    stream: bool = False
    bytes_out: int = 0
    upstream_attempts: int = 0
    error_code: str | None = None
    client_gone: bool = False
    #: the relay key's name (operator mode).
    key_name: str | None = None
    #: the pool credential that served the request: an account's name, or a pool token's fingerprint.
    account_name: str | None = None
    #: pool credentials that met risk control during the request (it moved on to another).
    challenged: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: ``time.perf_counter()`` when the answer's head went out (0: not yet), and whether it is an SSE stream.
    first_byte_at: float = 0.0
    stream_open: bool = False

    def note_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Add an answer's usage: OpenAI's ``prompt_tokens``/``completion_tokens`` or ``input_``/``output_tokens``.

        Adds rather than sets: a request that asks the model more than once (a
        translation batch) counts every answer.
        """
        if not usage:
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt > 0:
            self.prompt_tokens += prompt
        if isinstance(completion, int) and not isinstance(completion, bool) and completion > 0:
            self.completion_tokens += completion


INFO = web.RequestKey("relay_info", RequestInfo)

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def _request_id(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    if given is not None and 0 < len(given) <= 64 and given.isascii() and \
            given.replace("-", "").replace("_", "").isalnum():
        return given
    # Ids need uniqueness, not secrecy: a PRNG draw avoids a getrandom syscall per request.
    return f"{random.getrandbits(96):024x}"


def relay_route(handler: Handler, label: str, on_request: Callable[[], None] | None = None,
                errors: Callable[[RelayError], web.Response] | None = None) -> Handler:
    """``handler`` with the request id, drain check, error envelopes, metrics and access log.

    Applied to each route when it is added, rather than as an aiohttp
    middleware: aiohttp then builds no middleware chain per request, which
    measured 2 µs per chat completion and 4 µs (10 %) per cached model list.
    ``label`` names the route in the metrics (the path template, or ``unmatched``);
    ``on_request`` is told of each request as it starts (``--busy-poll-us``);
    ``errors`` renders errors in the route's own envelope (a surface's), OpenAI's by default.
    """
    render = errors or error_response

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if on_request is not None:
            on_request()
        app = request.app
        info = RequestInfo(_request_id(request.headers.get("X-Request-Id")))
        request[INFO] = info
        # Not reset on the way out: aiohttp runs each request in a task of its own (with
        # its own context), and the id should stay on the lines logged while the
        # response is written, and is read back by the response-headers hook.
        request_id_var.set(info.request_id)
        request_tally_var.set(info)  # the transport counts its upstream attempts into it
        status = 500
        try:
            try:
                if app[LIFECYCLE].draining and request.path.startswith(API_PATHS):
                    raise Draining("The relay is shutting down; retry on another instance or in a moment.",
                                   retry_after_s=1)
                response = await handler(request)
            except RelayError as exc:
                info.error_code = info.error_code or exc.instance_code or exc.code  # whatever the envelope
                response = render(exc)
            except web.HTTPException as exc:
                response = render(_from_http(exc))
            except asyncio.CancelledError:
                info.client_gone = True
                status = 499  # nginx's "client closed request"
                raise
            except Exception:  # noqa: BLE001 (the one place that must catch everything)
                _error.exception("unhandled_error", extra={"fields": {"path": request.path}})
                response = render(RelayError("The relay failed while handling this request."))
            status = response.status
            if app[LIFECYCLE].draining:
                # Connection: close, so that a keep-alive client (nginx's pool, an SDK) reconnects, to
                # another worker or host, instead of meeting this draining one again (issue 21).
                response.force_close()
            if status >= 400 and isinstance(response, web.Response):  # errors only: successes skip both checks
                if not info.bytes_out:
                    info.bytes_out = response.content_length or 0  # the envelope, for the access line
                if status == 408 and response.keep_alive is False:
                    await _send_and_close(request, response)
                if info.error_code is None:
                    info.error_code = _code_of(response)
            if info.client_gone:
                status = 499
            return response
        finally:
            metrics = app[METRICS]
            metrics.count_request(request.method, label, status)
            metrics.bytes_out += info.bytes_out
            _count_answer(metrics, info, label, status, started)
            if info.key_name is not None or info.account_name is not None or info.challenged:
                _record_usage(app, info, status)
            if _access.isEnabledFor(logging.INFO):
                _log_access(request, info, status, started)

    return handle


def method_not_allowed(allowed: str) -> Handler:
    """The handler for any other method on a known path: 405 naming the allowed ones."""
    async def refuse(request: web.Request) -> web.StreamResponse:
        response = error_response(MethodNotAllowed(f"Method not allowed here; allowed: {allowed}."))
        response.headers["Allow"] = allowed  # RFC 9110 §15.5.6: a 405 names the allowed methods
        return response

    return refuse


async def not_found(request: web.Request) -> web.StreamResponse:
    """The handler for every path the relay does not serve."""
    raise NotFound("Unknown path. The API lives under /v1: /v1/models, /v1/chat/completions, /v1/messages, "
                   "/v1/responses.")


def _count_answer(metrics: Metrics, info: RequestInfo, route: str, status: int, started: float) -> None:
    """The request's timing, error code and tokens into /metrics; a stream it opened is closed now.

    A whole answer returned by its handler goes out right after this: its first
    byte is counted as now. A client that went away (499) is not an error here,
    as in the usage records.
    """
    now = time.perf_counter()
    metrics.time_request(route, now - started, (info.first_byte_at or now) - started)
    if (status >= 400 or info.error_code is not None) and not info.client_gone:
        metrics.count_error(route, info.error_code or f"http_{status}")
    if info.key_name is not None:
        metrics.count_usage(info.key_name, info.prompt_tokens, info.completion_tokens)
    if info.stream_open:
        metrics.streams_open -= 1


def _record_usage(app: web.Application, info: RequestInfo, status: int) -> None:
    """Count the request for its key and account, today; never waits (``relay/status/usage.py``).

    An error is a status of 400 or more, or an error event after a 200; a client
    that went away (499) is not the relay's error. A rejection is the key's own
    limit refusing it.
    """
    failed = not info.client_gone and (status >= 400 or info.error_code is not None)
    app[STATUS].usage.record(
        key=info.key_name, account=info.account_name, failed=failed,
        rejected=info.key_name is not None and info.error_code in _KEY_REJECTIONS,
        prompt_tokens=info.prompt_tokens, completion_tokens=info.completion_tokens, challenged=info.challenged)


def _log_access(request: web.Request, info: RequestInfo, status: int, started: float) -> None:
    line = {
        # request_id first: where the formatter would have put it (see DeferredLog).
        "request_id": info.request_id,
        # pid: which worker served it (--workers); a ~0.1 µs syscall (glibc caches no pid).
        "pid": os.getpid(), "method": request.method, "path": request.path, "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "bytes_out": info.bytes_out, "model": info.model, "stream": info.stream,
        "upstream_attempts": info.upstream_attempts, "error_code": info.error_code,
    }
    images_in, images_out = take_request_images()  # counts only: never an image's bytes or URL
    if images_in or images_out:
        line["images_in"], line["images_out"] = images_in, images_out
    _access_lines.add(line)


async def _send_and_close(request: web.Request, response: web.Response) -> None:
    """Send an error that ends the connection, then close it at once.

    Without this aiohttp would keep reading ("lingering") a slowloris body for
    10 s after the 408; the point of the 408 is to stop doing that.
    """
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


def error_response(exc: RelayError) -> web.Response:
    body = json.dumps(exc.envelope(), ensure_ascii=False).encode("utf-8", "replace")
    response = web.Response(status=exc.http_status, body=body, content_type="application/json")
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if exc.closes_connection:
        response.force_close()
    return response


def _code_of(response: web.Response) -> str | None:
    try:
        code = json.loads(response.body or b"{}")["error"]["code"]  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _from_http(exc: web.HTTPException) -> RelayError:
    """An aiohttp exception a handler let out (e.g. from ``request.read()``), as our error."""
    if exc.status == 413:
        return BodyTooLarge("The request body is too large (--max-body-bytes).")
    return InvalidRequest(exc.reason)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    config = request.app[CONFIG]
    if config.cors_allows_any:
        return "*"
    return origin if origin in config.cors_origins else None


def response_headers(config: Config) -> ResponseHook:
    """Build the ``on_response_prepare`` hook: request id and CORS on every response, streams included.

    Built once per app, so the CORS policy is read from the (frozen) config once
    rather than through ``request.app`` on every response.
    """
    allows_any = config.cors_allows_any
    origins = config.cors_origins

    async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
        info = request.get(INFO)
        if info is not None and not info.first_byte_at:  # the head goes out now: time to first byte
            info.first_byte_at = time.perf_counter()
            if response.content_type == "text/event-stream":
                info.stream_open = True
                request.app[METRICS].streams_open += 1
        headers = response.headers
        request_id = request_id_var.get()
        if request_id is not None:  # None: an answer aiohttp made before the middleware ran
            headers["X-Request-Id"] = request_id
        if not request.path.startswith(API_PATHS):
            return
        origin = request.headers.get("Origin")
        if origin is None:
            # With "*" every /v1 response says so, Origin or not (a cached response may be
            # reused for a browser); with a list, only a matching Origin gets an answer.
            if allows_any:
                headers["Access-Control-Allow-Origin"] = "*"
            return
        if allows_any or origin in origins:
            headers["Access-Control-Allow-Origin"] = "*" if allows_any else origin
            headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
        vary = headers.get("Vary")
        if vary is None:
            headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            headers["Vary"] = vary + ", Origin"

    return add_response_headers


async def preflight(request: web.Request) -> web.StreamResponse:
    """Answer a CORS preflight without authentication.

    Browser extensions (Immersive Translate sends ``api-key``) and browser apps
    using the openai JS SDK (``x-stainless-*``) ask for headers a fixed list
    would miss, so the requested headers are echoed back.
    """
    if request.headers.get("Origin") is not None and _allowed_origin(request) is None:
        return error_response(OriginNotAllowed("This origin is not allowed (--cors-origins)."))
    requested = request.headers.get("Access-Control-Request-Headers", "").strip()
    headers = {
        "Access-Control-Allow-Methods": _ALLOW_METHODS,
        "Access-Control-Allow-Headers": requested or _DEFAULT_ALLOW_HEADERS,
        "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE_S,
        "Allow": _ALLOW_METHODS,
        "Vary": "Origin, Access-Control-Request-Headers",
    }
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"
    return web.Response(status=204, headers=headers)
