"""The ``qwen-v2`` stream (§4.3): ``response.created``, then phase frames with usage.

Order of events, each ``choices`` frame carrying ``response_id`` [C]:

1. ``{"response.created": {chat_id, parent_id, response_id, response_index: "0"}}``
   with the captured trailing space before the line end [C];
2. the web-search frame when the request asked for search;
3. thinking, when on: ``phase: "thinking_summary"`` (``thinking_format: "summary"``,
   the default) or ``phase: "think"`` (``"detail"``, or directive ``think_phase``),
   then that phase's finished frame, which must not end the stream [C];
4. answer frames, then ``{"content":"","role":"assistant","status":"finished",
   "phase":"answer"}`` [C]; ``[DONE]`` only with directive ``done: true`` [C].

``response.info`` keep-alives (directive ``keepalive_info: N``) are spread evenly
before content frames. Running ``usage`` rides on every typing frame [C].

[I] choices where the notes are silent:

- summary text: each frame's ``summary_thought.content`` is cumulative by default
  (the whole thinking so far, cut into paragraphs at blank lines, so
  ``"\\n\\n".join(content)`` is the text so far and its last item may still grow);
  directive ``summary_mode: "incremental"`` sends ``[new text]`` instead, so that
  ``"".join`` over frames is the text. ``summary_title.content`` always lists one
  title per paragraph so far (``"Thought 1"``, …). The finished frame has no ``extra``.
- usage: ``input_tokens = len(user message) // 4 + 1``; each typing frame adds
  ``max(1, ceil(len(new text) / 4))`` output tokens, to ``reasoning_tokens`` for
  thinking and ``text_tokens`` for the answer; frames with usage also carry
  ``timestamp`` (epoch seconds). ``usage: false`` in a directive drops both.
- the web-search frame has ``phase: "web_search"``, ``status: "finished"``, no role.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.directive import Directive
from relay.emulator.faults import error_event
from relay.emulator.framing import Frame, to_json
from relay.emulator.phase import Reply
from relay.emulator.request import Features
from relay.emulator.script import web_search_delta

__all__ = [
    "V2Stream",
    "input_tokens",
    "is_thinking_requested",
    "think_phase_for",
    "v2_error_event",
    "v2_frames",
    "v2_padded",
]


@dataclass(frozen=True, slots=True)
class V2Stream:
    """Everything that decides the events of one v2 response."""

    chat_id: str
    response_id: str
    parent_id: str
    reply: Reply
    think_phase: str
    summary_mode: str
    sources: Sequence[Mapping[str, Any]] | None
    # None: no usage on frames.
    input_tokens: int | None
    keepalives: int
    done: bool
    timestamp: int


def input_tokens(prompt: str) -> int:
    """Rough prompt size in tokens: 4 characters a token, at least 1."""
    return len(prompt) // 4 + 1


def is_thinking_requested(features: Features) -> bool:
    """Thinking is on with ``thinking_enabled: true`` or ``thinking_mode: "Thinking"`` (§4.2 [S]).

    [I] ``thinking_mode: "Fast"`` does not switch an explicit ``thinking_enabled`` off.
    """
    return features.flag("thinking_enabled") is True or features.flag("thinking_mode") == "Thinking"


def think_phase_for(features: Features, directive: Directive) -> str:
    """``thinking_summary`` unless ``thinking_format: "detail"`` or the directive says otherwise."""
    if directive.think_phase is not None:
        return directive.think_phase
    return "think" if features.flag("thinking_format") == "detail" else "thinking_summary"


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class _Usage:
    """Running totals of one response (§4.3: take the last seen)."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt = prompt_tokens
        self.reasoning = 0
        self.text = 0

    def add(self, piece: str, *, is_reasoning: bool) -> dict[str, Any]:
        if is_reasoning:
            self.reasoning += _tokens(piece)
        else:
            self.text += _tokens(piece)
        output = self.reasoning + self.text
        return {
            "input_tokens": self.prompt,
            "output_tokens": output,
            "total_tokens": self.prompt + output,
            "output_tokens_details": {"text_tokens": self.text, "reasoning_tokens": self.reasoning},
        }


def _finished(phase: str, response_id: str) -> Frame:
    delta = {"content": "", "role": "assistant", "status": "finished", "phase": phase}
    return Frame(to_json({"choices": [{"delta": delta}], "response_id": response_id}))


def _thinking_deltas(spec: V2Stream, pieces: Sequence[str]) -> list[dict[str, Any]]:
    if spec.think_phase == "think":
        return [{"role": "assistant", "content": p, "phase": "think", "status": "typing"} for p in pieces]
    deltas = []
    so_far = ""
    for piece in pieces:
        so_far += piece
        paragraphs = so_far.split("\n\n")
        thought = paragraphs if spec.summary_mode == "cumulative" else [piece]
        titles = [f"Thought {n}" for n in range(1, len(paragraphs) + 1)]
        extra = {"summary_title": {"content": titles}, "summary_thought": {"content": thought}}
        deltas.append(
            {"role": "assistant", "content": "", "phase": "thinking_summary", "status": "typing", "extra": extra}
        )
    return deltas


def v2_frames(spec: V2Stream) -> list[Frame]:
    """List every event of one v2 response, in order (see the module docstring)."""
    rid = spec.response_id
    usage = _Usage(spec.input_tokens) if spec.input_tokens is not None else None
    created = {"chat_id": spec.chat_id, "parent_id": spec.parent_id, "response_id": rid, "response_index": "0"}
    frames = [Frame(to_json({"response.created": created}), trailing_space=True)]
    if spec.sources is not None:
        search = web_search_delta(spec.sources) | {"phase": "web_search", "status": "finished"}
        frames.append(Frame(to_json({"choices": [{"delta": search}], "response_id": rid})))

    def typing(delta: dict[str, Any], piece: str, *, is_reasoning: bool) -> Frame:
        event: dict[str, Any] = {"choices": [{"delta": delta}], "response_id": rid}
        if usage is not None:
            event["usage"] = usage.add(piece, is_reasoning=is_reasoning)
            event["timestamp"] = spec.timestamp
        return Frame(to_json(event), is_content=True)

    if spec.reply.think is not None:
        deltas = _thinking_deltas(spec, spec.reply.think)
        frames.extend(
            typing(delta, piece, is_reasoning=True) for delta, piece in zip(deltas, spec.reply.think, strict=True)
        )
        frames.append(_finished(spec.think_phase, rid))
    for piece in spec.reply.answer:
        delta = {"role": "assistant", "content": piece, "phase": "answer", "status": "typing"}
        frames.append(typing(delta, piece, is_reasoning=False))
    frames.append(_finished("answer", rid))
    if spec.done:
        frames.append(Frame("[DONE]"))
    return _with_keepalives(frames, spec)


def _with_keepalives(frames: list[Frame], spec: V2Stream) -> list[Frame]:
    """Put ``spec.keepalives`` keep-alive events before content frames, spread evenly."""
    content = sum(frame.is_content for frame in frames)
    if spec.keepalives == 0 or content == 0:
        return frames
    before = [0] * content
    for index in range(spec.keepalives):
        before[index * content // spec.keepalives] += 1
    info = {
        "action": "keep_alive",
        "chat_id": spec.chat_id,
        "response_id": spec.response_id,
        "timestamp": spec.timestamp,
    }
    keepalive = Frame(to_json({"response.info": info}))
    result: list[Frame] = []
    seen = 0
    for frame in frames:
        if frame.is_content:
            result.extend([keepalive] * before[seen])
            seen += 1
        result.append(frame)
    return result


def v2_error_event(directive: Directive, response_id: str) -> dict[str, Any]:
    """The in-stream error event: ``{"error": {...}, "response_id": ...}`` (§4.3 [C])."""
    return error_event(directive) | {"response_id": response_id}


def v2_padded(response_id: str) -> Callable[[int], dict[str, Any]]:
    """The harmless event an oversized line pads: an empty answer delta."""

    def padded(sent: int) -> dict[str, Any]:
        delta = {"role": "assistant", "content": "", "phase": "answer", "status": "typing"}
        return {"choices": [{"delta": delta}], "response_id": response_id}

    return padded
