"""Random upstream byte streams through the whole stream pipeline (issue 6, "Also").

The stages are called exactly as the chat handler chains them, fed a plain async
generator of byte chunks (STYLE.md §6: stages are tested with literals, no sockets):

    upstream_payloads → get_dialect("qwen-v1").stream_frames → encode_sse(SseEncoder)

Three kinds of input, from most to least structured:

- well-formed qwen-v1 streams: growing cumulative texts (repeats and an empty first
  frame included, plain or ``<think>…</think>``-prefixed), with garbage events,
  comments, blank keep-alive lines, ``\\n`` / ``\\r\\n`` / ``\\r`` line ends (also
  mixed), with or without ``[DONE]`` (and junk after it), the last line end possibly
  missing, split into reads at random points or one byte at a time;
- chaotic event streams: rewrites, in-stream errors, unknown delta fields, odd
  numbers, lone surrogates, web-search deltas, ``[DONE]`` anywhere, lines over a small
  ``max_line_bytes``;
- random bytes.

Invariants, for every input: the output is valid SSE as we write it (``data: `` lines
only, each event one line), every ``data:`` is strict JSON (no ``NaN``) or ``[DONE]``,
``[DONE]`` comes exactly once and last, the role chunk comes first, at most one error
event and only right before ``[DONE]``, exactly one ``finish_reason`` otherwise, and
no exception escapes. For well-formed input, the delivered text (and reasoning) is
exactly the upstream's final text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.dialects import get_dialect
from relay.errors import RelayError
from relay.openai_wire import estimate_usage
from relay.pipeline import StreamStats, encode, upstream_payloads
from relay.surfaces.openai_chat import ChatChunkEncoder
from tests.strategies import chunkings, sse_texts

#: the relay's default --max-line-bytes; well-formed streams stay far below it.
MAX_LINE_BYTES = 1024 * 1024
ENVELOPE_KEYS = {"message", "type", "param", "code"}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- running the pipeline and checking what comes out -----------------------------------


async def run_pipeline(chunks: list[bytes], *, max_line_bytes: int = MAX_LINE_BYTES,
                       include_usage: bool = False) -> bytes | dict[str, Any]:
    """Feed ``chunks`` (one per upstream read) through the chain; return the client's bytes.

    A fault before the stream started is raised by the chain, and the client gets a
    status answer instead: its JSON envelope is returned then.
    """
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            if chunk:  # UpstreamResponse.iter_bytes never yields an empty read
                yield chunk

    stats = StreamStats()
    frames = get_dialect("qwen-v1").stream_frames(upstream_payloads(body(), max_line_bytes, stats), stats)
    encoder = ChatChunkEncoder(completion_id="chatcmpl-fuzz", created=1700000000, model="qwen-max-latest",
                               include_usage=include_usage)

    def usage_estimate(chars: int) -> dict[str, Any]:
        return estimate_usage([{"role": "user", "content": "fuzz"}], chars)

    async with aclosing(encode(frames, encoder, stats, usage_estimate)) as stream:
        out: list[bytes] = []
        try:
            async for data in stream:
                out.append(data)
        except RelayError as exc:
            assert not out, "an error after the stream started must be an event, not raised"
            return exc.envelope()
        return b"".join(out)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259); JSON.parse in a browser rejects it")


@dataclass(frozen=True, slots=True)
class Delivered:
    content: str
    reasoning: str
    error: dict[str, Any] | None


def check_output(raw: bytes | dict[str, Any]) -> Delivered:
    """Assert every wire invariant of an OpenAI stream; return what the client got."""
    if isinstance(raw, dict):  # a status answer: nothing was streamed
        assert set(raw["error"]) == ENVELOPE_KEYS
        return Delivered(content="", reasoning="", error=raw["error"])
    text = raw.decode("utf-8")  # strict: the relay must never send invalid UTF-8
    assert text.endswith("\n\n"), text[-200:]
    blocks = text[:-2].split("\n\n")
    for block in blocks:
        assert block.startswith("data: ") and "\n" not in block and "\r" not in block, block[:200]
    datas = [block[6:] for block in blocks]
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1, datas[-3:]
    objects = [json.loads(data, parse_constant=_reject_constant) for data in datas[:-1]]
    assert all(isinstance(obj, dict) for obj in objects)
    assert objects[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    errors = [obj for obj in objects if "error" in obj]
    assert len(errors) <= 1, errors
    if errors:
        assert "error" in objects[-1], "the error event must come right before [DONE]"
        assert set(errors[0]["error"]) == ENVELOPE_KEYS
    chunks = [obj for obj in objects if "error" not in obj]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and isinstance(chunk["choices"], list)
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    finishes = [choice["finish_reason"] for choice in choices if choice["finish_reason"] is not None]
    assert len(finishes) == (0 if errors else 1), finishes
    return Delivered(
        content="".join(choice["delta"].get("content") or "" for choice in choices),
        reasoning="".join(choice["delta"].get("reasoning_content") or "" for choice in choices),
        error=errors[0]["error"] if errors else None,
    )


# --- well-formed qwen-v1 streams ------------------------------------------------------------


def chunk_payload(content: str, *, role: bool, finish: str | None) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": content} if role else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


#: Whole events (data lines, then a blank line) that carry no answer text.
GARBAGE_EVENTS: tuple[tuple[bytes, ...], ...] = (
    (b"data: this is not json",),
    (b"data: [1,2,3]",),
    (b"data: 42",),
    (b'data: "a string"',),
    (b"data: null",),
    (b"data: true",),
    (b"data: {}",),
    (b'data: {"choices": []}',),
    (b'data: {"choices": "nope"}',),
    (b'data: {"choices": [42]}',),
    (b'data: {"choices": [{"delta": "nope"}]}',),
    (b'data: {"choices": [{"delta": {"role": "assistant"}}]}',),
    (b'data: {"choices": [{"delta": {"content": null}}]}',),
    (b'data: {"foo": {"bar": [1, 2]}}',),
    (b'data: {"choices":[{"delta":{"content":',),
    (b"data:",),
    (b"data: {", b"data: }"),
    (b"data: \xff\xfe\xfd invalid UTF-8",),
    (b"data: \xc3\x28 cut \xe2\x82",),
    (b"event: ping", b"data: {}"),
)
#: Lines that never make an event: comments (keep-alives), other fields, blank lines.
QUIET_LINES: tuple[bytes, ...] = (
    b": keep-alive", b":", b": \xff\xfe invalid UTF-8 in a comment", b"retry: 5000", b"id: 42",
    b"event: ping", b"x-unknown: 1", b"",
)

garbage_events = st.one_of(
    st.sampled_from(GARBAGE_EVENTS),
    # \x00 first: no JSON value starts with it, so random bytes can never be a chunk.
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b).map(lambda b: (b"data: \x00" + b,)),
)
plain_texts = sse_texts.filter(lambda text: "<think>" not in text)
reasoning_texts = sse_texts.filter(lambda text: "</think>" not in text)
answer_texts = sse_texts.filter(lambda text: not text.startswith(("\r", "\n")))


def apply_line_endings(lines: list[bytes], endings: list[bytes]) -> bytes:
    """Join lines, keeping a CR-only line end from swallowing the blank line after it.

    ``"\\r"`` followed by ``"\\n"`` is one line end (CRLF), so a blank line ended by
    ``"\\n"`` or ``"\\r\\n"`` right after a ``"\\r"``-ended line would vanish: that is
    SSE's own ambiguity, not a relay fault. Such a blank line is ended by ``"\\r"`` too.
    """
    out = bytearray()
    previous = b""
    for line, ending in zip(lines, endings, strict=True):
        if previous == b"\r" and not line:
            ending = b"\r"
        out += line + ending
        previous = ending
    return bytes(out)


@st.composite
def well_formed_streams(draw: st.DrawFn) -> tuple[list[bytes], str, str]:
    """``(reads, content, reasoning)``: a valid stream, and the text it must deliver."""
    if draw(st.booleans()):
        content, reasoning = draw(plain_texts), ""
        text = content
    else:
        reasoning, content = draw(reasoning_texts), draw(answer_texts)
        text = f"<think>{reasoning}</think>{content}"
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    prefixes = [text[:cut] for cut in cuts] + [text]
    lines: list[bytes] = []
    for index, prefix in enumerate(prefixes):
        for event in draw(st.lists(garbage_events, max_size=2)):
            lines.extend([*event, b""])
        lines.extend(draw(st.lists(st.sampled_from(QUIET_LINES), max_size=2)))
        is_last = index == len(prefixes) - 1
        finish = "stop" if is_last and draw(st.booleans()) else None
        payload = json.dumps(chunk_payload(prefix, role=draw(st.booleans()), finish=finish),
                             ensure_ascii=draw(st.booleans()),
                             separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
        field = draw(st.sampled_from(["data: ", "data:"]))
        lines.extend([(field + payload + draw(st.sampled_from(["", " "]))).encode(), b""])
    if draw(st.booleans()):
        lines.extend([b"data: [DONE]", b""])
        if draw(st.booleans()):  # nothing after [DONE] may reach the client
            lines.extend([b"data: " + json.dumps(chunk_payload(text + " JUNK", role=False, finish=None)).encode(),
                          b""])
    elif draw(st.booleans()):
        del lines[-1]  # the stream ends right after its last data line, no blank line
        lines[-1] += b"\n" if draw(st.booleans()) else b""
    style = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"mixed"]))
    if style == b"mixed":
        endings = draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(lines), max_size=len(lines)))
    else:
        endings = [style] * len(lines)
    data = apply_line_endings(lines, endings)
    if len(data) <= 4000 and draw(st.booleans()):
        reads = [data[i:i + 1] for i in range(len(data))]  # every multi-byte character cut
    else:
        reads = draw(chunkings(data))
    return reads, content, reasoning


@settings(FUZZ, max_examples=400)
@given(well_formed_streams(), st.booleans())
async def test_well_formed_upstream_streams_deliver_the_exact_final_text(
        case: tuple[list[bytes], str, str], include_usage: bool) -> None:
    """Issue 6: any split, garbage, line ends or keep-alives around a valid cumulative
    stream → valid SSE, one final ``[DONE]``, and exactly the upstream's final text."""
    reads, content, reasoning = case
    delivered = check_output(await run_pipeline(reads, include_usage=include_usage))
    if content or reasoning:
        assert delivered.error is None, delivered.error
        assert delivered.content == content
        assert delivered.reasoning == reasoning
    else:
        assert delivered.error is not None and delivered.error["code"] == "upstream_empty_answer"


# --- chaotic event streams --------------------------------------------------------------------

#: Text as a broken upstream may spell it: JSON allows lone UTF-16 surrogates (\\ud800).
surrogate_texts = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2).map(lambda text: "x" + text)
wild_texts = st.one_of(sse_texts, surrogate_texts)
#: Each oddity is its own branch, so it is drawn often: one_of picks branches evenly.
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    sse_texts, surrogate_texts,
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(wild_texts, inner, max_size=3), max_leaves=6)


@st.composite
def chaotic_payload(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["chunk", "odd-chunk", "error", "usage", "search", "garbage", "done"]))
    payload: Any
    if kind == "done":
        return b"data: [DONE]"
    if kind == "garbage":
        return b"\n".join(draw(garbage_events))
    if kind == "chunk":
        payload = chunk_payload(draw(wild_texts), role=draw(st.booleans()),
                                finish=draw(st.one_of(st.none(), st.sampled_from(["stop", "length"]), wild_texts)))
        if draw(st.booleans()):
            payload["choices"][0]["delta"].update(draw(st.dictionaries(wild_texts, json_values, max_size=2)))
    elif kind == "odd-chunk":
        payload = {"choices": [{"delta": {"content": draw(json_values)}, "finish_reason": draw(json_values)}],
                   "usage": draw(json_values)}
    elif kind == "error":
        code = draw(st.one_of(st.sampled_from(["Bad_Request", "ContextLengthExceeded", "Unauthorized",
                                               "RateLimited", "internal_error"]), wild_texts))
        payload = {"error": draw(st.one_of(st.fixed_dictionaries({"code": st.just(code), "details": wild_texts}),
                                           json_values))}
    elif kind == "usage":
        payload = {"choices": [], "usage": draw(st.one_of(
            st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6),
                                   "completion_tokens": st.integers(0, 10**6)}), json_values))}
    else:
        payload = {"choices": [{"delta": {"name": "web_search", "extra": {"web_search_info": draw(json_values)}}}]}
    # ensure_ascii=False writes a lone surrogate raw: as bytes that are not UTF-8 at all.
    return ("data: " + json.dumps(payload, ensure_ascii=draw(st.booleans()))).encode("utf-8", "surrogatepass")


@st.composite
def chaotic_streams(draw: st.DrawFn) -> tuple[list[bytes], int]:
    max_line = draw(st.integers(64, 4096))
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(b"data: " + b"x" * draw(st.integers(max_line - 6, 2 * max_line)))
        else:
            lines.append(draw(chaotic_payload()))
        lines.append(b"")
    endings = draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(lines), max_size=len(lines)))
    data = b"".join(line + ending for line, ending in zip(lines, endings, strict=True))
    return draw(chunkings(data)), max_line


@settings(FUZZ, max_examples=400)
@given(chaotic_streams(), st.booleans())
async def test_chaotic_upstream_streams_always_end_with_valid_json_and_one_done(
        case: tuple[list[bytes], int], include_usage: bool) -> None:
    """Issue 6: rewrites, in-stream errors, odd values, lone surrogates, ``[DONE]`` anywhere
    and over-long lines never crash the pipeline nor break the client's wire format."""
    reads, max_line = case
    check_output(await run_pipeline(reads, max_line_bytes=max_line, include_usage=include_usage))


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=4000).flatmap(chunkings), st.integers(16, 4096))
async def test_random_upstream_bytes_always_end_with_valid_json_and_one_done(
        reads: list[bytes], max_line: int) -> None:
    """Issue 6: whatever bytes arrive, the client gets a well-formed stream ending in ``[DONE]``."""
    check_output(await run_pipeline(reads, max_line_bytes=max_line))


# --- findings pinned as plain tests -------------------------------------------------------------


async def test_upstream_error_with_a_lone_surrogate_still_ends_with_an_error_event_and_done() -> None:
    """Issue 6: the chaos fuzz found this. JSON may spell a lone surrogate (``\\ud83d``,
    half an emoji); the relay copies upstream error details into its error event, and
    that event must still be encodable, or the stream is cut without ``[DONE]``."""
    lines = [b'data: {"choices":[{"delta":{"content":"partial"}}]}', b"",
             b'data: {"error":{"code":"Bad_Request","details":"broken \\ud83d emoji"}}', b"", b""]
    delivered = check_output(await run_pipeline([b"\n".join(lines)]))
    assert delivered.content == "partial"
    assert delivered.error is not None and delivered.error["code"] == "upstream_error"


async def test_non_json_numbers_in_unknown_delta_fields_never_reach_the_client() -> None:
    """Issue 6: every ``data:`` must be strict JSON. Python's parser accepts ``NaN`` and
    ``Infinity`` from the upstream; re-encoding them unchanged sends the client a chunk
    that ``JSON.parse`` (and the openai SDKs) reject."""
    line = b'data: {"choices":[{"delta":{"content":"ok","score":NaN,"big":1e999}}]}'
    delivered = check_output(await run_pipeline([line + b"\n\n"]))
    assert delivered.content == "ok"


async def test_upstream_finish_reason_with_a_lone_surrogate_still_ends_with_done() -> None:
    """Issue 6: found by the chaos fuzz. The upstream's ``finish_reason`` is copied into
    the closing chunk; a lone surrogate in it must not make that chunk unencodable."""
    line = b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"\\ud800"}]}'
    delivered = check_output(await run_pipeline([line + b"\n\n"]))
    assert delivered.content == "a"


async def test_web_search_delta_of_an_unexpected_shape_is_skipped_not_a_crash() -> None:
    """Issue 6: found by the chaos fuzz. A ``web_search`` delta whose ``extra`` or
    ``web_search_info`` is not the expected object/list must not end the stream with an
    exception (no ``[DONE]``); the answer around it still arrives."""
    lines = [
        b'data: {"choices":[{"delta":{"content":"before "}}]}',
        b'data: {"choices":[{"delta":{"name":"web_search","extra":{"web_search_info":true}}}]}',
        b'data: {"choices":[{"delta":{"name":"web_search","extra":["not", "an", "object"]}}]}',
        b'data: {"choices":[{"delta":{"content":"before after"}}]}',
    ]
    delivered = check_output(await run_pipeline([b"\n\n".join(lines) + b"\n\n"]))
    assert delivered.content == "before after"
