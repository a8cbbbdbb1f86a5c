"""Stage 1 (relay/pipeline/parse.py): upstream bytes → SSE events → JSON objects.

Garbage never crashes a stream (QWEN_PROTOCOL §6 item 7), a bare JSON body
under text/event-stream is one payload (§7.4), the line limit becomes a
reportable RelayError, and every stage closes its source however it
ends, so an early stop never leaves the upstream response open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RelayError, StreamLimitExceeded
from relay.pipeline import StreamStats, parse_payloads, upstream_payloads
from tests.strategies import chunkings

LIMIT = 1 << 20


class Source:
    """A plain async-generator source that records what happened to it."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks
        self.sent = 0
        self.closed = False

    async def gen(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                self.sent += 1
                yield chunk
        finally:
            self.closed = True


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def payloads(*chunks: bytes, stats: StreamStats | None = None) -> list[dict[str, Any]]:
    return await collect(upstream_payloads(Source(*chunks).gen(), LIMIT, stats or StreamStats()))


async def test_events_come_out_in_order_and_comments_are_counted() -> None:
    """Payloads come out in order, across reads; keep-alive comments land in stats.comments."""
    stats = StreamStats()
    source = Source(b': ping\n\ndata: {"a":1}\n', b'\ndata: {"b":2}\n\n: ping\n')
    got = await collect(parse_payloads(source.gen(), LIMIT, stats))
    assert got == [{"a": 1}, {"b": 2}]
    assert stats.comments == 2
    assert source.closed


async def test_the_last_event_without_a_blank_line_is_not_lost() -> None:
    """An upstream closing right after its last data line loses nothing."""
    assert await payloads(b'data: {"x":1}') == [{"x": 1}]


async def test_decode_json_yields_objects_and_counts_events() -> None:
    """Each JSON object is yielded once and counted in stats.events."""
    stats = StreamStats()
    got = await payloads(b'data: {"a":1}\n\ndata: {"b":[2]} \n\n', stats=stats)
    assert got == [{"a": 1}, {"b": [2]}]
    assert stats.events == 2 and stats.garbage == 0


@pytest.mark.parametrize(
    "garbage",
    [b"not json", b"{", b"", b"<html>busy</html>", b'{"a":1', b"\xff\xfe"],
    ids=["text", "open_brace", "empty", "html", "truncated", "invalid_utf8"],
)
async def test_garbage_data_is_skipped_and_counted(garbage: bytes) -> None:
    """Data that is not JSON is skipped and counted; the answer around it still flows."""
    stats = StreamStats()
    got = await payloads(b'data: {"n":1}\n\ndata: ' + garbage + b'\n\ndata: {"n":2}\n\n', stats=stats)
    assert got == [{"n": 1}, {"n": 2}]
    assert stats.garbage == 1 and stats.events == 2


@pytest.mark.parametrize("value", [b"[1,2]", b'"text"', b"42", b"null", b"true", b"NaN"])
async def test_json_that_is_not_an_object_is_skipped_and_counted(value: bytes) -> None:
    """Only JSON objects are payloads; arrays, strings, numbers, null are garbage."""
    stats = StreamStats()
    got = await payloads(b"data: " + value + b'\n\ndata: {"ok":true}\n\n', stats=stats)
    assert got == [{"ok": True}]
    assert stats.garbage == 1


async def test_deeply_nested_json_data_is_garbage_not_a_crash() -> None:
    """A data line nested deeper than the recursion limit (well under the 1 MiB
    line limit) is skipped and counted like other garbage; it must not escape as
    RecursionError, which no stage turns into an error event."""
    stats = StreamStats()
    got = await payloads(b"data: " + b"[" * 100_000 + b'\n\ndata: {"ok":1}\n\n', stats=stats)
    assert got == [{"ok": 1}]
    assert stats.garbage == 1


@pytest.mark.parametrize("done", [b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"data: [DONE] \r\n\r\n"])
async def test_done_stops_the_stream_and_closes_the_source(done: bytes) -> None:
    """Nothing after ``[DONE]`` is yielded, and the byte source is closed at once
    (not left for garbage collection), even though it had more to send."""
    source = Source(b'data: {"a":1}\n\n', done, b'data: {"after":1}\n\n', b"never read")
    stats = StreamStats()
    got = await collect(parse_payloads(source.gen(), LIMIT, stats))
    assert got == [{"a": 1}]
    assert source.closed
    assert source.sent == 2


async def test_oversized_line_raises_stream_limit_exceeded_and_closes_source() -> None:
    """A line over max_line_bytes becomes StreamLimitExceeded (a RelayError the
    encoder reports), and the source is closed."""
    source = Source(b"data: ok\n\n", b"data: " + b"x" * 2000)
    with pytest.raises(StreamLimitExceeded) as info:
        await collect(parse_payloads(source.gen(), 1024, StreamStats()))
    assert isinstance(info.value, RelayError)
    assert info.value.envelope()["error"]["code"] == "upstream_line_too_long"
    assert info.value.http_status == 502
    assert source.closed


async def test_events_before_an_oversized_line_in_the_same_read_are_yielded_first() -> None:
    """Text that arrived before the too-long line reaches the client, then the
    stream fails with StreamLimitExceeded and the source is closed."""
    source = Source(b'data: {"a":1}\n\ndata: ' + b"x" * 2000 + b"\n\n", b'data: {"b":2}\n\n')
    stats = StreamStats()
    got: list[dict[str, Any]] = []
    with pytest.raises(StreamLimitExceeded):
        async for payload in parse_payloads(source.gen(), 1024, stats):
            got.append(payload)
    assert got == [{"a": 1}]
    assert source.closed


async def test_line_at_limit_is_accepted() -> None:
    """--max-line-bytes is inclusive: a line of exactly that many bytes passes."""
    text = "y" * (1024 - len(b'data: {"v":""}'))
    line = b'data: {"v":"' + text.encode() + b'"}'
    assert len(line) == 1024
    got = await collect(parse_payloads(Source(line + b"\n\n").gen(), 1024, StreamStats()))
    assert got == [{"v": text}]


async def test_closing_the_last_stage_early_closes_the_whole_chain() -> None:
    """A consumer that stops early (client gone) and closes the outer stage closes
    the byte source too."""
    source = Source(b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b'data: {"c":3}\n\n')
    stats = StreamStats()
    stream = parse_payloads(source.gen(), LIMIT, stats)
    assert await anext(stream) == {"a": 1}
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    assert source.closed
    assert source.sent == 1


async def test_error_raised_by_source_propagates_and_stage_closes() -> None:
    """An exception from the byte source passes through the stage unchanged."""
    closed: list[str] = []

    async def failing() -> AsyncIterator[bytes]:
        try:
            yield b'data: {"a":1}\n\n'
            raise ConnectionResetError("peer reset")
        finally:
            closed.append("source")

    stats = StreamStats()
    got: list[dict[str, Any]] = []
    with pytest.raises(ConnectionResetError):
        async for payload in parse_payloads(failing(), LIMIT, stats):
            got.append(payload)
    assert got == [{"a": 1}]
    assert closed == ["source"]


async def test_too_long_line_is_reported_without_waiting_for_another_read() -> None:
    """The events before a too-long line come out, then the error at once — even
    when the upstream then goes silent, so the client never waits for --timeout."""
    silence = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b'data: {"a": 1}\n\n' + b"data: " + b"x" * 5000
        await silence.wait()  # never set: an upstream that stalls after the long line
        yield b"\n\n"

    events = parse_payloads(source(), 1024, StreamStats())
    first = await anext(events)
    assert first == {"a": 1}
    async with asyncio.timeout(1):
        with pytest.raises(StreamLimitExceeded):
            await anext(events)
    await events.aclose()


# ---- a bare JSON body under text/event-stream (QWEN_PROTOCOL §7.4) -----------------------

BARE = b' \r\n\t{"success":false,"data":{"code":"RateLimited","num":2}}\n'
BARE_PAYLOAD = {"success": False, "data": {"code": "RateLimited", "num": 2}}


@pytest.mark.parametrize("cut", range(len(BARE) + 1))
async def test_a_bare_json_body_is_one_payload_at_every_split(cut: int) -> None:
    """A body that is one JSON object, no ``data:`` (after any whitespace), is
    yielded whole, wherever the reads split it; the source is read to its end and closed."""
    stats = StreamStats()
    source = Source(BARE[:cut], BARE[cut:])
    assert await collect(parse_payloads(source.gen(), LIMIT, stats)) == [BARE_PAYLOAD]
    assert (stats.events, stats.garbage) == (1, 0)
    assert source.closed


async def test_a_bare_json_body_one_byte_at_a_time() -> None:
    chunks = [BARE[i:i + 1] for i in range(len(BARE))]
    assert await payloads(*chunks) == [BARE_PAYLOAD]


@given(st.data())
async def test_a_bare_json_body_survives_any_chunking(data: st.DataObject) -> None:
    assert await payloads(*data.draw(chunkings(BARE))) == [BARE_PAYLOAD]


@pytest.mark.parametrize("body", [b'{"success":false', b"{not json}", b'{"a":1}\n\ndata: {"b":2}\n\n'],
                         ids=["truncated", "not_json", "json_then_sse"])
async def test_a_bare_body_that_is_not_one_json_object_is_garbage(body: bytes) -> None:
    stats = StreamStats()
    assert await payloads(body, stats=stats) == []
    assert (stats.events, stats.garbage) == (0, 1)


async def test_a_bare_json_body_over_the_line_limit_raises_and_closes_the_source() -> None:
    body = b'{"v":"' + b"x" * 2000 + b'"}'
    source = Source(body[:100], body[100:], b"never read")
    with pytest.raises(StreamLimitExceeded):
        await collect(parse_payloads(source.gen(), 1024, StreamStats()))
    assert source.closed
    assert source.sent == 2


async def test_a_bare_json_body_at_the_line_limit_is_accepted() -> None:
    """The limit is the JSON's own bytes: leading whitespace does not count."""
    text = "y" * (1024 - len(b'{"v":""}'))
    body = b'{"v":"' + text.encode() + b'"}'
    assert len(body) == 1024
    got = await collect(parse_payloads(Source(b"\n\n", body).gen(), 1024, StreamStats()))
    assert got == [{"v": text}]


@pytest.mark.parametrize("cut", range(len(b'\n\n: ping\n\ndata: {"a":1}\n\n') + 1))
async def test_leading_whitespace_before_sse_is_still_sse_at_every_split(cut: int) -> None:
    """Looking for a bare body's ``{`` changes nothing for an SSE stream that starts with blank lines."""
    body = b'\n\n: ping\n\ndata: {"a":1}\n\n'
    stats = StreamStats()
    assert await payloads(body[:cut], body[cut:], stats=stats) == [{"a": 1}]
    assert stats.comments == 1
