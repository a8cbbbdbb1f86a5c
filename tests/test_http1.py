"""Http1Pool / Http1Response: the upstream client's own contract (relay/upstream/http1.py).

The integration suite reaches this client through the relay and the emulator;
here it faces raw ``asyncio.start_server`` peers on 127.0.0.1 that write exact
bytes, so framing, timing and faults are the test's to choose: a chunk cut
mid-size-line, a reset mid-body, a peer that stops reading. Every wait is
bounded; the few sleeps prove that something does *not* happen and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import brotli
import pytest

from relay.upstream.http1 import (
    HIGH_WATER,
    ConnectError,
    ConnectionBroken,
    ConnectTimeout,
    Http1Pool,
    Http1Response,
    ProtocolViolation,
    ReadTimeout,
)

T = TypeVar("T")

REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: the bound on every wait that should end at once; generous so a loaded CI machine passes.
WAIT_S = 5.0
#: short enough to keep the timeout tests fast, long enough to never fire by accident.
READ_TIMEOUT_S = 0.3


class Peer:
    """The server's end of one accepted connection, driven by the test or by a script."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: set once the client has closed (or reset) its end.
        self.closed = asyncio.Event()

    async def read_request(self) -> bytes:
        """The next request: head plus its Content-Length body; ``b""`` once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
            return b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                head += await self.reader.readexactly(int(value))
        return head

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def wait_closed(self) -> None:
        """Until the client closes its end (FIN or RST), discarding what it sends."""
        async with asyncio.timeout(WAIT_S):
            await self.until_closed()

    async def until_closed(self) -> None:
        """``wait_closed`` without a bound, for scripts (the teardown cancels them)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.closed.set()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN (SO_LINGER 0), as a crashed upstream does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 handing each connection to ``script``, or to the test.

    Without a script, ``accept()`` gives the test the next connection to drive
    byte by byte. ``accepted`` counts connections: how reuse is observed.
    """

    def __init__(self, script: Script | None) -> None:
        self.script = script
        self.accepted = 0
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._incoming: asyncio.Queue[Peer] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def accept(self) -> Peer:
        async with asyncio.timeout(WAIT_S):
            return await self._incoming.get()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        peer = Peer(reader, writer)
        self.peers.append(peer)
        if self.script is None:
            self._incoming.put_nowait(peer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(peer)
        except ConnectionError:
            pass  # the client went away: several tests do exactly that
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (surfaced at teardown, not lost in the loop's log)
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for peer in self.peers:
            peer.writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Harness:
    """Servers and pools made by one test, all closed when it ends."""

    def __init__(self) -> None:
        self.servers: list[RawServer] = []
        self.pools: list[Http1Pool] = []

    async def serve(self, script: Script | None = None) -> RawServer:
        server = RawServer(script)
        await server.start()
        self.servers.append(server)
        return server

    def pool(self, origin: str, **overrides: Any) -> Http1Pool:
        options: dict[str, Any] = {"limit": 4, "connect_timeout_s": WAIT_S, "read_timeout_s": WAIT_S,
                                   "idle_s": 60.0}
        pool = Http1Pool(origin, **{**options, **overrides})
        self.pools.append(pool)
        return pool


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness()
    yield made
    for pool in made.pools:
        await pool.close()
    for server in made.servers:
        await server.close()
    for server in made.servers:
        assert not server.errors, server.errors


# -- helpers -----------------------------------------------------------------


def ok(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """A response framed by Content-Length, with ``headers`` as given."""
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body: each piece one chunk, then the last-chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def answer(*responses: bytes) -> Script:
    """Per connection: answer its n-th request with ``responses[n]``, then wait for the close."""
    async def script(peer: Peer) -> None:
        for response in responses:
            if not await peer.read_request():
                return
            peer.write(response)
        await peer.until_closed()
    return script


def answer_forever(response: bytes) -> Script:
    """Keep-alive: answer every request on a connection with ``response``."""
    async def script(peer: Peer) -> None:
        while await peer.read_request():
            peer.write(response)
    return script


async def bounded(awaitable: Awaitable[T], timeout_s: float = WAIT_S) -> T:
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def read_all(response: Http1Response) -> bytes:
    body = bytearray()
    async with asyncio.timeout(WAIT_S):
        while chunk := await response.read():
            body += chunk
    return bytes(body)


async def fetch(pool: Http1Pool) -> tuple[Http1Response, bytes]:
    """One whole exchange: the response (closed) and its body."""
    response = await bounded(pool.request(REQUEST, None))
    body = await read_all(response)
    response.close()
    return response, body


async def opened(harness: Harness, **pool_options: Any) -> tuple[RawServer, Http1Pool,
                                                                  asyncio.Task[Http1Response], Peer]:
    """A test-driven server, a pool on it, and one request sent and already read by the peer."""
    server = await harness.serve()
    pool = harness.pool(server.origin, **pool_options)
    pending = asyncio.create_task(pool.request(REQUEST, None))
    peer = await server.accept()
    assert await bounded(peer.read_request()) == REQUEST
    return server, pool, pending, peer


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition``: the pool has no event for a socket it let go (``connection_lost``)."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.001)


# -- framing -----------------------------------------------------------------


async def test_content_length_body_and_request_bytes_arrive_exactly(harness: Harness) -> None:
    """The request goes out byte for byte; a Content-Length body is read to its end, not past."""
    server = await harness.serve()
    pool = harness.pool(server.origin)
    body = b'{"model": "qwen"}'
    request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
    pending = asyncio.create_task(pool.request(request, body))
    peer = await server.accept()
    assert await bounded(peer.read_request()) == request + body
    peer.write(ok(b"hello world", "Content-Type: Text/Plain; charset=utf-8"))
    response = await bounded(pending)
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await read_all(response) == b"hello world"
    assert response.complete and response.at_eof
    assert await bounded(response.read()) == b""  # the end stays the end


async def test_header_names_are_lower_cased_and_duplicates_joined(harness: Harness) -> None:
    """Lookups use lower-case names; a repeated header keeps every value, RFC 9110 list style."""
    server = await harness.serve(answer(ok(b"", "X-Dup: a", "x-DUP: b ", "X-Mixed-Case: Value",
                                           "Set-Cookie: one=1", "Set-Cookie: two=2")))
    response, _ = await fetch(harness.pool(server.origin))
    assert all(name == name.lower() for name in response.headers)
    assert response.headers["x-dup"] == "a, b"
    assert response.headers["x-mixed-case"] == "Value"
    assert response.headers["set-cookie"] == "one=1, two=2"
    assert response.content_type == ""


@pytest.mark.parametrize("framing", ["Content-Length: 100", "Transfer-Encoding: chunked"])
async def test_keep_headers_drops_the_rest_but_never_the_framing(harness: Harness, framing: str) -> None:
    """Only the headers the caller reads are kept, yet a framed body cut by a close is still broken."""
    _server, _pool, pending, peer = await opened(harness, keep_headers=frozenset({"x-keep"}))
    partial = b"partial" if framing.startswith("Content") else b"7\r\npartial\r\n"
    peer.write(f"HTTP/1.1 200 OK\r\n{framing}\r\nX-Keep: yes\r\nSet-Cookie: a=1\r\n\r\n".encode() + partial)
    response = await bounded(pending)
    assert response.headers == {"x-keep": "yes"}
    assert await bounded(response.read()) == b"partial"
    peer.writer.close()
    with pytest.raises(ConnectionBroken):  # not mistaken for a body that runs until the close
        await bounded(response.read())


async def test_chunked_body_is_joined_wherever_the_tcp_writes_cut_it(harness: Harness) -> None:
    """llhttp sees the chunked framing cut at every byte: mid size line, mid CRLF, mid data.

    Before the second write the client drains the first: ``read(silence_s)``
    returns only after the client has taken everything the socket had.
    """
    server = await harness.serve()
    pool = harness.pool(server.origin)
    pieces = (b"hello", b", chunked ", b"w", b"orld!" * 4)
    body = chunked(*pieces)
    expected = b"".join(pieces)
    peer: Peer | None = None
    for cut in range(1, len(body)):
        pending = asyncio.create_task(pool.request(REQUEST, None))
        peer = peer or await server.accept()
        assert await bounded(peer.read_request()) == REQUEST
        peer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body[:cut])
        response = await bounded(pending)
        received = bytearray()
        while data := await bounded(response.read(silence_s=0.01)):
            received += data
        assert expected.startswith(received), cut
        peer.write(body[cut:])
        received += await read_all(response)
        assert received == expected, cut
        response.close()
    assert server.accepted == 1  # and every exchange reused the one connection


async def test_chunks_are_handed_over_as_they_arrive(harness: Harness) -> None:
    """A chunk split across writes reaches the reader piece by piece: streaming, not buffering."""
    _server, _pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nhel")
    response = await bounded(pending)
    assert await bounded(response.read()) == b"hel"
    peer.write(b"lo ")
    assert await bounded(response.read()) == b"lo "
    peer.write(b"you\r\n3\r\n!!!\r\n")
    assert await bounded(response.read()) == b"you!!!"
    assert not response.complete
    peer.write(b"0\r\n\r\n")
    assert await bounded(response.read()) == b""
    assert response.complete


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_close_delimited_body_ends_at_the_close(harness: Harness, version: str) -> None:
    """No length and not chunked: the body runs until the server closes, and that is its end."""
    _server, pool, pending, peer = await opened(harness)
    peer.write(f"HTTP/{version} 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n".encode())
    response = await bounded(pending)
    assert await bounded(response.read()) == b"data: 1\n\n"
    peer.write(b"data: 2\n\n")
    peer.writer.close()
    assert await read_all(response) == b"data: 2\n\n"
    assert response.complete
    response.close()
    await until(lambda: pool.connections == 0)  # a connection that ended the body cannot be reused


async def test_no_content_has_no_body_and_keeps_the_connection(harness: Harness) -> None:
    """204 ends at its head (no Content-Length needed); the connection stays reusable."""
    server = await harness.serve(answer(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", ok(b"next")))
    pool = harness.pool(server.origin)
    response = await bounded(pool.request(REQUEST, None))
    assert response.status == 204
    assert response.complete
    assert await bounded(response.read()) == b""
    response.close()
    _, body = await fetch(pool)
    assert body == b"next"
    assert server.accepted == 1


async def test_interim_continue_is_skipped(harness: Harness) -> None:
    """A 100 Continue before the real answer is not the answer."""
    server = await harness.serve(answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real", "X-Real: yes")))
    response, body = await fetch(harness.pool(server.origin))
    assert (response.status, body, response.headers["x-real"]) == (200, b"real", "yes")


# -- keep-alive ----------------------------------------------------------------


async def test_sequential_requests_share_one_connection(harness: Harness) -> None:
    """A complete keep-alive exchange gives its connection back for the next request."""
    server = await harness.serve(answer(ok(b"first"), ok(b"second")))
    pool = harness.pool(server.origin)
    assert (await fetch(pool))[1] == b"first"
    assert (await fetch(pool))[1] == b"second"  # "first" again would mean a new connection
    assert server.accepted == 1
    assert pool.connections == 1


async def test_connection_close_response_is_not_reused(harness: Harness) -> None:
    """``Connection: close`` retires the connection even if the server leaves it open."""
    server = await harness.serve(answer(ok(b"bye", "Connection: close"), ok(b"unreachable")))
    pool = harness.pool(server.origin)
    assert (await fetch(pool))[1] == b"bye"
    assert (await fetch(pool))[1] == b"bye"
    assert server.accepted == 2
    await bounded(server.peers[0].closed.wait())  # the client, not the server, closed the first


async def test_response_abandoned_mid_body_closes_its_connection(harness: Harness) -> None:
    """close() before the end drops the socket: that is how the upstream learns to stop."""
    server, pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    response = await bounded(pending)
    assert await bounded(response.read()) == b"0123456789"
    response.close()
    await peer.wait_closed()
    assert peer.closed.is_set()
    await until(lambda: pool.connections == 0)
    pending = asyncio.create_task(pool.request(REQUEST, None))
    fresh = await server.accept()
    assert fresh is not peer and server.accepted == 2
    await bounded(fresh.read_request())
    fresh.write(ok(b"fresh"))
    response = await bounded(pending)
    assert await read_all(response) == b"fresh"


async def test_complete_response_closed_unread_is_reused(harness: Harness) -> None:
    """A complete response leaves the connection clean, read or not; its bytes do not leak."""
    server = await harness.serve(answer(ok(b"never read"), ok(b"second")))
    pool = harness.pool(server.origin)
    response = await bounded(pool.request(REQUEST, None))
    assert response.complete  # one small write arrives in one read, head and body together
    response.close()
    assert (await fetch(pool))[1] == b"second"
    assert server.accepted == 1


async def test_complete_response_closed_unread_past_high_water_is_reused(harness: Harness) -> None:
    """A complete body buffered past the high-water mark paused reading; reuse must resume it.

    Compressed, so the whole answer is one small TCP read that completes the
    message and crosses ``HIGH_WATER`` at once (paused and complete together).
    """
    wire = gzip.compress(b"x" * (4 * HIGH_WATER))
    server = await harness.serve(answer(ok(wire, "Content-Encoding: gzip"), ok(b"second")))
    pool = harness.pool(server.origin, read_timeout_s=READ_TIMEOUT_S)
    response = await bounded(pool.request(REQUEST, None))
    assert response.complete
    response.close()
    response = await bounded(pool.request(REQUEST, None), 1.0)
    assert await read_all(response) == b"second"
    assert server.accepted == 1


async def test_server_closing_after_a_complete_response_does_not_break_it(harness: Harness) -> None:
    """``Connection: close`` then a close, before the consumer read the end: still a whole body.

    Upstreams (nginx error pages, HTTP/1.0 servers) close right after the last
    byte; the relay may be busy writing to its client when that close arrives.
    """
    _server, pool, pending, peer = await opened(harness)
    peer.write(ok(b"all of it", "Connection: close"))
    peer.writer.close()
    response = await bounded(pending)
    await until(lambda: pool.connections == 0)  # the client has seen the close
    assert response.complete
    assert await read_all(response) == b"all of it"


async def test_unsolicited_second_response_is_not_mixed_into_the_first(harness: Harness) -> None:
    """Bytes after a complete response belong to no request: never to the current body.

    The connection cannot be trusted after them, so it is dropped, not leaked busy.
    """
    server = await harness.serve(answer(ok(b"mine") + ok(b"stray")))
    pool = harness.pool(server.origin)
    response = await bounded(pool.request(REQUEST, None))
    assert await read_all(response) == b"mine"
    response.close()
    await until(lambda: pool.connections == 0)


# -- content coding ----------------------------------------------------------

PAYLOAD = b"".join(b'data: {"n": %d, "text": "streamed text"}\n\n' % n for n in range(400))
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


@pytest.mark.parametrize("coding", list(ENCODERS))
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_compressed_body_is_decoded(harness: Harness, coding: str, framing: str) -> None:
    """gzip, deflate and br bodies reach the reader decoded, even cut into 7-byte chunks."""
    wire = ENCODERS[coding](PAYLOAD)
    if framing == "chunked":
        pieces = [wire[i:i + 7] for i in range(0, len(wire), 7)]
        raw = (f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding.upper()}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(*pieces)
    else:
        raw = ok(wire, f"Content-Encoding: {coding}")
    server = await harness.serve(answer(raw))
    response, body = await fetch(harness.pool(server.origin))
    assert body == PAYLOAD
    assert response.headers["content-encoding"].lower() == coding


@pytest.mark.parametrize("coding", list(ENCODERS))
async def test_compressed_body_split_across_writes_is_decoded_as_it_arrives(
        harness: Harness, coding: str) -> None:
    """Each TCP write of compressed bytes yields what it decodes to, without waiting for the end."""
    _server, _pool, pending, peer = await opened(harness)
    wire = ENCODERS[coding](PAYLOAD)
    half = len(wire) // 2
    peer.write(f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(wire)}\r\n\r\n".encode()
               + wire[:half])
    response = await bounded(pending)
    received = bytearray()
    while data := await bounded(response.read(silence_s=0.01)):
        received += data
    assert PAYLOAD.startswith(received)
    peer.write(wire[half:])
    received += await read_all(response)
    assert received == PAYLOAD


async def test_undecodable_compressed_body_is_not_http(harness: Harness) -> None:
    """A body that claims gzip but is not: a framing fault (ProtocolViolation), never garbage text."""
    server = await harness.serve(answer(ok(b"plainly not gzip", "Content-Encoding: gzip")))
    response = await bounded(harness.pool(server.origin).request(REQUEST, None))
    with pytest.raises(ProtocolViolation):
        await read_all(response)


# -- timeouts and backpressure ---------------------------------------------


async def test_silence_before_the_head_is_a_read_timeout(harness: Harness) -> None:
    """An upstream that accepts and says nothing fails after read_timeout_s, and is hung up on."""
    _server, pool, pending, peer = await opened(harness, read_timeout_s=READ_TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as caught:
        await bounded(pending)
    assert time.monotonic() - started >= READ_TIMEOUT_S * 0.9
    assert isinstance(caught.value, TimeoutError)
    await peer.wait_closed()
    await until(lambda: pool.connections == 0)


async def test_silence_mid_body_is_a_read_timeout(harness: Harness) -> None:
    """The deadline counts from the last byte: a body that stops arriving fails the reader."""
    _server, pool, pending, peer = await opened(harness, read_timeout_s=READ_TIMEOUT_S)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    response = await bounded(pending)
    assert await bounded(response.read()) == b"half"
    with pytest.raises(ReadTimeout):
        await bounded(response.read())
    await peer.wait_closed()
    await until(lambda: pool.connections == 0)


async def test_one_silent_exchange_times_out_while_its_busy_neighbour_lives_on(harness: Harness) -> None:
    """The pool's one ticker holds each busy connection to its own last byte."""
    server = await harness.serve()
    pool = harness.pool(server.origin, read_timeout_s=READ_TIMEOUT_S)
    silent = asyncio.create_task(pool.request(REQUEST, None))
    silent_peer = await server.accept()
    talking = asyncio.create_task(pool.request(REQUEST, None))
    talking_peer = await server.accept()
    assert await bounded(silent_peer.read_request()) == REQUEST
    assert await bounded(talking_peer.read_request()) == REQUEST
    talking_peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    response = await bounded(talking)
    for piece in (b"a", b"b", b"c"):  # paced: never silent for a whole read timeout
        await asyncio.sleep(READ_TIMEOUT_S / 2)
        talking_peer.write(piece)
    with pytest.raises(ReadTimeout):  # 1.5 read timeouts have passed since its request
        await bounded(silent)
    talking_peer.write(b"d")
    body = b""
    while chunk := await bounded(response.read()):
        body += chunk
    assert body == b"abcd"


async def test_read_with_silence_returns_none_then_later_bytes(harness: Harness) -> None:
    """``read(silence_s)`` gives the consumer a turn (keep-alive comments) without losing data."""
    _server, _pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    response = await bounded(pending)
    assert await bounded(response.read(silence_s=0.05)) == b"hello"
    started = time.monotonic()
    assert await bounded(response.read(silence_s=0.05)) is None
    assert await bounded(response.read(silence_s=0.05)) is None
    assert time.monotonic() - started >= 0.09
    later = asyncio.create_task(response.read(silence_s=WAIT_S * 2))
    await asyncio.sleep(0)  # let the reader start waiting (a turn of the loop, not a delay)
    peer.write(b"world")
    assert await bounded(later) == b"world"  # at once, not after the long silence_s
    assert await bounded(response.read(silence_s=0.05)) == b""


async def test_wait_is_a_future_done_by_bytes_silence_the_end_or_an_error(harness: Harness) -> None:
    """``wait`` (what a stream waits on between events, with no coroutine frame):
    done with False when there is something for ``read_nowait``, True on silence."""
    _server, _pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    response = await bounded(pending)
    waiter = response.wait(silence_s=0.05)
    assert isinstance(waiter, asyncio.Future)
    assert await bounded(waiter) is True  # silence: nothing to take
    assert response.read_nowait() == b""
    waiter = response.wait(silence_s=WAIT_S * 2)
    peer.write(b"hello")
    assert await bounded(waiter) is False  # at once, not after the long silence_s
    assert response.read_nowait() == b"hello"
    waiter = response.wait()  # no silence_s: only bytes, the end or an error end it
    assert not waiter.done()
    peer.write(b"world")
    assert await bounded(waiter) is False
    assert response.read_nowait() == b"world" and response.at_eof
    assert response.wait().done()  # complete: never waits again


async def test_paused_reading_holds_the_read_timeout_until_the_consumer_reads(harness: Harness) -> None:
    """A consumer that stops reading pauses the socket at the high-water mark; the
    upstream's stalled writes are backpressure, not silence, so no ReadTimeout fires
    however long the pause; reading resumes the flow to the last byte."""
    _server, _pool, pending, peer = await opened(harness, read_timeout_s=READ_TIMEOUT_S)
    piece = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    last = float("inf")  # bytes to send in all; set once the stall is proven

    async def produce() -> None:
        nonlocal sent
        peer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while sent < last:
            peer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            await peer.writer.drain()
        peer.write(b"0\r\n\r\n")

    producer = asyncio.create_task(produce())
    try:
        response = await bounded(pending)
        # Bounded sleeps, to prove a non-event: nobody reads for three read timeouts.
        await asyncio.sleep(2 * READ_TIMEOUT_S)
        stalled_at = sent
        await asyncio.sleep(READ_TIMEOUT_S)
        assert sent == stalled_at > HIGH_WATER  # the server's drain() waited a whole read timeout
        assert peer.writer.transport.get_write_buffer_size() > 0  # the kernel buffers are full
        assert not producer.done()
        last = sent + 8 * len(piece)
        body = await read_all(response)  # no ReadTimeout: the pause held the deadline
        assert len(body) == sent == last  # reading resumed the server's writes
        assert body == piece * (sent // len(piece))
        await bounded(producer)
    finally:
        producer.cancel()


# -- the pool ------------------------------------------------------------------


async def test_full_pool_queues_the_next_request_then_reuses_the_connection(harness: Harness) -> None:
    """limit=1: a second request waits for the first exchange, then rides its connection."""
    server = await harness.serve()
    pool = harness.pool(server.origin, limit=1)
    first = asyncio.create_task(pool.request(REQUEST, None))
    peer = await server.accept()
    await bounded(peer.read_request())
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfi")
    response = await bounded(first)
    second = asyncio.create_task(pool.request(REQUEST, None))
    # A bounded sleep, to prove a non-event: the second request neither connects nor finishes.
    await asyncio.sleep(0.1)
    assert not second.done()
    assert server.accepted == 1 and pool.connections == 1
    peer.write(b"rst")
    assert await read_all(response) == b"first"
    response.close()
    assert await bounded(peer.read_request()) == REQUEST  # on the same connection
    peer.write(ok(b"second"))
    response = await bounded(second)
    assert await read_all(response) == b"second"
    assert server.accepted == 1


async def test_pool_full_past_connect_timeout_is_a_connect_timeout(harness: Harness) -> None:
    """Waiting for a slot counts against connect_timeout_s; the busy exchange is unharmed."""
    server = await harness.serve()
    pool = harness.pool(server.origin, limit=1, connect_timeout_s=READ_TIMEOUT_S)
    first = asyncio.create_task(pool.request(REQUEST, None))
    peer = await server.accept()
    await bounded(peer.read_request())
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbu")
    response = await bounded(first)
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as caught:
        await bounded(pool.request(REQUEST, None))
    assert time.monotonic() - started >= READ_TIMEOUT_S * 0.9
    assert isinstance(caught.value, TimeoutError)
    assert server.accepted == 1 and pool.connections == 1
    peer.write(b"sy")
    assert await read_all(response) == b"busy"


async def test_refused_port_is_a_connect_error(harness: Harness) -> None:
    """Nothing listening: ConnectError, and the failed attempt holds no slot."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = harness.pool(f"http://127.0.0.1:{port}", limit=1)
    for _ in range(2):  # a leaked slot would make the second attempt a ConnectTimeout
        with pytest.raises(ConnectError):
            await bounded(pool.request(REQUEST, None))
    assert pool.connections == 0


async def test_cancelled_waiter_passes_its_wake_up_on(harness: Harness) -> None:
    """limit=1, two queued: the first woken is cancelled before it runs; the other gets the slot.

    A client that disconnects while its request is queued must not strand the
    requests queued behind it (asyncio.Semaphore guards the same race).
    """
    server = await harness.serve(answer_forever(ok(b"ok")))
    pool = harness.pool(server.origin, limit=1, connect_timeout_s=1.0)
    response = await bounded(pool.request(REQUEST, None))
    cancelled = asyncio.create_task(pool.request(REQUEST, None))
    waiting = asyncio.create_task(pool.request(REQUEST, None))
    await asyncio.sleep(0)  # one turn: both tasks run until they queue for the slot
    assert await read_all(response) == b"ok"
    response.close()  # wakes ``cancelled``, the first in line ...
    cancelled.cancel()  # ... which is cancelled before it can take the connection
    with pytest.raises(asyncio.CancelledError):
        await bounded(cancelled)
    response = await bounded(waiting)
    assert await read_all(response) == b"ok"
    assert server.accepted == 1


async def test_pool_close_closes_idle_connections(harness: Harness) -> None:
    """close() hangs up the idle keep-alive sockets, so the upstream frees them too."""
    server = await harness.serve(answer(ok(b"ok")))
    pool = harness.pool(server.origin)
    await fetch(pool)
    await pool.close()
    await bounded(server.peers[0].closed.wait())
    await until(lambda: pool.connections == 0)


# -- faults ----------------------------------------------------------------------


async def test_garbage_instead_of_http_is_not_http(harness: Harness) -> None:
    """A peer that is not an HTTP server (an SSH banner) fails the request with ProtocolViolation."""
    _server, pool, pending, peer = await opened(harness)
    peer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(ProtocolViolation):
        await bounded(pending)
    await peer.wait_closed()
    await until(lambda: pool.connections == 0)


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_connection_ending_mid_body_is_broken(harness: Harness, how: str) -> None:
    """A reset or a close before Content-Length is met: ConnectionBroken, after the bytes that came."""
    _server, pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    response = await bounded(pending)
    assert await bounded(response.read()) == b"partial"
    if how == "reset":
        peer.reset()
    else:
        peer.writer.close()
    with pytest.raises(ConnectionBroken):
        await bounded(response.read())
    assert not response.complete
    await until(lambda: pool.connections == 0)


async def test_connection_closed_before_the_head_is_broken(harness: Harness) -> None:
    """The upstream hangs up after reading the request: ConnectionBroken, no retry inside the pool."""
    server, _pool, pending, peer = await opened(harness)
    peer.writer.close()
    with pytest.raises(ConnectionBroken):
        await bounded(pending)
    assert server.accepted == 1


async def test_abort_makes_the_pending_read_raise(harness: Harness) -> None:
    """abort(exc) wakes a waiting reader with exc (the drain's deadline) and hangs up."""
    _server, pool, pending, peer = await opened(harness)
    peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
    response = await bounded(pending)
    assert await bounded(response.read()) == b"start"
    reader = asyncio.create_task(response.read())
    await asyncio.sleep(0)  # let the reader start waiting (a turn of the loop, not a delay)
    assert not reader.done()

    class Draining(Exception):
        pass

    response.abort(Draining("shutting down"))
    with pytest.raises(Draining):
        await bounded(reader)
    await peer.wait_closed()
    await until(lambda: pool.connections == 0)


# -- idle connections ------------------------------------------------------------


async def test_connection_idle_past_idle_s_is_not_reused(harness: Harness) -> None:
    """An idle connection older than idle_s may already be half-closed upstream: open a new one."""
    server = await harness.serve(answer(ok(b"ok")))
    pool = harness.pool(server.origin, idle_s=0.1)
    await fetch(pool)
    await asyncio.sleep(0.2)  # the condition under test is elapsed time itself
    assert (await fetch(pool))[1] == b"ok"
    assert server.accepted == 2
    await bounded(server.peers[0].closed.wait())  # the expired one was hung up, not leaked


async def test_connection_closed_by_the_server_while_idle_is_not_reused(harness: Harness) -> None:
    """A server's idle close is noticed; the next request goes out on a fresh connection."""
    hang_up = asyncio.Event()

    async def script(peer: Peer) -> None:
        if await peer.read_request():
            peer.write(ok(b"ok"))
            await hang_up.wait()
            peer.writer.close()

    server = await harness.serve(script)
    pool = harness.pool(server.origin)
    await fetch(pool)
    assert pool.connections == 1
    hang_up.set()
    await until(lambda: pool.connections == 0)
    assert (await fetch(pool))[1] == b"ok"
    assert server.accepted == 2


# -- cancellation ----------------------------------------------------------------


async def test_cancelling_the_wait_for_the_head_closes_the_connection(harness: Harness) -> None:
    """A caller cancelled mid-exchange leaves no socket behind (httpcore's test_cancellations)."""
    server = await harness.serve()
    pool = harness.pool(server.origin)
    pending = asyncio.create_task(pool.request(REQUEST, None))
    peer = await server.accept()
    assert await bounded(peer.read_request()) == REQUEST  # the client now waits for the head
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(pending)
    await peer.wait_closed()
    assert peer.closed.is_set()
    await until(lambda: pool.connections == 0)
