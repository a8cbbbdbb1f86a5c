"""Tool-call answers: the Hermes-style blocks a Qwen model writes when given tools.

The real service has no function-calling field: a relay lists the tools in the
prompt and the model answers with text such as::

    I'll read it.
    <tool_call>
    {"name": "read_file", "arguments": {"path": "a.py"}}
    </tool_call>

[I] The layout (a line break inside the tags around the JSON, one between blocks)
is the one Qwen's chat template shows; a parser must accept any blank text there.
The text is plain answer text, so every dialect and every stream knob (``chunks``,
``pieces`` of a hand-built text, ``split``) applies to it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MALFORMED_TOOL_CALL",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCallSpec",
    "hermes_block",
    "tool_call_answer",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Unquoted keys, balanced braces: invalid JSON that a parser can see end at the
# closing tag, so the block should come back as text without waiting for the end.
MALFORMED_TOOL_CALL = f'{TOOL_CALL_OPEN}\n{{"name": "read_file", "arguments": {{path: a.py}}}}\n{TOOL_CALL_CLOSE}'


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """One call a directive asks for; ``has_arguments=False`` leaves the key out."""

    name: str
    arguments: Mapping[str, Any] | str | None = None
    has_arguments: bool = True


def hermes_block(name: str, arguments: Mapping[str, Any] | str | None = None, *,
                 has_arguments: bool = True) -> str:
    """One ``<tool_call>`` block, its JSON on a line of its own."""
    call: dict[str, Any] = {"name": name}
    if has_arguments:
        call["arguments"] = dict(arguments) if isinstance(arguments, Mapping) else (arguments or {})
    return f"{TOOL_CALL_OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


def tool_call_answer(text_before: str | None, calls: Sequence[ToolCallSpec] | None, *,
                     malformed: bool = False) -> str:
    """``text_before``, then the blocks one per line, then a broken block if asked."""
    blocks = [hermes_block(c.name, c.arguments, has_arguments=c.has_arguments) for c in calls or ()]
    if malformed:
        blocks.append(MALFORMED_TOOL_CALL)
    return (text_before or "") + "\n".join(blocks)
