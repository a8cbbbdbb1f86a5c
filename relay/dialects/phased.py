"""The incremental, ``phase``-tagged stream of qwen-phase and qwen-v2 (§3, §4.3).

Every frame carries only new text. ``phase`` says what it is: ``think`` (text in
``content``) and ``thinking_summary`` (text in ``extra.summary_thought.content``)
become reasoning; ``answer`` becomes content; ``web_search`` carries sources.
Only the finished ``answer`` frame ends the answer — a finished thinking phase
does not — and it ends it whether or not ``[DONE]`` follows (v2 captures show
none). ``response.created`` gives the response id (for the stop request);
``response.info`` keep-alives carry nothing but reset the idle timer by arriving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..openai_wire import usage_from_upstream
from ..pipeline import close_source, stage
from ..pipeline.frames import Frame, StreamStats
from .common import first_choice, length_or_raise, sources_text

__all__ = ["SummaryText", "phase_frames"]

_log = logging.getLogger("relay.upstream")
_REASONING_PHASES = frozenset({"think", "thinking", "reasoning"})
_SEARCH_PHASES = frozenset({"web_search", "search"})


class SummaryText:
    """Turn ``summary_thought.content`` lists into new reasoning text.

    [I] Whether each frame carries the whole list so far or only new paragraphs
    is not in the captures, so both are handled: a list whose joined text
    extends what was seen is cumulative (only the new tail is emitted), anything
    else is taken as new paragraphs.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen = ""

    def delta(self, paragraphs: Any) -> str:
        if not isinstance(paragraphs, list):
            return ""
        text = "\n\n".join(p for p in paragraphs if isinstance(p, str))
        if not text:
            return ""
        if text.startswith(self._seen):
            new = text[len(self._seen):]
        else:
            new = ("\n\n" if self._seen else "") + text
        self._seen = text if text.startswith(self._seen) else self._seen + new
        return new


def _summary_paragraphs(delta: dict[str, Any]) -> Any:
    extra = delta.get("extra")
    thought = extra.get("summary_thought") if isinstance(extra, dict) else None
    return thought.get("content") if isinstance(thought, dict) else None


def _search_results(delta: dict[str, Any]) -> list[dict[str, Any]]:
    extra = delta.get("extra")
    info = extra.get("web_search_info") if isinstance(extra, dict) else None
    return [item for item in info if isinstance(item, dict)] if isinstance(info, list) else []


@stage
async def phase_frames(payloads: AsyncIterable[dict[str, Any]], stats: StreamStats) -> AsyncIterator[Frame]:
    """Normalise phase-tagged incremental payloads into frames."""
    summary = SummaryText()
    sources: list[dict[str, Any]] = []
    try:
        async for payload in payloads:
            created = payload.get("response.created")
            if isinstance(created, dict):
                response_id = created.get("response_id")
                stats.response_id = response_id if isinstance(response_id, str) else None
                continue
            if "response.info" in payload:
                continue  # keep-alive during a long job (§4.3)
            error = payload.get("error")
            if error is not None:
                yield Frame(finish_reason=length_or_raise(error))
                return
            usage = usage_from_upstream(payload.get("usage"))
            choice = first_choice(payload)
            delta = choice.get("delta") if choice is not None else None
            if not isinstance(delta, dict):
                if usage is not None:
                    yield Frame(usage=usage)
                continue
            phase = delta.get("phase")
            content = delta.get("content")
            text = content if isinstance(content, str) else ""
            if delta.get("name") == "web_search" or phase in _SEARCH_PHASES:
                sources.extend(_search_results(delta))
                frame = Frame(usage=usage)
            elif phase in _REASONING_PHASES:
                frame = Frame(reasoning=text, usage=usage)
            elif phase == "thinking_summary":
                frame = Frame(reasoning=summary.delta(_summary_paragraphs(delta)), usage=usage)
            else:  # "answer", no phase (qwen-phase without output_schema), image phases
                frame = Frame(content=text, usage=usage)
            finish = choice.get("finish_reason") if isinstance(choice, dict) else None
            answer_done = phase == "answer" and delta.get("status") == "finished"
            if answer_done or isinstance(finish, str):
                if sources:
                    frame.content += sources_text(sources)
                    sources = []
                frame.finish_reason = finish if isinstance(finish, str) else "stop"
                yield frame
                if answer_done:
                    return
                continue
            if frame.content or frame.reasoning or frame.usage:
                yield frame
        if sources:
            yield Frame(content=sources_text(sources))
    finally:
        await close_source(payloads)
