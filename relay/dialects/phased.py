"""The incremental, ``phase``-tagged stream of qwen-phase and qwen-v2 (§3, §4.3, §7.4).

Every frame carries only new text; ``phase`` says what it is. Strategy: an
allow-list, because §7.4 shows the service adding phases over time and an
unknown one must never leak into the answer:

- answer-like (``answer``, ``deep_research_answer``, and no ``phase`` at all,
  which is qwen-phase without ``output_schema``) and image phases (``image_gen``,
  ``image``, ``t2i``: an image URL or markdown) become content;
- thinking (``think``, ``thinking``, ``reasoning``: text in ``content``;
  ``thinking_summary``: text in ``extra.summary_thought.content``) becomes reasoning;
- search (``web_search`` / ``search``, or ``name: "web_search"``) feeds the
  sources appended to the answer; its text, if any, is not shown;
- anything else (``code_interpreter``, a phase invented next month) is dropped,
  counted in ``StreamStats.dropped_phase_frames`` and logged once per name
  (``upstream_phase_dropped``), so an operator sees it without it reaching a client.

One response per stream (§7.4): the service may open two candidate responses in
one stream and interleave their frames; concatenating both doubles every piece
of text. The first ``response.created`` (or, without one, the first frame's
``response_id``) is followed; frames carrying another ``response_id`` are
counted in ``StreamStats.foreign_frames`` and dropped, and a later
``response.created`` is ignored.

Only the followed response's finished ``answer`` (or ``deep_research_answer``)
frame ends the answer — a finished thinking phase does not — and it ends it
whether or not ``[DONE]`` follows (v2 captures show none). ``response.info``
keep-alives carry nothing but reset the idle timer by arriving. Errors inside
the stream, in every shape ``v2_errors.payload_error`` knows, raise; a context
overflow ends the answer with ``finish_reason: "length"`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from ..errors import RelayError
from ..openai_wire import usage_from_upstream
from ..pipeline import close_source, stage
from ..pipeline.frames import HEARTBEAT, SILENT_PAYLOAD, Frame, StreamStats
from .common import first_choice, sources_text
from .v2_errors import CONTEXT_LENGTH_CODE, payload_error

#: a payload → the error it carries (or None), in one dialect's conventions.
PayloadErrors = Callable[[Any], RelayError | None]

__all__ = ["SummaryText", "phase_frames"]

_log = logging.getLogger("relay.upstream")
_ANSWER_PHASES = frozenset({"answer", "deep_research_answer"})
#: content too: the image URL or markdown (a later issue turns it into an image part).
_IMAGE_PHASES = frozenset({"image_gen", "image", "t2i"})
_CONTENT_PHASES = _ANSWER_PHASES | _IMAGE_PHASES
_REASONING_PHASES = frozenset({"think", "thinking", "reasoning"})
_SUMMARY_PHASE = "thinking_summary"
_SEARCH_PHASES = frozenset({"web_search", "search"})
#: a phase name is upstream data: bounded before it reaches the log.
_MAX_PHASE_NAME_CHARS = 40
#: distinct dropped phase names logged per stream: an upstream inventing a new
#: name in every frame cannot turn one stream into a flood of log lines.
_MAX_LOGGED_PHASES = 8


class SummaryText:
    """Turn ``summary_thought.content`` lists into new reasoning text, exactly.

    §7.4 [C]: each frame carries the whole list so far (cumulative): the thinking
    so far cut into paragraphs at blank lines, so ``"\\n\\n".join(list)`` is the
    text so far and its last paragraph may still grow. Some streams send only the
    new piece(s) instead (incremental), and there ``"".join`` over the frames is
    the text: no blank line belongs between pieces.

    The two forms look alike until a frame's joined text fails to extend what was
    seen; from then on the stream is incremental for good, and that frame's whole
    text is new. A frame repeating the text so far is taken as a cumulative
    repeat (nothing new), not as a switch: a wrong switch would repeat the whole
    summary, a missed one loses a piece that merely equals the text so far.
    [I] Inherent to the guess: an incremental stream whose second piece begins
    with its first reads as cumulative up to that point.
    """

    __slots__ = ("_incremental", "_seen")

    def __init__(self) -> None:
        self._seen = ""
        self._incremental = False

    def delta(self, paragraphs: Any) -> str:
        """The new text that one frame's ``summary_thought.content`` adds."""
        if not isinstance(paragraphs, list):
            return ""
        pieces = [p for p in paragraphs if isinstance(p, str)]
        if self._incremental:
            return "".join(pieces)
        text = "\n\n".join(pieces)
        if not text:
            return ""  # no text at all is no evidence either way
        if text.startswith(self._seen):
            new = text[len(self._seen):]
            self._seen = text
            return new
        self._incremental = True
        self._seen = ""  # never compared again: the thinking so far need not stay in memory
        return "".join(pieces)


def _summary_paragraphs(delta: dict[str, Any]) -> Any:
    extra = delta.get("extra")
    thought = extra.get("summary_thought") if isinstance(extra, dict) else None
    return thought.get("content") if isinstance(thought, dict) else None


def _search_results(delta: dict[str, Any]) -> list[dict[str, Any]]:
    extra = delta.get("extra")
    info = extra.get("web_search_info") if isinstance(extra, dict) else None
    return [item for item in info if isinstance(item, dict)] if isinstance(info, list) else []


class _PhaseReader:
    """One stream's state, and the step from one payload to at most one frame.

    A plain method rather than the stage's loop body, so the stage can drop the
    payload (``del``) before it waits for the next one, as ``parse.py`` explains.
    """

    __slots__ = ("done", "errors", "followed", "logged", "sources", "stats", "summary")

    def __init__(self, stats: StreamStats, errors: PayloadErrors) -> None:
        self.stats = stats
        self.errors = errors
        self.summary = SummaryText()
        self.sources: list[dict[str, Any]] = []
        #: the response id followed (§7.4); None until the first one is seen.
        self.followed: str | None = None
        #: dropped phase names already logged in this stream; None until the first.
        self.logged: set[str] | None = None
        #: the followed answer's finished frame was read: nothing after it is.
        self.done = False

    def frame(self, payload: dict[str, Any]) -> Frame | None:
        """The frame one payload gives, or None; raises the upstream's in-stream error."""
        error = self.errors(payload)
        if error is not None:
            if error.instance_code == CONTEXT_LENGTH_CODE:
                self.done = True
                return Frame(finish_reason="length")
            raise error
        created = payload.get("response.created")
        if isinstance(created, dict):
            response_id = created.get("response_id")
            if self.followed is None and isinstance(response_id, str):
                self.followed = self.stats.response_id = response_id
            return None  # a second candidate's announcement changes nothing (§7.4)
        if "response.info" in payload:
            return None  # keep-alive during a long job (§4.3)
        if not self._is_followed(payload.get("response_id")):
            return None
        usage = usage_from_upstream(payload.get("usage"))
        choice = first_choice(payload)
        delta = choice.get("delta") if choice is not None else None
        if choice is None or not isinstance(delta, dict):
            return Frame(usage=usage) if usage is not None else None
        phase = delta.get("phase")
        if phase is not None and not isinstance(phase, str):
            phase = f"<{type(phase).__name__}>"  # unhashable JSON would break the set tests below
        content = delta.get("content")
        text = content if isinstance(content, str) else ""
        if delta.get("name") == "web_search" or phase in _SEARCH_PHASES:
            self.sources.extend(_search_results(delta))  # function_call frames: no results, swallowed
            frame = Frame(usage=usage)
        elif phase is None or phase in _CONTENT_PHASES:
            frame = Frame(content=text, usage=usage)
        elif phase in _REASONING_PHASES:
            frame = Frame(reasoning=text, usage=usage)
        elif phase == _SUMMARY_PHASE:
            frame = Frame(reasoning=self.summary.delta(_summary_paragraphs(delta)), usage=usage)
        else:
            self._drop_phase(phase)
            return Frame(usage=usage) if usage is not None else None  # running totals stay true
        finish = choice.get("finish_reason")
        answer_done = phase in _ANSWER_PHASES and delta.get("status") == "finished"
        if answer_done or isinstance(finish, str):
            frame.content += self.tail()
            frame.finish_reason = finish if isinstance(finish, str) else "stop"
            self.done = answer_done
            return frame
        return frame if frame.content or frame.reasoning or frame.usage else None

    def tail(self) -> str:
        """The sources seen so far, as text to append to the answer; each given once."""
        if not self.sources:
            return ""
        text = sources_text(self.sources)
        self.sources = []
        return text

    def _is_followed(self, response_id: Any) -> bool:
        """Whether a frame belongs to the followed response; counts those that do not.

        A frame without an id is accepted (qwen-phase sends none). Without a
        ``response.created`` first, the first id seen is followed.
        """
        if response_id is None or response_id == self.followed:
            return True
        if self.followed is None and isinstance(response_id, str):
            self.followed = self.stats.response_id = response_id
            return True
        self.stats.foreign_frames += 1
        return False

    def _drop_phase(self, phase: str) -> None:
        self.stats.dropped_phase_frames += 1
        name = phase[:_MAX_PHASE_NAME_CHARS]
        if self.logged is None:
            self.logged = set()
        if name not in self.logged and len(self.logged) < _MAX_LOGGED_PHASES:
            self.logged.add(name)
            _log.info("upstream_phase_dropped", extra={"fields": {"phase": name}})


@stage
async def phase_frames(payloads: AsyncIterable[dict[str, Any]], stats: StreamStats,
                       errors: PayloadErrors = payload_error) -> AsyncIterator[Frame]:
    """Normalise phase-tagged incremental payloads into frames (see the module docstring).

    ``errors`` reads the dialect's in-stream errors: qwen-v2's ``payload_error``
    by default, the 2025 reading for qwen-phase.
    """
    reader = _PhaseReader(stats, errors)
    try:
        async for payload in payloads:
            if payload is SILENT_PAYLOAD:
                yield HEARTBEAT
                continue
            frame = reader.frame(payload)
            del payload  # not held while the next one is awaited
            if frame is not None:
                yield frame
                del frame
            if reader.done:
                return
        tail = reader.tail()
        if tail:
            yield Frame(content=tail)
    finally:
        await close_source(payloads)
