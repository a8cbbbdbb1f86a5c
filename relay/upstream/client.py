"""The upstream HTTP client: one keep-alive pool, retries, exception mapping.

This is the one boundary where transport errors and timeouts become
``Upstream*`` errors (encode/httpcore's ``map_exceptions``), always chained
with ``raise ... from``. Above it, nothing knows about sockets.

Timeouts: ``--timeout`` bounds the connect (pool wait included), then the wait
for the response head, then each silent gap while reading the body: the pool's
one ticker checks every busy connection (``http1``), and the gap clock pauses
while reading is paused for backpressure, so a slow client never makes the
upstream look silent. Nothing caps a whole stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

from ..config import Config
from ..dialects.common import describe_error, error_from_payload
from ..errors import (
    AuthenticationFailed,
    RelayError,
    StreamLimitExceeded,
    UpstreamChallenge,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..jsonio import dumps, loads
from ..metrics import Metrics
from ..pipeline._util import stage
from .http1 import (
    ACCEPT_ENCODING,
    ConnectError,
    Http1Error,
    Http1Pool,
    Http1Response,
    ProtocolViolation,
    ReadTimeout,
)
from .retry import backoff_s, parse_retry_after

__all__ = ["BROWSER_HEADERS", "UpstreamClient", "UpstreamResponse"]

_log = logging.getLogger("relay.upstream")

#: What working relays send (§1); the original sent only Authorization + Content-Type.
BROWSER_HEADERS = {
    "User-Agent": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                   "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": ACCEPT_ENCODING,
}
_ERROR_BODY_BYTES = 64 * 1024
#: bounds a chat-creation or stop answer: a few hundred bytes in practice.
_SMALL_JSON_BYTES = 1024 * 1024
_CHALLENGE_MARKERS = (b"aliyun_waf", b"FAIL_SYS_USER_VALIDATE", b"RGV587_ERROR", b"punish", b"x5sec", b"baxia")
#: keep-alive connections beyond the concurrency limit (models fetches, stop requests).
POOL_HEADROOM = 32
#: the upstream response headers this module reads; the others are not kept.
HEADERS_READ = frozenset({"content-type", "content-encoding", "x-actual-status-code", "retry-after"})


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(self, error: RelayError, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s


class UpstreamResponse:
    """A successful (2xx, not HTML) upstream response, owned by ``open``."""

    __slots__ = ("_abort_error", "_response", "_timeout_s", "attempts")

    def __init__(self, response: Http1Response, attempts: int, timeout_s: float) -> None:
        self._response = response
        self.attempts = attempts
        self._timeout_s = timeout_s

    def abort(self, error: RelayError) -> None:
        """Close the connection now; the reader sees ``error`` instead of a broken pipe.

        Used by the drain at its deadline: each open stream's reader wakes up and
        the pipeline ends the stream with an error event and ``[DONE]``.
        """
        self._response.abort(error)

    def close(self) -> None:
        """Back to the pool if read to the end, else dropped (the upstream stops generating)."""
        self._response.close()

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        return self._response.content_type

    @stage
    async def iter_bytes(self, on_silence: Callable[[], Awaitable[None]] | None = None,
                         silence_s: float = 15.0,
                         before_wait: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, with transport faults mapped to ``Upstream*``.

        ``before_wait`` is awaited whenever the next read would have to wait for
        the network: the handler flushes the client output it has coalesced, so
        events that arrived together leave in one write, and none waits longer.

        ``on_silence`` is awaited after each ``silence_s`` without upstream bytes
        (the handler writes a keep-alive comment). It runs in the consumer's own
        task while the chain waits here, so it never races another write; the
        pool's ticker tells the read, no timer per read.
        """
        response = self._response
        wait_s = silence_s if on_silence is not None else None
        try:
            while True:
                chunk = response.read_nowait()  # what is already buffered, without waiting
                if chunk:
                    yield chunk
                    continue
                if response.complete:
                    return
                if before_wait is not None:
                    await before_wait()
                if await response.wait(wait_s) and on_silence is not None:
                    await on_silence()
        except Http1Error as exc:
            raise self._mapped(exc) from exc

    async def read_json(self, max_bytes: int) -> Any:
        """Read the whole body (at most ``max_bytes``) and decode it as JSON."""
        response = self._response
        chunks: list[bytes] = []
        size = 0
        try:
            # Usually the whole body came with the head: taken as it lies, no generator.
            while chunk := response.read_nowait() if response.complete else await response.read():
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise StreamLimitExceeded(f"The upstream answer is larger than {max_bytes} bytes "
                                              "(--max-line-bytes).")
        except Http1Error as exc:
            raise self._mapped(exc) from exc
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            return loads(body)
        except (ValueError, RecursionError) as exc:
            raise UpstreamProtocolError("The upstream answer is not valid JSON.") from exc

    def _mapped(self, exc: Http1Error) -> RelayError:
        """A transport fault while reading the body, as the ``Upstream*`` error it means."""
        if isinstance(exc, ReadTimeout):
            return UpstreamTimeout(f"The upstream was silent for more than {self._timeout_s:g} s (--timeout).")
        return UpstreamUnavailable("The upstream connection broke in the middle of the answer.")


class UpstreamClient:
    """Requests to one Qwen Chat origin over a shared keep-alive pool."""

    def __init__(self, origin: str, config: Config, metrics: Metrics | None = None) -> None:
        self._origin = origin.rstrip("/")
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        timeout_s = config.timeouts.upstream_s
        self._pool = Http1Pool(self._origin, limit=config.limits.max_concurrency + POOL_HEADROOM,
                               connect_timeout_s=timeout_s, read_timeout_s=timeout_s,
                               keep_headers=HEADERS_READ)
        # The web app's own Origin/Referer and "source" (§1 [C]); the original sent none.
        headers = {"Host": self._pool.host_header, **BROWSER_HEADERS, "Origin": self._origin,
                   "Referer": self._origin + "/", "source": "web"}
        headers = _merged(headers, config.upstream_headers)
        #: the request head after the request line, up to the per-request headers.
        self._fixed_head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        #: responses being read right now, so a drain can end them at its deadline.
        self._open: set[UpstreamResponse] = set()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def origin(self) -> str:
        return self._origin

    async def close(self) -> None:
        """Close the idle keep-alive connections (open responses belong to their handlers)."""
        await self._pool.close()

    async def post_json(self, path: str, body: dict[str, Any], *, token: str) -> Any:
        """POST a JSON body and return the decoded JSON answer (e.g. qwen-v2 chat creation)."""
        async with self.open("POST", path, token=token, json_body=body) as response:
            return await response.read_json(_SMALL_JSON_BYTES)

    def post_in_background(self, path: str, body: dict[str, Any], *, token: str, event: str) -> None:
        """Fire a short request that nobody waits for (the stop request after a client left).

        Runs as its own task, because the handler that wants it is being
        cancelled; tasks are kept referenced until done, failures only logged.
        """
        async def send() -> None:
            try:
                async with asyncio.timeout(self._config.timeouts.upstream_s):
                    await self.post_json(path, body, token=token)
                _log.info(event)
            except (RelayError, TimeoutError) as exc:
                _log.warning(event + "_failed", extra={"fields": {"error": type(exc).__name__}})

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def abort_all(self, error: RelayError) -> int:
        """Abort every response still being read; return how many there were."""
        responses = list(self._open)
        for response in responses:
            response.abort(error)
        return len(responses)

    def open(self, method: str, path: str, *, token: str, json_body: dict[str, Any] | None = None,
             stream: bool = False) -> _Exchange:
        """``async with client.open(...) as response``: send, retrying before the first byte.

        The response is closed (not released to the pool) unless it was read to
        the end: a half-read connection must never be reused, and closing it is
        how a client disconnect stops the upstream from generating.
        """
        data = dumps(json_body) if json_body is not None else None
        head = self._head(method, path, token, "text/event-stream" if stream else "application/json", data)
        return _Exchange(self, head, data)

    async def _send(self, head: bytes, data: bytes | None) -> UpstreamResponse:
        timeouts = self._config.timeouts
        attempts = self._config.retries
        for attempt in range(1, attempts + 1):
            self._metrics.upstream_attempts += 1
            started = time.perf_counter()
            try:
                try:
                    # The pool's own deadlines bound the connect and the wait for the response head.
                    response = await self._pool.request(head, data)
                except (Http1Error, OSError) as exc:
                    raise self._transport_error(exc) from exc
                if not _plainly_successful(response):  # the common answer skips the checking coroutine
                    await self._check_or_close(response)
            except _Retryable as failure:
                reason = failure.error.instance_code or failure.error.code or "error"
                if attempt >= attempts:
                    self._metrics.count_upstream_error(reason)
                    raise failure.error from failure
                self._metrics.count_retry(reason)
                delay = backoff_s(attempt, timeouts.backoff_base_s, timeouts.backoff_max_s,
                                  failure.retry_after_s)
                _log.warning("upstream_retry", extra={"fields": {
                    "attempt": attempt, "reason": reason, "delay_s": round(delay, 3)}})
                await asyncio.sleep(delay)
                continue
            except RelayError as error:
                self._metrics.count_upstream_error(error.instance_code or error.code or "error")
                raise
            self._metrics.upstream_first_byte.observe(time.perf_counter() - started)
            wrapped = UpstreamResponse(response, attempt, timeouts.upstream_s)
            self._open.add(wrapped)
            return wrapped
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _done(self, response: UpstreamResponse) -> None:
        self._open.discard(response)
        response.close()

    def _head(self, method: str, path: str, token: str, accept: str, data: bytes | None) -> bytes:
        """The request head: fixed headers once per client, four per request."""
        if "\r" in token or "\n" in token:  # also checked at the edge; a header must never split here
            raise AuthenticationFailed("The bearer token is malformed.")
        body_headers = f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n" if data is not None else ""
        return (f"{method} {self._pool.base_path}{path} HTTP/1.1\r\n{self._fixed_head}"
                f"Authorization: Bearer {token}\r\nAccept: {accept}\r\n{body_headers}\r\n"
                ).encode()

    def _transport_error(self, exc: Http1Error | OSError) -> Exception:
        """What a failed send or head wait means: a timeout, not HTTP, or retryable."""
        if isinstance(exc, TimeoutError):  # ConnectTimeout and ReadTimeout are TimeoutErrors
            return UpstreamTimeout(f"The upstream did not answer within {self._config.timeouts.upstream_s:g} s "
                                   "(--timeout).")
        if isinstance(exc, ProtocolViolation):  # e.g. a bad status line: not an HTTP server
            return UpstreamProtocolError("The upstream did not answer in well-formed HTTP.")
        name = type(exc.__cause__ if isinstance(exc, ConnectError) and exc.__cause__ else exc).__name__
        return _Retryable(UpstreamUnavailable(f"Cannot reach the upstream: {name}."))

    async def _check_or_close(self, response: Http1Response) -> None:
        try:
            await self._check(response)
        except BaseException:
            response.close()
            raise

    async def _check(self, response: Http1Response) -> None:
        """Raise what a non-plain answer means (see ``_plainly_successful``), reading its start if needed."""
        status = response.status
        actual = response.headers.get("x-actual-status-code", "")
        if 200 <= status < 300 and actual.isdigit() and int(actual) >= 400:
            # qwen-v2 sends JSON errors as HTTP 200 with the real status here (§4.5).
            status = int(actual)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if 200 <= status < 300:
            if response.content_type == "text/html":
                head = await _read_some(response)
                raise _Retryable(_challenge(head, status))
            return
        head = await _read_some(response)
        if 300 <= status < 400:
            raise UpstreamProtocolError(
                f"Qwen Chat redirected the API request (HTTP {status}); check --upstream.")
        if status >= 500:
            if response.content_type == "text/html" and _is_challenge(head):
                raise _Retryable(_challenge(head, status))
            raise _Retryable(UpstreamUnavailable(
                f"The upstream failed with HTTP {status} on every attempt ({_detail(head)})."), retry_after)
        v2_error = _v2_error(head)
        if v2_error is not None and status < 500:
            mapped = error_from_payload(v2_error, status)
            if isinstance(mapped, UpstreamRateLimited) and retry_after is not None:
                mapped.retry_after_s = retry_after
            raise mapped
        if status in (401, 403):
            raise AuthenticationFailed(
                f"Qwen Chat rejected the token (HTTP {status}: {_detail(head)}). Sign in to Qwen Chat "
                "again and use a fresh token.")
        if status == 429:
            raise UpstreamRateLimited(f"Qwen Chat is rate limiting this token ({_detail(head)}).",
                                      retry_after_s=retry_after if retry_after is not None else 60.0)
        if response.content_type == "text/html" and _is_challenge(head):
            raise _Retryable(_challenge(head, status))
        raise UpstreamRejected(f"Qwen Chat refused the request with HTTP {status}: {_detail(head)}",
                               status=status if status in (400, 404, 413, 422) else 400)


class _Exchange:
    """What ``async with client.open(...)`` runs: a class, not a generator.

    A generator-based context manager keeps its arguments (the request body)
    and its own frame for as long as the block runs, which for a stream is the
    stream's whole life; this keeps nothing once the request is sent.
    """

    __slots__ = ("_client", "_data", "_head", "_response")

    def __init__(self, client: UpstreamClient, head: bytes, data: bytes | None) -> None:
        self._client = client
        self._head = head
        self._data = data
        self._response: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        try:
            self._response = await self._client._send(self._head, self._data)
        finally:
            self._head = self._data = b""  # sent (or failed): a long prompt need not live on
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._response is not None:
            self._client._done(self._response)


def _plainly_successful(response: Http1Response) -> bool:
    """A 2xx that ``_check`` would accept without reading a byte: no qwen-v2 status override, not HTML."""
    return (200 <= response.status < 300 and "x-actual-status-code" not in response.headers
            and response.content_type != "text/html")


async def _read_some(response: Http1Response) -> bytes:
    """The start of an error body (for its message), never waiting past the read timeout."""
    body = b""
    try:
        while len(body) < _ERROR_BODY_BYTES:
            chunk = await response.read()
            if not chunk:
                break
            body += chunk
    except (RelayError, Http1Error):
        pass
    return body[:_ERROR_BODY_BYTES]


def _merged(headers: dict[str, str], extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """``headers`` with ``extra`` applied, names compared case-insensitively (config wins)."""
    merged = {name.lower(): (name, value) for name, value in headers.items()}
    for name, value in extra:
        if any(ch in name + value for ch in "\r\n\0"):
            raise ValueError(f"upstream header {name!r} holds a line break")
        merged[name.lower()] = (name, value)
    return dict(merged.values())


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


def _v2_error(body: bytes) -> dict[str, Any] | None:
    """The ``data`` of a qwen-v2 ``{"success": false, "data": {"code": ...}}`` body."""
    try:
        payload = loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, dict) and payload.get("success") is False and isinstance(payload.get("data"), dict):
        data: dict[str, Any] = payload["data"]
        return data
    return None


def _is_challenge(body: bytes) -> bool:
    return any(marker in body for marker in _CHALLENGE_MARKERS)


def _challenge(body: bytes, status: int) -> UpstreamError:
    kind = "an anti-bot (WAF) challenge page" if _is_challenge(body) else "an HTML page"
    return UpstreamChallenge(
        f"Qwen Chat answered with {kind} (HTTP {status}) instead of the API response, on every "
        "attempt. Its firewall is blocking this server's requests; retry later, or from another address."
    )
