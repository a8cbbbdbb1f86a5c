"""A lean HTTP/1.1 client for the one upstream origin: keep-alive pool, llhttp framing.

Why not aiohttp's client: the relay talks to one origin, with one shape of
request, and aiohttp's general machinery (URL objects, header multidicts, a task
per connect, trace hooks, a timer per read) cost 65 µs of CPU per request
against 15 µs here, and kept ~10 KiB per open stream. Framing (chunked,
content-length, close-delimited) is llhttp's, through ``httptools``: the one
part we must not write ourselves.

Timers: none per request. ``data_received`` only records the time, and one
ticker per pool checks every busy connection's deadlines (a quarter of the
shortest deadline apart, at most a second): a request arms and cancels no timer
(that was ~2 µs and a 0.5 KiB handle per open stream), and 9,000 open streams
cost one pass a second. So a deadline fires up to a quarter (at most 1 s) late.
The read deadline pauses with reading (backpressure from a slow client is not
upstream silence), like aiohttp's ``sock_read``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import Awaitable
from typing import Protocol, cast
from urllib.parse import urlsplit

import brotli
import httptools

from ..deadline import tick_for

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionBroken",
    "Http1Error",
    "Http1Pool",
    "Http1Response",
    "ProtocolViolation",
    "ReadTimeout",
]

#: body bytes buffered per response before the socket stops being read.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
#: what a browser (and aiohttp with brotli installed) offers; decoded here.
ACCEPT_ENCODING = "gzip, deflate, br"


class Http1Error(Exception):
    """Any failure of the transport or the framing."""


class ConnectError(Http1Error):
    """The TCP/TLS connection could not be opened."""


class ConnectTimeout(Http1Error, TimeoutError):
    """No connection (pool wait included) within the connect timeout."""


class ReadTimeout(Http1Error, TimeoutError):
    """The upstream sent nothing for the read timeout while we waited for it."""


class ConnectionBroken(Http1Error):
    """The connection closed or reset before the response was complete."""


class ProtocolViolation(Http1Error):
    """The peer broke HTTP/1.1: bytes that are not a response, an unsolicited
    second response, a protocol switch, or a body its Content-Encoding cannot decode."""


class _Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


def _decoder(coding: str) -> _Decoder | None:
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS + 32)  # zlib or gzip wrapper, auto-detected
    if coding == "br":
        return _Brotli()
    return None


class _Brotli:
    """Google's ``brotli`` names its streaming call ``process``."""

    __slots__ = ("_decompressor",)

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        out: bytes = self._decompressor.process(data)
        return out


class Http1Response:
    """One response: status, headers, and the body as it arrives.

    Owned by one consumer. ``read`` waits; ``read_nowait`` takes what is
    buffered. ``close`` gives a finished connection back to the pool and
    drops an unfinished one: that is how the upstream learns to stop generating.
    """

    __slots__ = ("_conn", "_decoder", "complete", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.complete = False
        coding = headers.get("content-encoding", "").strip().lower()
        self._decoder = _decoder(coding) if coding and coding != "identity" else None

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters ("" when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    def read_nowait(self) -> bytes:
        return self._conn.take()

    @property
    def at_eof(self) -> bool:
        """Complete, and every byte taken."""
        return self.complete and not self._conn.buffered

    def read(self, silence_s: float | None = None) -> Awaitable[bytes | None]:
        """The next bytes; ``b""`` at the end; None after ``silence_s`` without any.

        The connection's own coroutine, not one of ours around it: one frame less
        per read, and per open stream.
        """
        return self._conn.read(silence_s)

    def wait(self, silence_s: float | None = None) -> asyncio.Future[bool]:
        """Done when bytes, the end or an error arrive (then ``read_nowait`` tells which),
        or with True after ``silence_s`` without any.

        A future, not a coroutine: a stream waits here between events for most of
        its life, and a suspended coroutine frame would weigh on every open stream.
        """
        return self._conn.wait(silence_s)

    def close(self) -> None:
        self._conn.finish(self)

    def abort(self, error: BaseException) -> None:
        """End the response now; the reader sees ``error``."""
        self._conn.fail(error)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it arrives."""

    __slots__ = (
        "_busy",
        "_chunks",
        "_close_delimited",
        "_error",
        "_head_waiter",
        "_header_pairs",
        "_keep_alive",
        "_last_rx",
        "_loop",
        "_parser",
        "_paused",
        "_pool",
        "_response",
        "_silence_due",
        "_transport",
        "_waiter",
        "buffered",
        "idle_since",
        "lost",
    )

    def __init__(self, pool: Http1Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._header_pairs: list[tuple[bytes, bytes]] = []
        self._head_waiter: asyncio.Future[Http1Response] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._response: Http1Response | None = None
        self._chunks: list[bytes] = []
        self.buffered = 0
        self._error: BaseException | None = None
        self._busy = False
        self._paused = False
        self._keep_alive = False
        self._close_delimited = False
        self._last_rx = 0.0
        self._silence_due: float | None = None
        self.lost = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        if not self._busy:
            # Bytes nobody asked for on an idle connection: it cannot be trusted again.
            self._drop()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(ProtocolViolation("The upstream switched protocols."))
        except httptools.HttpParserError as exc:
            if self._response is not None and self._response.complete:
                self._drop()  # bytes after a whole answer: the answer stands, the connection does not
            else:
                self.fail(ProtocolViolation(f"Malformed HTTP from the upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.unwatch(self)
        response = self._response
        if self._busy and not (response is not None and response.complete):  # a whole answer stands
            if response is not None and self._close_delimited and exc is None:
                self.on_message_complete()  # the body ran until the close: that was its end
            else:
                where = " before answering." if response is None else " mid-answer."
                self.fail(ConnectionBroken("The upstream closed the connection" + where))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        pass  # requests are small and written whole

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ---------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is not None and self._response.complete:
            raise ProtocolViolation("A second response to one request.")  # stops llhttp; data_received drops us
        self._header_pairs = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        headers: dict[str, str] = {}
        keep = self._pool.keep_headers
        framed = False  # a length or chunked coding; else the body runs until the close
        for raw_name, raw_value in self._header_pairs:
            name = raw_name.decode("latin-1").lower()
            if name == "content-length" or (name == "transfer-encoding" and b"chunked" in raw_value.lower()):
                framed = True
            if keep is not None and name not in keep:
                continue
            value = raw_value.decode("latin-1").strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._header_pairs = []
        self._keep_alive = self._parser.should_keep_alive()
        self._close_delimited = not framed
        response = Http1Response(self, status, headers)
        self._response = response
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            return  # the body of an interim answer
        if response._decoder is not None:
            try:
                body = response._decoder.decompress(body)
            except (zlib.error, brotli.error) as exc:
                self.fail(ProtocolViolation(f"Undecodable compressed body from the upstream: {exc}"))
                return
            if not body:
                return
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return  # end of an interim answer
        response.complete = True
        self._pool.unwatch(self)  # whole: no deadline left to watch
        self._wake()

    # -- used by the pool and the response -------------------------------

    def send(self, data: bytes) -> asyncio.Future[Http1Response]:
        assert self._transport is not None
        self._busy = True
        self._error = None
        self._response = None
        self._chunks.clear()
        self.buffered = 0
        self._head_waiter = self._loop.create_future()
        self._last_rx = self._loop.time()
        self._silence_due = None
        self._transport.write(data)
        self._pool.watch(self)
        return self._head_waiter

    def take(self) -> bytes:
        """Everything buffered, as one bytes object (``b""`` if nothing)."""
        chunks = self._chunks
        if not chunks:
            if self._error is not None:
                raise self._error
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._last_rx = self._loop.time()  # the read deadline restarts with reading
            self._transport.resume_reading()
        return data

    async def read(self, silence_s: float | None) -> bytes | None:
        response = self._response
        while True:
            data = self.take()
            if data:
                return data
            if response is not None and response.complete:
                return b""
            if await self.wait(silence_s):
                return None

    def wait(self, silence_s: float | None) -> asyncio.Future[bool]:
        """See ``Http1Response.wait``; done at once if there is something to take."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        if self._chunks or self._error is not None or (self._response is not None and self._response.complete):
            waiter.set_result(False)
            return waiter
        self._waiter = waiter
        if silence_s is not None:
            self._silence_due = self._loop.time() + silence_s
            self._pool.tick_within(silence_s)
        else:
            self._silence_due = None
        return waiter

    def fail(self, error: BaseException) -> None:
        """End the exchange with ``error`` (the readers raise it) and drop the socket."""
        if self._error is None:
            self._error = error
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._wake()
        self._drop()

    def finish(self, response: Http1Response) -> None:
        """The consumer is done with ``response``: reuse the connection if it can be.

        A complete response leaves the connection clean even if the consumer
        skipped the rest of the body; an incomplete one never does.
        """
        if response is not self._response or not self._busy:
            return
        self._busy = False
        self._response = None
        self._pool.unwatch(self)
        reusable = response.complete and self._keep_alive and self._error is None and not self.lost
        self._chunks.clear()
        self.buffered = 0
        if reusable:
            if self._paused and self._transport is not None:
                self._paused = False  # a body left unread past HIGH_WATER: the next answer must be read
                self._transport.resume_reading()
            self._pool.release(self)
        else:
            self._drop()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def usable(self) -> bool:
        return not self.lost and self._transport is not None and not self._transport.is_closing()

    def _drop(self) -> None:
        self._busy = False
        self._pool.unwatch(self)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()  # unread bytes or a half exchange: never reuse

    def _wake(self, silent: bool = False) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._silence_due = None
            if not waiter.done():  # a reader cancelled while waiting leaves its future behind
                waiter.set_result(silent)

    # -- deadlines, checked by the pool's one ticker ----------------------

    def check_deadlines(self, now: float) -> None:
        """Fail a silent exchange, or give a waiting reader its silence turn."""
        if not self._busy or (self._response is not None and self._response.complete):
            self._pool.unwatch(self)
            return
        if self._paused:
            self._last_rx = now  # a slow client holds the stream back: not the upstream's silence
        elif now >= self._last_rx + self._pool.read_timeout_s:
            self.fail(ReadTimeout(f"The upstream sent nothing for {self._pool.read_timeout_s:g} s."))
            return
        if self._silence_due is not None and now >= self._silence_due:
            self._wake(silent=True)  # the reader is still waiting (bytes would have woken it)


class Http1Pool:
    """Keep-alive connections to one origin, at most ``limit`` at once."""

    def __init__(self, origin: str, *, limit: int, connect_timeout_s: float, read_timeout_s: float,
                 idle_s: float = 15.0, ssl_context: ssl.SSLContext | None = None,
                 keep_headers: frozenset[str] | None = None) -> None:
        """``keep_headers``: the (lower-case) response headers the caller reads; None keeps all.

        A response keeps its headers for as long as it is read, a stream's whole
        life; Qwen Chat's answers carry a dozen the relay never looks at (cookies).
        """
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_s = idle_s
        self.keep_headers = keep_headers
        self._idle: collections.deque[_Connection] = collections.deque()
        self._count = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        #: busy connections whose deadlines the ticker checks.
        self._watched: set[_Connection] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_s = tick_for(read_timeout_s)

    @property
    def connections(self) -> int:
        return self._count

    async def request(self, head: bytes, body: bytes | None) -> Http1Response:
        """Send one request (head already serialised) and wait for the response head.

        No silent second try, even on a reused connection that breaks before
        the head: the upstream may have seen the request, so the caller's retry
        policy (counted, with backoff) decides.
        """
        conn = self._idle_connection() or await self._new_connection()
        waiter = conn.send(head + body if body else head)
        try:
            return await waiter
        except BaseException:
            conn.fail(ConnectionBroken("The request was abandoned."))
            raise

    def _idle_connection(self) -> _Connection | None:
        """The newest usable idle connection, if any: no await on the common path."""
        idle = self._idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_s:
                return conn
            conn.fail(ConnectionBroken("idle connection expired"))
        return None

    async def _new_connection(self) -> _Connection:
        """A fresh connection, after waiting (FIFO) for room under the limit."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                while self._count >= self.limit:
                    waiter = self.loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except asyncio.CancelledError:
                        if waiter.done() and not waiter.cancelled():
                            self._wake_waiter()  # woken but not taking the slot: pass the turn on
                        raise
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                    idle = self._idle_connection()
                    if idle is not None:
                        return idle
                self._count += 1
                conn = _Connection(self)
                try:
                    await self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self._ssl,
                                                      server_hostname=self.host if self._ssl else None)
                except BaseException:
                    if conn.connected:  # cancelled just after connecting: connection_lost uncounts it
                        conn.fail(ConnectionBroken("connect abandoned"))
                    else:  # no connection_lost will come to uncount it
                        self._count -= 1
                        self._wake_waiter()
                    raise
        except TimeoutError as exc:
            raise ConnectTimeout(f"No connection to the upstream within {self.connect_timeout_s:g} s.") from exc
        except OSError as exc:
            raise ConnectError(f"Cannot connect to the upstream: {type(exc).__name__}.") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        """A finished connection goes back to the idle pool (newest last, used first)."""
        now = self.loop.time()
        if self._closed:
            conn.fail(ConnectionBroken("pool closed"))
            return
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        # The oldest idle connection past its time is closed on the way: no sweeper task.
        if idle[0].idle_since + self.idle_s <= now and idle[0] is not conn:
            idle.popleft().fail(ConnectionBroken("idle connection expired"))
        self._wake_waiter()

    def forget(self, conn: _Connection) -> None:
        """``conn`` is closed: it no longer counts against the limit."""
        self._count -= 1
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._wake_waiter()

    # -- the one ticker ---------------------------------------------------

    def watch(self, conn: _Connection) -> None:
        """Check ``conn``'s deadlines from now on, until ``unwatch``."""
        self._watched.add(conn)
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick_s, self._tick)

    def unwatch(self, conn: _Connection) -> None:
        self._watched.discard(conn)

    def tick_within(self, interval_s: float) -> None:
        """Tick often enough that a deadline ``interval_s`` away is seen on time (within a quarter)."""
        tick_s = tick_for(interval_s)
        if tick_s < self._tick_s:
            self._tick_s = tick_s
            if self._ticker is not None:
                self._ticker.cancel()
            self._ticker = self.loop.call_later(tick_s, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = self.loop.time()
        for conn in list(self._watched):  # a check may fail a connection, which unwatches it
            conn.check_deadlines(now)
        if self._watched:
            self._ticker = self.loop.call_later(self._tick_s, self._tick)

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        while self._idle:
            self._idle.pop().fail(ConnectionBroken("pool closed"))

