"""Function calling over a web API that has none: tools rendered into the prompt.

Qwen Chat's web API takes no ``tools`` field, yet Roo Code and Cline v4 need
OpenAI tool calls and have no fallback (CLIENTS.md §2–3). Qwen models are
trained on the Hermes format of their own chat template, so the relay speaks
it: the tool signatures go into the system message inside ``<tools>`` tags with
the template's own instructions, earlier calls are replayed as ``<tool_call>``
blocks in the assistant's text, and tool results come back as user turns in
``<tool_response>`` tags. ``pipeline.toolcalls`` parses the blocks in the
answer back into ``tool_calls``.

Pure data in, data out: one function that rewrites a ``ChatRequest``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .errors import InvalidRequest
from .openai_wire import ChatRequest
from .pipeline.toolcalls import ToolSpec, tool_specs

__all__ = ["ToolPlan", "plan_tools"]

#: OpenAI request fields that only make sense to the relay once tools are rendered.
TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"})

_INSTRUCTIONS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


class ToolPlan:
    """What the tool rendering decided: the rewritten request and how to parse the answer."""

    __slots__ = ("forced", "request", "specs")

    def __init__(self, request: ChatRequest, specs: dict[str, ToolSpec], forced: str | None) -> None:
        self.request = request
        #: tools the answer may call, by name; empty when tools are off.
        self.specs = specs
        #: "required", a function name, or None for "auto"/"none".
        self.forced = forced


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _function(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise InvalidRequest(f"'{where}' must be a function tool.", param=where, code="invalid_type")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidRequest(f"'{where}.function.name' is required.", param=f"{where}.function.name",
                             code="missing_required_parameter")
    return function


def _choice(body: dict[str, Any], names: set[str]) -> tuple[str, str | None]:
    """``(mode, forced)``: mode is auto, none or required; forced names a function."""
    choice = body.get("tool_choice", "auto")
    if choice in (None, "auto"):
        return "auto", None
    if choice == "none":
        return "none", None
    if choice == "required":
        return "required", "required"
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name in names:
            return "required", name
        raise InvalidRequest(f"tool_choice names an unknown function {_dumps(name)}.", param="tool_choice")
    raise InvalidRequest("'tool_choice' must be 'none', 'auto', 'required' or a function.", param="tool_choice")


def _system_text(functions: list[dict[str, Any]], mode: str, forced: str | None, parallel: bool) -> str:
    rendered = "\n".join(_dumps({"type": "function", "function": f}) for f in functions)
    text = _INSTRUCTIONS.format(tools=rendered)
    if forced == "required":
        text += "\n\nYou must call at least one of these functions in this reply."
    elif forced is not None:
        text += f"\n\nYou must call the function {_dumps(forced)} in this reply."
    if not parallel:
        text += "\n\nCall at most one function in this reply."
    return text


def _replay(message: dict[str, Any]) -> dict[str, Any]:
    """Assistant tool calls → Hermes blocks in text; tool results → <tool_response> user turns."""
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls"):
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        blocks = []
        for call in message["tool_calls"]:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            arguments = function.get("arguments")
            try:
                decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                decoded = arguments
            blocks.append(f"<tool_call>\n{_dumps({'name': function.get('name'), 'arguments': decoded})}\n"
                          "</tool_call>")
        return {"role": "assistant", "content": "\n".join([text, *blocks]).strip()}
    if role in ("tool", "function"):
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        return {"role": "user", "content": f"<tool_response>\n{content if content is not None else ''}\n"
                                           "</tool_response>"}
    return message


def plan_tools(request: ChatRequest) -> ToolPlan:
    """Render ``tools`` into the conversation; fold tool history into text."""
    tools = request.body.get("tools")
    has_history = any(m.get("role") in ("tool", "function") or m.get("tool_calls") for m in request.messages)
    if tools is None and not has_history:
        return ToolPlan(request, {}, None)
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    functions = [_function(tool, index) for index, tool in enumerate(tools or [])]
    names = {f["name"] for f in functions}
    mode, forced = _choice(request.body, names) if functions else ("none", None)
    messages = [_replay(m) for m in request.messages]
    specs: dict[str, ToolSpec] = {}
    if functions and mode != "none":
        specs = tool_specs({"type": "function", "function": f} for f in functions)
        parallel = request.body.get("parallel_tool_calls") is not False
        text = _system_text(functions, mode, forced, parallel)
        if messages and messages[0].get("role") in ("system", "developer"):
            first = messages[0]
            original = first.get("content") if isinstance(first.get("content"), str) else \
                "\n".join(p.get("text", "") for p in first.get("content") or [] if isinstance(p, dict))
            messages[0] = {**first, "content": f"{original}\n\n{text}"}
        else:
            messages.insert(0, {"role": "system", "content": text})
    body = {k: v for k, v in request.body.items() if k not in TOOL_FIELDS}
    body["messages"] = messages
    return ToolPlan(replace(request, messages=messages, body=body), specs, forced)
