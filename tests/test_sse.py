"""SseDecoder / encode_event: the sans-IO SSE codec (relay/sse.py).

Every fixture is checked whole, one byte at a time, split at every position and
with trailing bytes (h11's ``tr()``, h11/tests/test_io.py): a TCP read can end
anywhere, and the decoder must not care where.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.sse import DONE_EVENT, LineTooLong, SseDecoder, SseEvent, encode_event
from tests.strategies import chunkings, expected_event, normalise_newlines, sse_events, sse_texts

LIMIT = 1 << 20
EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


def decode(pieces: list[bytes], limit: int = LIMIT) -> tuple[list[SseEvent], int]:
    decoder = SseDecoder(limit)
    events: list[SseEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events, decoder.comments


def tr(data: bytes, expected: list[SseEvent], comments: int = 0) -> None:
    """Assert ``data`` decodes to ``expected`` however the reads are cut."""
    assert decode([data]) == (expected, comments), "whole"
    assert decode([data[i:i + 1] for i in range(len(data))]) == (expected, comments), "byte by byte"
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == (expected, comments), f"split at {i}"


# (lines, expected events, expected comment count); lines are joined with each line end.
FIXTURES: dict[str, tuple[list[str], list[SseEvent], int]] = {
    "one_event": (["data: hello", ""], [SseEvent("hello")], 0),
    "two_events": (["data: a", "", "data: b", ""], [SseEvent("a"), SseEvent("b")], 0),
    "comments": ([": keep-alive", "data: x", ": more", "", ":"], [SseEvent("x")], 3),
    "blank_lines": (["", "", "data: x", "", "", ""], [SseEvent("x")], 0),
    "multi_line_data": (
        ["data: line1", "data: line2", "data:", "data:  indented", ""],
        [SseEvent("line1\nline2\n\n indented")],
        0,
    ),
    "event_and_id": (
        ["event: delta", "id: 42", "data: {}", "", "data: next", ""],
        [SseEvent("{}", "delta", "42"), SseEvent("next", "message", "42")],
        0,
    ),
    "event_without_data_is_not_dispatched": (
        ["event: ping", "", "data: q", ""],
        [SseEvent("q")],
        0,
    ),
    "trailing_space_after_json": (['data: {"a":1} ', ""], [SseEvent('{"a":1} ')], 0),
    "no_space_after_colon": (["data:x", ""], [SseEvent("x")], 0),
    "field_without_colon": (["data", ""], [SseEvent("")], 0),
    "retry_and_unknown_fields_ignored": (["retry: 100", "foo: bar", "data: y", ""], [SseEvent("y")], 0),
    "id_with_nul_ignored": (["id: a\x00b", "data: z", ""], [SseEvent("z")], 0),
    "multibyte_utf8": (["data: héllo 😀 中文", ""], [SseEvent("héllo 😀 中文")], 0),
    "qwen_v1_cumulative": (
        [
            'data: {"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}',
            "",
            'data: {"choices":[{"delta":{"role":"assistant","content":"Hello"}}]}',
            "",
            "data: [DONE]",
            "",
        ],
        [
            SseEvent('{"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}'),
            SseEvent('{"choices":[{"delta":{"role":"assistant","content":"Hello"}}]}'),
            SseEvent("[DONE]"),
        ],
        0,
    ),
}


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_decodes_the_same_at_every_split(name: str, eol: str) -> None:
    """Each fixture gives the same events and comment count whole, byte by byte,
    and split at any position, with LF, CRLF and CR line ends."""
    lines, expected, comments = FIXTURES[name]
    data = (eol.join(lines) + eol).encode()
    tr(data, expected, comments)


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@pytest.mark.parametrize("name", FIXTURES)
def test_trailing_bytes_stay_buffered_until_completed(name: str, eol: str) -> None:
    """Bytes after the last complete event are neither dispatched nor lost: they
    come out at close() (h11 ``tr()``'s trailing-data case)."""
    lines, expected, _ = FIXTURES[name]
    data = (eol.join([*lines, ""]) + eol).encode()
    decoder = SseDecoder(LIMIT)
    assert decoder.feed(data + b"data: trailing") == expected
    tail = decoder.close()
    assert [event.data for event in tail] == ["trailing"]


def test_cr_at_end_of_one_read_and_lf_at_start_of_next_is_one_line_end() -> None:
    """``\\r`` | ``\\n`` across reads is one CRLF, not two line ends (a second one
    would be a blank line and split the event in two)."""
    decoder = SseDecoder(LIMIT)
    events = decoder.feed(b"data: a\r")
    events += decoder.feed(b"\ndata: b\r")
    events += decoder.feed(b"\n\r")
    events += decoder.feed(b"\n")
    assert events == [SseEvent("a\nb")]
    assert decoder.close() == []


def test_cr_followed_by_cr_across_reads_is_two_line_ends() -> None:
    """A lone ``\\r`` ending a read must not swallow a following ``\\r``."""
    decoder = SseDecoder(LIMIT)
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SseEvent("a")]


def test_multibyte_char_split_across_reads_is_decoded_intact() -> None:
    """A UTF-8 character cut between two reads is not mangled into U+FFFD."""
    encoded = "data: 中😀\n\n".encode()
    for cut in range(len("data: "), len(encoded) - 2):
        decoder = SseDecoder(LIMIT)
        assert decoder.feed(encoded[:cut]) == []
        assert decoder.feed(encoded[cut:]) == [SseEvent("中😀")]


def test_invalid_utf8_becomes_replacement_char_not_an_error() -> None:
    """Invalid bytes decode to U+FFFD; the rest of the stream still flows."""
    events, _ = decode([b"data: \xff\xfe ok\n\n", b"data: next\n\n"])
    assert events == [SseEvent("\ufffd\ufffd ok"), SseEvent("next")]


def test_truncated_utf8_at_close_becomes_replacement_char() -> None:
    """A stream ending mid-character flushes with U+FFFD instead of raising."""
    events, _ = decode([b"data: ok\xe4\xb8"])
    assert events == [SseEvent("ok\ufffd")]


@pytest.mark.parametrize("data", [b"data: last", b"data: last\n", b"data: last\r\n", b"data: last\r"])
def test_close_flushes_event_without_trailing_blank_line(data: bytes) -> None:
    """An upstream that closes right after its last ``data:`` line loses nothing."""
    tr(data, [SseEvent("last")])


def test_close_without_pending_data_yields_nothing() -> None:
    """close() after complete events, comments or nothing dispatches no event."""
    assert decode([]) == ([], 0)
    assert decode([b": ping\n"]) == ([], 1)
    assert decode([b"event: x\nid: 1\n"]) == ([], 0)


def test_done_event_constant_decodes_to_done() -> None:
    """DONE_EVENT is one complete ``[DONE]`` event."""
    tr(DONE_EVENT, [SseEvent("[DONE]")])


# ---- line length limit ----------------------------------------------------------------

SMALL = 16


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
def test_line_exactly_at_limit_is_accepted_at_every_split(eol: str) -> None:
    """A line of exactly max_line_bytes (line end not counted) is fine."""
    line = b"data: " + b"x" * (SMALL - len(b"data: "))
    assert len(line) == SMALL
    data = line + eol.encode() * 2
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))],
                   *([data[:i], data[i:]] for i in range(len(data) + 1))):
        assert decode(pieces, SMALL) == ([SseEvent("x" * (SMALL - 6))], 0)


def test_multibyte_line_at_limit_counts_bytes_not_chars() -> None:
    """The limit is in bytes: 5 × 3-byte chars + "data:" is 20 bytes."""
    line = "data:" + "中" * 5
    assert decode([line.encode() + b"\n\n"], 20) == ([SseEvent("中" * 5)], 0)
    with pytest.raises(LineTooLong):
        decode([line.encode() + b"\n\n"], 19)


def test_complete_line_over_limit_raises() -> None:
    """A complete line one byte over the limit raises LineTooLong with the limit."""
    with pytest.raises(LineTooLong) as info:
        SseDecoder(SMALL).feed(b"data: " + b"x" * (SMALL - 5) + b"\n\n")
    assert info.value.limit == SMALL


def test_partial_line_over_limit_raises_before_line_end() -> None:
    """Memory stays bounded: an unterminated line raises as soon as it is too long."""
    decoder = SseDecoder(SMALL)
    assert decoder.feed(b"x" * SMALL) == []
    with pytest.raises(LineTooLong):
        decoder.feed(b"x")


def test_unterminated_line_over_limit_in_one_read_raises() -> None:
    """A single read holding more than the limit of an unterminated line raises."""
    with pytest.raises(LineTooLong):
        SseDecoder(SMALL).feed(b"y" * (SMALL + 1))


@pytest.mark.parametrize("long_line", [b"y" * (SMALL + 1), b"y" * (SMALL + 1) + b"\n\ndata: after\n\n"],
                         ids=["partial", "complete"])
def test_events_before_a_too_long_line_are_delivered_then_it_raises(long_line: bytes) -> None:
    """Events completed earlier in the same read are returned first (no good text
    is lost); LineTooLong follows on the next call, and nothing after the long
    line is ever dispatched."""
    decoder = SseDecoder(SMALL)
    assert decoder.feed(b"data: ok\n\n" + long_line) == [SseEvent("ok")]
    with pytest.raises(LineTooLong):
        decoder.feed(b"data: more\n\n")
    with pytest.raises(LineTooLong):
        decoder.close()


def test_line_assembled_across_reads_over_limit_raises() -> None:
    """The carried partial counts towards the length of the line it completes."""
    decoder = SseDecoder(SMALL)
    decoder.feed(b"x" * 10)
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * (SMALL - 9) + b"\n")


def test_over_limit_line_fed_byte_by_byte_raises_at_first_excess_byte() -> None:
    """Fed one byte at a time, the (limit+1)th byte of a line raises, not later."""
    decoder = SseDecoder(SMALL)
    for _ in range(SMALL):
        decoder.feed(b"z")
    with pytest.raises(LineTooLong):
        decoder.feed(b"z")


def test_many_short_lines_in_one_large_read_are_fine() -> None:
    """Only a line's length counts, not the size of the read holding it."""
    data = b"data: abcdefghij\n\n" * 100
    assert decode([data], SMALL) == ([SseEvent("abcdefghij")] * 100, 0)


# ---- encode_event and properties ------------------------------------------------------

def test_encode_event_multi_line_and_event_name() -> None:
    """A newline in data becomes several ``data:`` lines; ``event:`` comes first."""
    assert encode_event("a\nb", "delta") == b"event: delta\ndata: a\ndata: b\n\n"
    assert encode_event("") == b"data: \n\n"


@pytest.mark.parametrize("text", ["a\rb", "a\r\nb", "a\r", "\r\r\n"])
def test_encode_event_carriage_returns_come_back_as_line_feeds(text: str) -> None:
    """SSE has no way to carry CR inside data: CR and CRLF decode as LF, and
    CRLF is one line end, not two."""
    assert decode([encode_event(text)]) == ([SseEvent(normalise_newlines(text))], 0)


@settings(max_examples=200)
@given(sse_events())
def test_decode_of_encode_event_round_trips(event: tuple[str, str | None]) -> None:
    """decode(encode_event(x)) == x for any text, ``:`` and ``\\n`` included
    (CR and CRLF come back as LF, the only newline SSE data can carry)."""
    data, name = event
    assert decode([encode_event(data, name)]) == ([expected_event(data, name)], 0)


@settings(max_examples=200)
@given(sse_texts.filter(lambda text: "\r" not in text))
def test_decode_of_encode_event_is_exact_without_cr(text: str) -> None:
    """Without CR the round trip is byte-for-byte exact."""
    assert decode([encode_event(text)])[0] == [SseEvent(text)]


@settings(max_examples=200)
@given(st.lists(sse_events(), max_size=6), st.data())
def test_any_chunking_of_a_valid_stream_yields_the_same_events(
    events: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    """However a valid stream is cut into reads, the same events come out."""
    stream = b"".join(encode_event(text, name) for text, name in events)
    pieces = data.draw(chunkings(stream))
    assert decode(pieces) == ([expected_event(text, name) for text, name in events], 0)
