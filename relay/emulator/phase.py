"""The ``qwen-phase`` stream (§3): phase-tagged deltas on the v1 paths.

Two body switches, read independently (§2.2, §3 [C]):

- ``"incremental_output": true`` makes deltas incremental (else cumulative);
- ``feature_config.output_schema: "phase"`` on the last message tags each delta with
  ``phase`` (``think`` / ``answer``) and ``status`` (``typing``, then one frame with
  ``content: ""`` and ``status: "finished"`` closing each phase).

Without ``output_schema: "phase"`` the stream is the v1 one (``script.py``), just
incremental when asked: no ``phase`` key (§3 last paragraph [C]), thinking inline as
``<think>…</think>`` as in v1. With it, thinking is sent as ``phase: "think"`` frames
only when ``feature_config.thinking_enabled`` is true.

[I] choices where the notes are silent: phase frames carry no ``role`` (the §3
sample has none); phase + cumulative output makes ``content`` cumulative *within*
each phase; the web-search frame gets ``phase: "web_search"`` and
``status: "finished"`` (one frame, so it opens and closes its phase); ``usage`` is
sent only when the directive asks, on the last answer frame, as in v1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import Directive
from relay.emulator.framing import Frame, to_json
from relay.emulator.script import default_thought, reply_text, split_even, web_search_delta

__all__ = ["Reply", "build_reply", "phase_frames", "phase_padded"]


@dataclass(frozen=True, slots=True)
class Reply:
    """Thinking and answer increments, kept apart (phase and v2 stream them apart)."""

    think: tuple[str, ...] | None
    answer: tuple[str, ...]

    @property
    def answer_text(self) -> str:
        return "".join(self.answer)

    @property
    def think_text(self) -> str | None:
        return None if self.think is None else "".join(self.think)


def build_reply(
    directive: Directive, user_text: str, default_chunks: int, *, thinking: bool, model_thinks: bool
) -> Reply:
    """Decide the thinking and answer increments for a phase or v2 stream.

    ``thinking``: the request switched thinking on. The directive's ``think`` text is
    then used whatever the model; without one, a model that can think
    (``abilities.thinking`` > 0) thinks a default thought and one that cannot does not.
    """
    chunks = directive.chunks or default_chunks
    think: tuple[str, ...] | None = None
    if thinking:
        if directive.think is not None:
            think = split_even(directive.think, chunks)
        elif model_thinks:
            think = split_even(default_thought(user_text), chunks)
    if directive.pieces is not None:
        answer = directive.pieces
    else:
        answer = split_even(reply_text(directive, user_text), chunks)
    return Reply(think, answer)


def _delta(content: str, phase: str, status: str) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": content, "phase": phase, "status": status}}]}


def _phase(pieces: Sequence[str], phase: str, *, incremental: bool) -> list[dict[str, Any]]:
    events = []
    so_far = ""
    for piece in pieces:
        so_far += piece
        events.append(_delta(piece if incremental else so_far, phase, "typing"))
    return events


def phase_frames(
    reply: Reply,
    *,
    incremental: bool,
    sources: Sequence[Mapping[str, Any]] | None,
    usage: Mapping[str, int] | None,
    done: bool,
) -> list[Frame]:
    """List the events of a phase-tagged stream: search, think, answer, [DONE]."""
    frames: list[Frame] = []
    if sources is not None:
        search = web_search_delta(sources) | {"phase": "web_search", "status": "finished"}
        frames.append(Frame(to_json({"choices": [{"delta": search}]})))
    if reply.think is not None:
        for event in _phase(reply.think, "think", incremental=incremental):
            frames.append(Frame(to_json(event), is_content=True))
        frames.append(Frame(to_json(_delta("", "think", "finished"))))
    answer = _phase(reply.answer, "answer", incremental=incremental)
    if usage is not None:
        answer[-1]["usage"] = dict(usage)
    frames.extend(Frame(to_json(event), is_content=True) for event in answer)
    frames.append(Frame(to_json(_delta("", "answer", "finished"))))
    if done:
        frames.append(Frame("[DONE]"))
    return frames


def phase_padded(sent: int) -> dict[str, Any]:
    """The harmless event an oversized line pads: an empty answer delta."""
    return _delta("", "answer", "typing")
