"""Thinking text: inline <think> split out as it streams, and put back on request (issue 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline.frames import Frame
from relay.pipeline.think import ThinkSplitter, reasoning_as_content, split_think

safe_text = st.text(st.characters(blacklist_characters="<>"), max_size=60)


def split_all(text: str, size: int) -> tuple[str, str]:
    splitter = ThinkSplitter()
    reasoning, content = "", ""
    for start in range(0, len(text), size):
        r, c = splitter.feed(text[start:start + size])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@settings(max_examples=150, deadline=None)
@given(thinking=safe_text, answer=safe_text.filter(lambda a: not a.startswith(("\n", "\r"))),
       size=st.integers(1, 9))
def test_any_split_separates_reasoning_and_answer_exactly(thinking: str, answer: str, size: int) -> None:
    """For any text, thinking and chunk size: reasoning and answer come out exactly, once each."""
    assert split_all(f"<think>{thinking}</think>\n\n{answer}", size) == (thinking, answer)


@settings(max_examples=100, deadline=None)
@given(answer=st.text(max_size=60).filter(lambda a: not a.lstrip().startswith("<")), size=st.integers(1, 9))
def test_text_without_a_leading_think_tag_is_all_answer(answer: str, size: int) -> None:
    assert split_all(answer, size) == ("", answer)


def test_tags_later_in_the_answer_are_answer_text() -> None:
    text = "<think>r</think>The answer mentions </think> and <think> literally"
    assert split_all(text, 3) == ("r", "The answer mentions </think> and <think> literally")


def test_unclosed_thinking_at_end_of_stream_is_reasoning() -> None:
    assert split_all("<think>still thinking </thi", 4) == ("still thinking </thi", "")


def test_reasoning_is_released_while_it_streams_not_batched() -> None:
    """Text is held back only while it may be the start of the closing tag."""
    splitter = ThinkSplitter()
    assert splitter.feed("<think>step one") == ("step one", "")
    assert splitter.feed(" step two </th") == (" step two ", "")
    assert splitter.feed("ink>Answer") == ("", "Answer")


async def _frames(*frames: Frame) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame


async def _collect(stream: AsyncIterator[Frame]) -> list[Frame]:
    return [frame async for frame in stream]


async def test_split_think_stage_moves_tagged_text_to_reasoning() -> None:
    out = await _collect(split_think(_frames(Frame(content="<thi"), Frame(content="nk>why</think>"),
                                             Frame(content="\n\nbecause"), Frame(finish_reason="stop"))))
    assert "".join(f.reasoning for f in out) == "why"
    assert "".join(f.content for f in out) == "because"
    assert out[-1].finish_reason == "stop"


async def test_reasoning_as_content_wraps_reasoning_in_think_tags() -> None:
    out = await _collect(reasoning_as_content(_frames(
        Frame(reasoning="a"), Frame(reasoning="b"), Frame(content="answer"), Frame(finish_reason="stop"))))
    assert "".join(f.content for f in out) == "<think>ab</think>\n\nanswer"
    assert not any(f.reasoning for f in out)


async def test_reasoning_as_content_closes_the_tag_when_no_answer_follows() -> None:
    out = await _collect(reasoning_as_content(_frames(Frame(reasoning="only"), Frame(finish_reason="length"))))
    assert "".join(f.content for f in out) == "<think>only</think>"
