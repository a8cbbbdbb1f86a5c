"""Shared Hypothesis strategies and the small helpers that go with them.

After python-attrs/attrs:tests/strategies.py: one place for the shapes the
property tests draw, so the SSE, pipeline and encoder tests agree on what
"any text" and "any chunking" mean.
"""

from __future__ import annotations

import itertools
import re
from typing import AnyStr, TypeVar

from hypothesis import strategies as st

from relay.sse import SseEvent

__all__ = [
    "CR_LF",
    "accumulate",
    "chunkings",
    "cumulative_frames",
    "event_names",
    "expected_event",
    "interleavings",
    "normalise_newlines",
    "split_at",
    "splits",
    "sse_events",
    "sse_texts",
    "summary_lists",
    "text_pieces",
    "translation_texts",
]

T = TypeVar("T")

#: SSE can only carry LF inside ``data``: CR and CRLF come back as LF.
CR_LF = re.compile(r"\r\n|\r")

#: Any text, biased towards what SSE and JSON treat specially: line ends, the
#: field colon, spaces, quotes, backslashes, NUL, U+2028/U+0085, emoji.
_special = st.sampled_from(["\r", "\n", "\r\n", ":", " ", '"', "\\", "\x00", "\u2028", "\x85", "😀", "é", "中"])
sse_texts = st.lists(st.one_of(_special, st.text(max_size=8)), max_size=12).map("".join)

#: Event types as our code writes them: no line ends (they would end the field).
event_names = st.one_of(
    st.none(),
    st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=10),
)


def normalise_newlines(text: str) -> str:
    return CR_LF.sub("\n", text)


@st.composite
def sse_events(draw: st.DrawFn) -> tuple[str, str | None]:
    """``(data, event)`` as given to ``encode_event``."""
    return draw(sse_texts), draw(event_names)


def expected_event(data: str, event: str | None) -> SseEvent:
    """What a conforming decoder yields for ``encode_event(data, event)``."""
    return SseEvent(normalise_newlines(data), event or "message", None)


def split_at(data: AnyStr, cuts: list[int]) -> list[AnyStr]:
    """Cut ``data`` at the given offsets (any order, duplicates allowed → empty pieces)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Any split of ``data`` into reads, empty reads included."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=max(1, min(len(data), 20))))
    return split_at(data, cuts)


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    """Any split of ``text`` into pieces, empty pieces included (an upstream frame with no new text)."""
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=max(1, min(len(text), 12))))
    return split_at(text, cuts)


@st.composite
def interleavings(draw: st.DrawFn, first: list[T], second: list[T]) -> list[T]:
    """Any merge of two sequences that keeps each one's own order (two candidates in one stream)."""
    order = draw(st.permutations([0] * len(first) + [1] * len(second)))
    sources = (iter(first), iter(second))
    return [next(sources[which]) for which in order]


def summary_lists(pieces: list[str]) -> list[list[str]]:
    """``summary_thought.content`` per frame in the cumulative form (§7.4), as the emulator sends it:
    the thinking so far, cut into paragraphs at blank lines."""
    out: list[list[str]] = []
    so_far = ""
    for piece in pieces:
        so_far += piece
        out.append(so_far.split("\n\n"))
    return out


#: Non-empty increments, as a well-behaved upstream sends them.
text_pieces = st.lists(sse_texts.filter(bool), max_size=10)


def accumulate(pieces: list[str]) -> list[str]:
    """qwen-v1's view of a stream: every frame holds the whole text so far."""
    out: list[str] = []
    so_far = ""
    for piece in pieces:
        so_far += piece
        out.append(so_far)
    return out


@st.composite
def cumulative_frames(draw: st.DrawFn) -> tuple[str, list[str]]:
    """``(text, frames)``: growing prefixes of ``text`` ending with all of it.

    Cut points may repeat (an identical frame sent again) and may be 0 (an
    empty first frame).
    """
    text = draw(sse_texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    return text, [text[:cut] for cut in cuts] + [text]


#: Texts a translation plugin sends: paragraphs with HTML, placeholders, quotes, braces
#: and line breaks (everything the keyed JSON prompt must carry intact), some blank.
translation_texts = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
        st.sampled_from(['<b>Bold</b> text', 'Hello, {name}!', '%1$s files', 'Line one\nLine two',
                         '"quoted" {"1": "not a key"}', '```code```', '  padded  ', '', ' ', '{', '}']),
    ),
    min_size=1, max_size=12,
)
