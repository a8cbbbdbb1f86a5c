"""The ``qwen-v2`` stream (§4.3): ``response.created``, then phase frames with usage.

Order of events, each ``choices`` frame carrying ``response_id`` [C]:

1. ``{"response.created": {chat_id, parent_id, response_id, response_index: "0"}}``
   with the captured trailing space before the line end [C];
2. the web-search frame when the request asked for search;
3. thinking, when on: ``phase: "thinking_summary"`` (``thinking_format: "summary"``,
   the default) or ``phase: "think"`` (``"detail"``, or directive ``think_phase``),
   then that phase's finished frame, which must not end the stream [C];
4. directive ``extra_phases``: ``"LEAK:<phase>"`` frames and each phase's finished
   frame (§7.4: unknown phases must never reach the answer);
5. answer frames, then ``{"content":"","role":"assistant","status":"finished",
   "phase":"answer"}`` [C]; ``[DONE]`` only with directive ``done: true`` [C].

With directive ``candidates: 2`` a second ``response.created`` (``response_index``
"1") follows the first, and steps 2-5 of both responses are interleaved frame by
frame (§7.4 [C]); the second one's pieces start with "ALT ".

Thinking follows the gear the request chose (§7.3 table, see
:func:`is_thinking_on`); a model whose ``think_skip.enable`` is false answers
``thinking_enabled: false`` with ``response.created`` then an in-stream
``invalid_input`` error (§7.3 [S], :func:`v2_refusal`).

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

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.emulator.catalogue import ModelCaps
from relay.emulator.directive import Directive
from relay.emulator.faults import error_event
from relay.emulator.framing import Frame, to_json
from relay.emulator.phase import Reply
from relay.emulator.request import Features
from relay.emulator.script import web_search_delta

__all__ = [
    "V2Stream",
    "cannot_skip_thinking",
    "input_tokens",
    "is_thinking_on",
    "think_phase_for",
    "thinking_gear",
    "v2_error_event",
    "v2_frames",
    "v2_padded",
    "v2_refusal",
]

# §7.3 [S]: what a model that cannot skip thinking answers thinking_enabled: false with.
CANNOT_SKIP_DETAILS = "thinking cannot be disabled for this model"
# [I] The second candidate's mark: visible in any doubled answer.
ALT_PREFIX = "ALT "


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
    # The second candidate's id (directive candidates: 2), else None.
    alt_response_id: str | None = None
    extra_phases: tuple[str, ...] = ()


def input_tokens(prompt: str) -> int:
    """Rough prompt size in tokens: 4 characters a token, at least 1."""
    return len(prompt) // 4 + 1


def thinking_gear(features: Features) -> str | None:
    """The gear a request chose: ``"Auto"``, ``"Thinking"``, ``"Fast"``, or None if it said nothing.

    ``thinking_mode`` decides when present (§7.3 table); otherwise the flags do:
    ``thinking_enabled`` true is Auto with ``auto_thinking: true``, else Thinking
    (how 2025 clients asked for thinking, §4.2); false is Fast.
    """
    mode = features.flag("thinking_mode")
    if mode in ("Auto", "Thinking", "Fast"):
        return str(mode)
    enabled = features.flag("thinking_enabled")
    if enabled is True:
        return "Auto" if features.flag("auto_thinking") is True else "Thinking"
    return "Fast" if enabled is False else None


def is_thinking_on(features: Features, directive: Directive, caps: ModelCaps) -> bool:
    """Whether the reply thinks, by gear (§7.3).

    Thinking: yes. Fast: no. Auto: [I] no for an ordinary request (the web app's
    "the model decides" usually means a quick answer), yes when the directive gives
    ``think`` text or the model cannot skip thinking. No gear: only that last case.
    """
    gear = thinking_gear(features)
    if gear == "Thinking":
        return True
    if gear == "Fast":
        return False
    if not caps.can_skip_thinking:
        return True
    return gear == "Auto" and directive.think is not None


def cannot_skip_thinking(features: Features, caps: ModelCaps) -> bool:
    """Whether the request turns thinking off on a model that cannot skip it (§7.3 [S])."""
    return features.flag("thinking_enabled") is False and caps.can_think and not caps.can_skip_thinking


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


def _created(spec: V2Stream, response_id: str, index: str) -> Frame:
    created = {"chat_id": spec.chat_id, "parent_id": spec.parent_id, "response_id": response_id,
               "response_index": index}
    return Frame(to_json({"response.created": created}), trailing_space=True)


def v2_frames(spec: V2Stream) -> list[Frame]:
    """List every event of one v2 stream, in order (see the module docstring)."""
    frames = [_created(spec, spec.response_id, "0")]
    body = _response_frames(spec, spec.response_id, spec.reply)
    if spec.alt_response_id is not None:
        frames.append(_created(spec, spec.alt_response_id, "1"))
        alt = _response_frames(spec, spec.alt_response_id, _alternative(spec.reply))
        body = [frame for pair in itertools.zip_longest(body, alt) for frame in pair if frame is not None]
    frames.extend(body)
    if spec.done:
        frames.append(Frame("[DONE]"))
    return _with_keepalives(frames, spec)


def v2_refusal(spec: V2Stream, code: str, details: str) -> list[Frame]:
    """A stream that opens and at once carries an error: ``response.created``, then it."""
    error = {"error": {"code": code, "details": details}, "response_id": spec.response_id}
    return [_created(spec, spec.response_id, "0"), Frame(to_json(error))]


def _alternative(reply: Reply) -> Reply:
    think = None if reply.think is None else tuple(ALT_PREFIX + piece for piece in reply.think)
    return Reply(think, tuple(ALT_PREFIX + piece for piece in reply.answer))


def _response_frames(spec: V2Stream, rid: str, reply: Reply) -> list[Frame]:
    """The frames of one response after its ``response.created``."""
    usage = _Usage(spec.input_tokens) if spec.input_tokens is not None else None
    frames: list[Frame] = []
    if spec.sources is not None:
        search = web_search_delta(spec.sources) | {"phase": "web_search", "status": "finished"}
        frames.append(Frame(to_json({"choices": [{"delta": search}], "response_id": rid})))

    def typing(delta: dict[str, Any], piece: str, *, is_reasoning: bool) -> Frame:
        event: dict[str, Any] = {"choices": [{"delta": delta}], "response_id": rid}
        if usage is not None:
            event["usage"] = usage.add(piece, is_reasoning=is_reasoning)
            event["timestamp"] = spec.timestamp
        return Frame(to_json(event), is_content=True)

    if reply.think is not None:
        deltas = _thinking_deltas(spec, reply.think)
        frames.extend(typing(delta, piece, is_reasoning=True) for delta, piece in zip(deltas, reply.think, strict=True))
        frames.append(_finished(spec.think_phase, rid))
    frames.extend(_extra_phase_frames(spec.extra_phases, rid))
    for piece in reply.answer:
        delta = {"role": "assistant", "content": piece, "phase": "answer", "status": "typing"}
        frames.append(typing(delta, piece, is_reasoning=False))
    frames.append(_finished("answer", rid))
    return frames


def _extra_phase_frames(phases: Sequence[str], rid: str) -> list[Frame]:
    """Frames of phases that are not answer text (§7.4), each with its finished frame.

    Not content frames: ``after`` and ``events_sent`` keep counting thinking and
    answer text only. [I] The ``web_search`` tool frame's arguments are invented.
    """
    frames: list[Frame] = []
    for phase in phases:
        status = "running" if phase == "code_interpreter" else "typing"
        delta: dict[str, Any] = {"role": "assistant", "content": f"LEAK:{phase}", "phase": phase, "status": status}
        frames.append(Frame(to_json({"choices": [{"delta": delta}], "response_id": rid})))
        if phase == "web_search":
            call = {
                "role": "assistant",
                "content": "",
                "phase": "web_search",
                "status": "typing",
                "function_call": {"name": "web_search", "arguments": to_json({"query": "LEAK:web_search"})},
                "extra": {"display_position": "think"},
            }
            frames.append(Frame(to_json({"choices": [{"delta": call}], "response_id": rid})))
        frames.append(_finished(phase, rid))
    return frames


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
    """The in-stream error event (§4.3, §7.4 [C]).

    The ``{"error": {...}}`` form carries ``response_id`` as captured; [I] the
    ``success: false`` and string forms are sent as the notes show them, without.
    """
    event = error_event(directive)
    if isinstance(event.get("error"), dict):
        event["response_id"] = response_id
    return event


def v2_padded(response_id: str) -> Callable[[int], dict[str, Any]]:
    """The harmless event an oversized line pads: an empty answer delta."""

    def padded(sent: int) -> dict[str, Any]:
        delta = {"role": "assistant", "content": "", "phase": "answer", "status": "typing"}
        return {"choices": [{"delta": delta}], "response_id": response_id}

    return padded
