"""The upstream HTTP client: one keep-alive pool, retries, exception mapping.

This is the one boundary where transport errors and timeouts become
``Upstream*`` errors (encode/httpcore's ``map_exceptions``), always chained
with ``raise ... from``. Above it, nothing knows about sockets.

It knows HTTP only: status, headers, bytes, timeouts. What an answer means in
Qwen Chat's conventions (a status in ``x-actual-status-code``, risk control, a
WAF page) is the dialect's call: the client hands every answer that is not
plainly successful to the ``refusal`` function it was given, and retries when
that says another attempt may help. The request headers come with each call.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from ..config import Config
from ..errors import (
    RelayError,
    StreamLimitExceeded,
    UpstreamInterrupted,
    UpstreamProtocolError,
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
from .retry import backoff_s

__all__ = ["BackgroundRequest", "Exchange", "Headers", "Refusal", "RefusalCheck", "UpstreamClient", "UpstreamResponse"]

_log = logging.getLogger("relay.upstream")

Headers = Sequence[tuple[str, str]]
_ERROR_BODY_BYTES = 64 * 1024
#: bounds a chat-creation or stop answer: a few hundred bytes in practice.
_SMALL_JSON_BYTES = 1024 * 1024
#: keep-alive connections beyond the concurrency limit (models fetches, stop requests).
POOL_HEADROOM = 32
#: background calls (stop, delete) in flight at once; more wait their turn, up to the backlog.
_BACKGROUND_CONCURRENCY = 8
#: background calls beyond this are dropped (logged): a chat left behind beats unbounded memory.
_BACKGROUND_BACKLOG = 1000


@dataclass(frozen=True, slots=True)
class BackgroundRequest:
    """One call of ``send_in_background``; ``event`` is logged when it is done (``…_failed`` if not)."""

    method: str
    path: str
    headers: Headers
    body: dict[str, Any] | None
    event: str


class Refusal(Protocol):
    """What a refused answer means (``relay.dialects.v2_errors.Refusal`` is one)."""

    @property
    def error(self) -> RelayError: ...
    @property
    def retryable(self) -> bool: ...
    @property
    def retry_after_s(self) -> float | None: ...


#: (status, headers, content type, start of the body) → what it means, or None if it is fine.
RefusalCheck = Callable[[int, Mapping[str, str], str, bytes], Refusal | None]
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
        return UpstreamInterrupted("The upstream connection broke in the middle of the answer.")


class UpstreamClient:
    """Requests to one origin over a shared keep-alive pool."""

    def __init__(self, origin: str, config: Config, metrics: Metrics | None = None, *,
                 refusal: RefusalCheck) -> None:
        self._origin = origin.rstrip("/")
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._refusal = refusal
        timeout_s = config.timeouts.upstream_s
        self._pool = Http1Pool(self._origin, limit=config.limits.max_concurrency + POOL_HEADROOM,
                               connect_timeout_s=timeout_s, read_timeout_s=timeout_s,
                               keep_headers=HEADERS_READ)
        #: the request head after the request line, before the call's own headers.
        self._fixed_head = f"Host: {self._pool.host_header}\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n"
        #: responses being read right now, so a drain can end them at its deadline.
        self._open: set[UpstreamResponse] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._background_slots = asyncio.Semaphore(_BACKGROUND_CONCURRENCY)

    @property
    def origin(self) -> str:
        return self._origin

    async def close(self) -> None:
        """Close the idle keep-alive connections (open responses belong to their handlers)."""
        await self._pool.close()

    async def send_json(self, method: str, path: str, headers: Headers, body: dict[str, Any] | None) -> Any:
        """Send a call and return its decoded JSON answer (chat creation, stop, delete)."""
        async with self.open(method, path, headers=headers, json_body=body) as response:
            return await response.read_json(_SMALL_JSON_BYTES)

    def send_in_background(self, requests: Sequence[BackgroundRequest]) -> None:
        """Fire short calls, one after another, that nobody waits for (stop, then delete a chat).

        Runs as its own task, because the handler that wants it may be being
        cancelled; at most ``_BACKGROUND_CONCURRENCY`` such tasks send at once,
        and past ``_BACKGROUND_BACKLOG`` waiting they are dropped (logged).
        Failures are only logged: a client never waits for, or fails by, these.
        """
        if not requests:
            return
        if len(self._background) >= _BACKGROUND_BACKLOG:
            _log.warning("upstream_background_skipped", extra={"fields": {"reason": "backlog_full"}})
            return

        async def send() -> None:
            async with self._background_slots:
                for request in requests:
                    try:
                        async with asyncio.timeout(self._config.timeouts.upstream_s):
                            await self.send_json(request.method, request.path, request.headers, request.body)
                        _log.info(request.event)
                    except (RelayError, TimeoutError) as exc:
                        _log.warning(request.event + "_failed", extra={"fields": {"error": type(exc).__name__}})

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def abort_all(self, error: RelayError) -> int:
        """Abort every response still being read; return how many there were."""
        responses = list(self._open)
        for response in responses:
            response.abort(error)
        return len(responses)

    def open(self, method: str, path: str, *, headers: Headers, json_body: dict[str, Any] | None = None) -> Exchange:
        """``async with client.open(...) as response``: send, retrying before the first byte.

        The response is closed (not released to the pool) unless it was read to
        the end: a half-read connection must never be reused, and closing it is
        how a client disconnect stops the upstream from generating.
        """
        data = dumps(json_body) if json_body is not None else None
        return Exchange(self, self._head(method, path, headers, data), data)

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

    def _head(self, method: str, path: str, headers: Headers, data: bytes | None) -> bytes:
        """The request head: the client's two fixed headers, then the call's own."""
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        if "\n" in lines.replace("\r\n", "") or "\r" in lines.replace("\r\n", ""):
            # Also checked at the edge (tokens, config): a header must never split here.
            raise UpstreamProtocolError("An upstream request header holds a line break.")
        body_headers = f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n" if data is not None else ""
        return f"{method} {self._pool.base_path}{path} HTTP/1.1\r\n{self._fixed_head}{lines}{body_headers}\r\n".encode()

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
        """Raise what a non-plain answer means, as the dialect's ``refusal`` reads it.

        The body's start is read only for an answer that looks refused (not 2xx,
        HTML, or a 2xx whose ``x-actual-status-code`` says otherwise): a stream
        is never read ahead here.
        """
        actual = response.headers.get("x-actual-status-code", "")
        if (200 <= response.status < 300 and response.content_type != "text/html"
                and not (actual.isdigit() and int(actual) >= 400)):
            return
        head = await _read_some(response)
        refusal = self._refusal(response.status, response.headers, response.content_type, head)
        if refusal is None:
            raise UpstreamProtocolError(f"The upstream answered HTTP {response.status} with a body it could "
                                        "not be read as an answer.")
        if refusal.retryable:
            raise _Retryable(refusal.error, refusal.retry_after_s)
        raise refusal.error


class Exchange:
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
