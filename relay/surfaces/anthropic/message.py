"""Anthropic's words for what the pipeline reports: stop reasons, usage, ids, content blocks."""

from __future__ import annotations

import json
import random
from typing import Any

from ...pipeline.frames import ToolCall

__all__ = ["content_blocks", "message_id", "stop_reason", "tool_use_id", "usage_of"]


def message_id() -> str:
    return f"msg_{random.getrandbits(96):024x}"


def tool_use_id(call: ToolCall) -> str:
    """``toolu_…`` for the relay's ``call_…`` id; Claude Code sends it back in ``tool_result``."""
    return "toolu_" + call.id.removeprefix("call_")


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "tool_calls":
        return "tool_use"
    if stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def usage_of(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI's usage names (the pipeline's) as Anthropic's."""
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return {
        "input_tokens": prompt if isinstance(prompt, int) else 0,
        "output_tokens": completion if isinstance(completion, int) else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def content_blocks(text: str, thinking: str, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """A whole answer's blocks: thinking, text, then its tool calls (the order they were made in)."""
    blocks: list[dict[str, Any]] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if text:
        blocks.append({"type": "text", "text": text})
    for call in calls:
        blocks.append({"type": "tool_use", "id": tool_use_id(call), "name": call.name,
                       "input": json.loads(call.arguments)})
    return blocks
