"""Stage 3 for qwen-v1 (relay/pipeline/deaccumulate.py): cumulative → incremental.

The original Worker guessed with ``startsWith`` and resent the whole text when
the guess failed, doubling the answer. These tests pin the by-position rule:
output text is exactly the upstream text, never more.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline import Frame, StreamStats, deaccumulate
from tests.strategies import accumulate, cumulative_frames, sse_texts, text_pieces


async def frames_of(*frames: Frame) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame


async def run(contents: list[str], stats: StreamStats | None = None) -> list[str]:
    """Deaccumulate frames with the given cumulative contents; return the deltas."""
    stats = stats if stats is not None else StreamStats()
    return [f.content async for f in deaccumulate(frames_of(*(Frame(content=c) for c in contents)), stats)]


async def test_repeating_text_gives_equal_increments() -> None:
    """"ha","haha","hahaha" → "ha","ha","ha": the new part is by position, not by search."""
    assert await run(["ha", "haha", "hahaha"]) == ["ha", "ha", "ha"]


async def test_identical_repeated_frame_adds_nothing() -> None:
    """A frame equal to the previous one yields no frame and no text."""
    stats = StreamStats()
    assert await run(["Hel", "Hel", "Hello", "Hello"], stats) == ["Hel", "lo"]
    assert stats.divergences == 0


async def test_empty_first_frame_is_not_a_rewrite() -> None:
    """An empty first chunk (role only) yields nothing and counts no divergence."""
    stats = StreamStats()
    assert await run(["", "Hi", "Hi there"], stats) == ["Hi", " there"]
    assert stats.divergences == 0


async def test_frame_without_text_keeps_position_and_metadata() -> None:
    """A text-less frame mid-stream does not reset the position; its metadata
    (finish_reason, usage, extra) still reaches the next stage."""
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    source = frames_of(
        Frame(content="ab"),
        Frame(extra={"name": "web_search"}),
        Frame(content="abc"),
        Frame(finish_reason="stop", usage=usage),
    )
    stats = StreamStats()
    out = [frame async for frame in deaccumulate(source, stats)]
    assert [(f.content, f.extra, f.finish_reason, f.usage) for f in out] == [
        ("ab", None, None, None),
        ("", {"name": "web_search"}, None, None),
        ("c", None, None, None),
        ("", None, "stop", usage),
    ]
    assert stats.divergences == 0


async def test_rewrite_counts_divergence_and_never_doubles_text() -> None:
    """Upstream rewrote earlier text: one divergence, and the client gets only the
    characters beyond what it already has (not the whole text again)."""
    stats = StreamStats()
    out = await run(["Hello", "Help", "Help me out"], stats)
    assert stats.divergences == 1
    assert out == ["Hello", "me out"]
    assert len("".join(out)) == len("Help me out")


async def test_deaccumulate_closes_its_source_when_closed_early() -> None:
    """Closing the stage closes the frames it reads."""
    closed = []

    async def source() -> AsyncIterator[Frame]:
        try:
            yield Frame(content="a")
            yield Frame(content="ab")
        finally:
            closed.append(True)

    stream = deaccumulate(source(), StreamStats())
    assert (await anext(stream)).content == "a"
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    assert closed == [True]


@settings(max_examples=200)
@given(cumulative_frames())
async def test_deltas_of_growing_prefixes_concatenate_to_the_text(case: tuple[str, list[str]]) -> None:
    """For any text and any split into growing prefixes (repeats and an empty
    first frame included) the deltas concatenate to exactly the text."""
    text, frames = case
    stats = StreamStats()
    out = await run(frames, stats)
    assert "".join(out) == text
    assert all(out), "no empty text frame is passed on"
    assert stats.divergences == 0


@settings(max_examples=200)
@given(text_pieces)
async def test_deaccumulate_inverts_accumulate(pieces: list[str]) -> None:
    """deaccumulate(accumulate(pieces)) == pieces for non-empty pieces."""
    assert await run(accumulate(pieces)) == pieces


@settings(max_examples=200)
@given(st.lists(sse_texts, max_size=10))
async def test_arbitrary_frames_never_produce_more_text_than_the_longest(frames: list[str]) -> None:
    """Whatever the upstream sends (rewrites included), the client receives exactly
    as many characters as the longest cumulative text, and a divergence is
    counted for each non-empty frame that does not extend the previous one."""
    stats = StreamStats()
    out = await run(frames, stats)
    assert len("".join(out)) == max((len(f) for f in frames), default=0)
    expected_divergences = 0
    previous = ""
    for frame in frames:
        if frame:
            expected_divergences += not frame.startswith(previous)
            previous = frame
    assert stats.divergences == expected_divergences
