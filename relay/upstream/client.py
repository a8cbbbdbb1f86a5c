"""The upstream HTTP client: aiohttp's client, retries, exception mapping.

This is the one boundary where transport errors and timeouts become
``Upstream*`` errors (encode/httpcore's ``map_exceptions``), always chained
with ``raise ... from``. Above it, nothing knows about sockets or aiohttp.

It knows HTTP only: status, headers, bytes, timeouts. What an answer means in
Qwen Chat's conventions (a status in ``x-actual-status-code``, risk control, a
WAF page) is the dialect's call: the client hands every answer that is not
plainly successful to the ``refusal`` function it was given, and retries when
that says another attempt may help. The request headers come with each call;
the way out (direct or a proxy) is the shared ``Egress``'s.

Timeouts: ``--timeout`` bounds the connect (pool wait included), then the wait
for the response head, then each silent gap while reading the body: aiohttp's
own ``connect`` / ``sock_connect`` / ``sock_read``. aiohttp stops the read
clock while reading is paused for backpressure, so a slow client never makes
the upstream look silent. Nothing caps a whole stream.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from aiohttp import hdrs
from aiohttp.payload import BytesPayload
from aiohttp_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
from yarl import URL

from ..config import Config
from ..errors import (
    RelayError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..jsonio import dumps
from ..logs import count_upstream_attempt
from ..metrics import Metrics
from .egress import POOL_HEADROOM, Egress, EgressClosed, Route
from .recording import Capture, Recorder
from .response import UpstreamResponse, content_type_of
from .retry import backoff_s

__all__ = [
    "POOL_HEADROOM",
    "BackgroundRequest",
    "Exchange",
    "Headers",
    "Refusal",
    "RefusalCheck",
    "UpstreamClient",
]

_log = logging.getLogger("relay.upstream")

Headers = Sequence[tuple[str, str]]
#: ``on_cookies``: {name: value} of the cookies an answer set.
CookieSink = Callable[[Mapping[str, str]], None]
_ERROR_BODY_BYTES = 64 * 1024
#: bounds a chat-creation or stop answer: a few hundred bytes in practice.
_SMALL_JSON_BYTES = 1024 * 1024
#: redirects followed by a client made with ``follow_redirects`` (the auth host).
MAX_REDIRECTS = 5
#: background calls (stop, delete) in flight at once; more wait their turn, up to the backlog.
_BACKGROUND_CONCURRENCY = 8
#: background calls beyond this are dropped (logged): a chat left behind beats unbounded memory.
_BACKGROUND_BACKLOG = 1000
_CA_FILE_HINT = ("a TLS certificate error: the upstream's certificate is not trusted. Behind a "
                 "TLS-inspecting proxy, name its CA in the config file's [upstream] ca_file")


@dataclass(frozen=True, slots=True)
class BackgroundRequest:
    """One call of ``send_in_background``; ``event`` is logged when it is done (``…_failed`` if not)."""

    method: str
    path: str
    #: builds the headers when the call goes out, which may be a while after it was queued
    #: (a credential refreshed meanwhile sends its new token).
    headers: Callable[[], Headers]
    body: dict[str, Any] | None
    event: str
    proxy: str | None = None
    on_cookies: CookieSink | None = None


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


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(self, error: RelayError, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s


class UpstreamClient:
    """Requests to one origin through the shared ``Egress``."""

    def __init__(self, origin: str, config: Config, metrics: Metrics | None = None, *,
                 refusal: RefusalCheck, egress: Egress | None = None, follow_redirects: bool = False,
                 recorder: Recorder | None = None) -> None:
        """``egress``: the sessions to send through, shared with other clients and closed by
        its owner; without one the client makes and closes its own. ``follow_redirects``:
        follow up to ``MAX_REDIRECTS`` (the auth host); else a 3xx is a refusal like any other.
        ``recorder``: ``--record``, which gets every attempt (``upstream/recording.py``)."""
        self._origin = origin.rstrip("/")
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._refusal = refusal
        self._owns_egress = egress is None
        self._egress = egress if egress is not None else Egress.from_config(config)
        self._follow_redirects = follow_redirects
        self._recorder = recorder  # [record]
        timeout_s = config.timeouts.upstream_s
        # connect: the pool wait and the connection (through the proxy, TLS included);
        # sock_read: the wait for the head, then each silent gap in the body.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s,
                                              sock_read=timeout_s)
        #: responses being read right now, so a drain can end them at its deadline.
        self._open: set[UpstreamResponse] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._background_slots = asyncio.Semaphore(_BACKGROUND_CONCURRENCY)

    @property
    def origin(self) -> str:
        return self._origin

    async def close(self) -> None:
        """Close the client's own egress, if it made one (open responses belong to their handlers)."""
        if self._owns_egress:
            await self._egress.close()

    async def send_json(self, method: str, path: str, headers: Headers, body: dict[str, Any] | None, *,
                        proxy: str | None = None, on_cookies: CookieSink | None = None) -> Any:
        """Send a call and return its decoded JSON answer (chat creation, stop, delete)."""
        async with self.open(method, path, headers=headers, json_body=body, proxy=proxy,
                             on_cookies=on_cookies) as response:
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
                            await self.send_json(request.method, request.path, request.headers(), request.body,
                                                 proxy=request.proxy, on_cookies=request.on_cookies)
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

    def open(self, method: str, path: str, *, headers: Headers, json_body: dict[str, Any] | None = None,
             proxy: str | None = None, on_cookies: CookieSink | None = None) -> Exchange:
        """``async with client.open(...) as response``: send, retrying before the first byte.

        ``proxy`` is this call's own egress (an account's), over ``--proxy`` and the
        environment. ``on_cookies`` gets the cookies every answer sets, refused
        ones included, before the refusal is raised.

        The response is closed (not released to the pool) unless it was received
        to the end: a half-read connection must never be reused, and closing it
        is how a client disconnect stops the upstream from generating.
        """
        fields = "".join(chain.from_iterable(headers))  # one scan, in C, for every name and value
        if "\n" in fields or "\r" in fields:
            # Also checked at the edge (tokens, config): a header must never split here.
            raise UpstreamProtocolError("An upstream request header holds a line break.")
        data = dumps(json_body) if json_body is not None else None
        return Exchange(self, _Call(method, path, headers, data, proxy, on_cookies))

    async def _send(self, call: _Call) -> UpstreamResponse:
        timeouts = self._config.timeouts
        attempts = self._config.retries
        try:
            route = self._egress.route(self._origin, call.proxy)
        except ValueError as exc:
            raise UpstreamUnavailable(f"Cannot use the upstream proxy: {exc}") from exc
        except EgressClosed as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        url = URL(self._origin + call.path, encoded=True)  # sent as the dialect built it
        for attempt in range(1, attempts + 1):
            self._metrics.upstream_attempts += 1
            count_upstream_attempt()  # the access line of the request this is for
            started = time.perf_counter()
            capture = (self._recorder.open(self._origin, call.method, call.path, call.headers, call.data)
                       if self._recorder is not None else None)  # [record]
            try:
                response = await self._attempt(route, call, url, capture)
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
                call.headers = _renewed_request_id(call.headers)
                continue
            except RelayError as error:
                self._metrics.count_upstream_error(error.instance_code or error.code or "error")
                raise
            self._metrics.upstream_first_byte.observe(time.perf_counter() - started)
            wrapped = UpstreamResponse(response, attempt, timeouts.upstream_s, capture)
            self._open.add(wrapped)
            return wrapped
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, route: Route, call: _Call, url: URL,
                       capture: Capture | None = None) -> aiohttp.ClientResponse:
        """One try: the response head, checked; a fault as ``_Retryable`` or an ``Upstream*`` error."""
        try:
            # aiohttp's own timers bound the connect and the wait for the response head.
            # A fresh payload per attempt; its type yields to a Content-Type the call sent.
            body = BytesPayload(call.data, content_type="application/json") if call.data is not None else None
            response = await route.session.request(
                call.method, url, headers=call.headers, data=body, timeout=self._timeout,
                allow_redirects=self._follow_redirects, max_redirects=MAX_REDIRECTS)
        except Exception as exc:
            if capture is not None:  # [record]
                capture.close(error=exc)
            mapped = self._transport_error(exc, route)
            if mapped is exc:
                raise  # not a transport fault: a bug to see as it is
            raise mapped from exc
        if capture is not None:  # [record]
            capture.head(response)
        try:
            if call.on_cookies is not None:
                _report_cookies(response, call.on_cookies)
            if not _plainly_successful(response):  # the common answer skips the checking coroutine
                await self._check(response, capture)
        except BaseException:
            if capture is not None:  # [record] a refused answer is an exchange too
                capture.close(complete=response.content.at_eof())
            response.close()
            raise
        return response

    def _done(self, response: UpstreamResponse) -> None:
        self._open.discard(response)
        response.close()

    def _transport_error(self, exc: Exception, route: Route) -> Exception:
        """What a failed send or head wait means: a timeout, not HTTP, or retryable."""
        via = f" through the proxy {route.proxy}" if route.proxy else ""
        if _is_certificate_error(exc):
            # Never retried: the same certificate fails the same way.
            return UpstreamUnavailable(f"Cannot reach the upstream{via}: {_CA_FILE_HINT}.")
        if isinstance(exc, ProxyTimeoutError):
            return UpstreamTimeout(f"The proxy {route.proxy} did not connect to the upstream within "
                                   f"{self._config.timeouts.upstream_s:g} s (--timeout).")
        if isinstance(exc, TimeoutError):  # aiohttp's ConnectionTimeoutError and SocketTimeoutError too
            return UpstreamTimeout(f"The upstream{via} did not answer within {self._config.timeouts.upstream_s:g} s "
                                   "(--timeout).")
        if isinstance(exc, ProxyConnectionError | ProxyError | aiohttp.ClientHttpProxyError):
            # python-socks' own text names the proxy by host:port, or says what it refused.
            detail = str(exc) if isinstance(exc, ProxyError) else type(exc).__name__
            return _Retryable(UpstreamUnavailable(
                f"Cannot reach the upstream through the proxy {route.proxy}: {detail}."))
        if isinstance(exc, aiohttp.TooManyRedirects):
            return UpstreamProtocolError(f"The upstream redirected more than {MAX_REDIRECTS} times.")
        if isinstance(exc, aiohttp.ClientConnectionError | OSError):
            name = type(exc.__cause__ if isinstance(exc.__cause__, OSError) else exc).__name__
            return _Retryable(UpstreamUnavailable(f"Cannot reach the upstream{via}: {name}."))
        if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
            return UpstreamProtocolError("The upstream did not answer in well-formed HTTP.")
        if isinstance(exc, aiohttp.ClientError | ValueError):
            return UpstreamProtocolError(f"The upstream request failed: {type(exc).__name__}.")
        return exc

    async def _check(self, response: aiohttp.ClientResponse, capture: Capture | None = None) -> None:
        """Raise what a non-plain answer means, as the dialect's ``refusal`` reads it.

        The body's start is read only for an answer that looks refused (not 2xx,
        HTML, or a 2xx whose ``x-actual-status-code`` says otherwise): a stream
        is never read ahead here.
        """
        headers = response.headers
        content_type = content_type_of(response)
        actual = headers.get("x-actual-status-code", "")
        if (200 <= response.status < 300 and content_type != "text/html"
                and not (actual.isdigit() and int(actual) >= 400)):
            return
        head = await _read_some(response)
        if capture is not None:  # [record]
            capture.feed(head)
        refusal = self._refusal(response.status, headers, content_type, head)
        if refusal is None:
            raise UpstreamProtocolError(f"The upstream answered HTTP {response.status} with a body it could "
                                        "not be read as an answer.")
        if refusal.retryable:
            raise _Retryable(refusal.error, refusal.retry_after_s)
        raise refusal.error


def _renewed_request_id(headers: Headers) -> Headers:
    """The headers of another attempt: a request id (``x-request-id``) names one request, not a retry.

    Qwen Chat treats a request id it has seen before as a replay (risk control).
    """
    return [(name, str(uuid.uuid4()) if name.lower() == "x-request-id" else value) for name, value in headers]


@dataclass(slots=True)
class _Call:
    """One request as ``open`` was given it; ``data`` is the encoded JSON body."""

    method: str
    path: str
    headers: Headers
    data: bytes | None
    proxy: str | None
    on_cookies: CookieSink | None


class Exchange:
    """What ``async with client.open(...)`` runs: a class, not a generator.

    A generator-based context manager keeps its arguments (the request body)
    and its own frame for as long as the block runs, which for a stream is the
    stream's whole life; this keeps nothing once the request is sent.
    """

    __slots__ = ("_call", "_client", "_response")

    def __init__(self, client: UpstreamClient, call: _Call) -> None:
        self._client = client
        self._call: _Call | None = call
        self._response: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        call, self._call = self._call, None  # sent (or failed): a long prompt need not live on
        if call is None:
            raise RuntimeError("an Exchange is entered once")
        self._response = await self._client._send(call)
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._response is not None:
            self._client._done(self._response)


def _plainly_successful(response: aiohttp.ClientResponse) -> bool:
    """A 2xx that ``_check`` would accept without reading a byte: no qwen-v2 status override, not HTML."""
    return (200 <= response.status < 300 and "x-actual-status-code" not in response.headers
            and content_type_of(response) != "text/html")


def _report_cookies(response: aiohttp.ClientResponse, on_cookies: CookieSink) -> None:
    """Hand ``on_cookies`` the cookies this answer (and any redirect before it) set."""
    cookies: dict[str, str] = {}
    for answer in (*response.history, response):
        if hdrs.SET_COOKIE in answer.headers:
            cookies.update((name, morsel.value) for name, morsel in answer.cookies.items())
    if cookies:
        on_cookies(cookies)


def _is_certificate_error(exc: BaseException) -> bool:
    """aiohttp's certificate error, or ``ssl``'s raw one (a TLS start through a proxy), anywhere in the chain."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error body (for its message), never waiting past the read timeout."""
    content = response.content
    body = b""
    try:
        while len(body) < _ERROR_BODY_BYTES:
            chunk = await content.read(_ERROR_BODY_BYTES - len(body))
            if not chunk:
                break
            body += chunk
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return body
