"""Responses ``tools`` and ``tool_choice`` → the OpenAI chat tools the relay renders into the prompt.

The Responses API lists function tools flat (``{type, name, description,
parameters, strict}``, no ``function`` wrapper), groups them in ``namespace``
tools (Codex CLI's ``multi_agent_v1``), and offers built-in tools the provider
runs itself. The relay runs none of those: only a web search has a Qwen Chat
counterpart (the search chat), so ``web_search`` / ``web_search_preview``
switch search on (``enable_search``, resolved like the ``-search`` model id by
``dialects.options``), and every other built-in tool is a 400 naming it,
instead of a model told about a tool that never runs.

Nested names. The model sees a nested tool under its bare name (``spawn_agent``),
which reads like any other tool; only when two tools would share a name does a
nested one show as ``<namespace>__<name>``. A call is sent back with the bare
name and ``namespace`` (the SDK's ``ResponseFunctionToolCall.namespace``), as
OpenAI does; what Codex does with a nested call is unmeasured, and the bare name
is what its handler table is keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidRequest

__all__ = ["SEARCH_TOOLS", "ToolNames", "chat_tool_choice", "flatten_tools"]

#: built-in tools answered with Qwen Chat's own web search.
SEARCH_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26",
                          "web_search_preview_2025_03_11"})


@dataclass(slots=True)
class ToolNames:
    """Both directions between the names the model sees and the client's ``(namespace, name)``."""

    #: model-visible name → (namespace or None, the client's name).
    by_visible: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    #: (namespace or None, name) → model-visible name.
    by_client: dict[tuple[str | None, str], str] = field(default_factory=dict)

    def client_name(self, visible: str) -> tuple[str | None, str]:
        """``(namespace, name)`` of a call the model made (a name the plan knows)."""
        return self.by_visible.get(visible, (None, visible))

    def visible_name(self, namespace: str | None, name: str) -> str:
        """The name the model knows a tool by; a tool of another turn keeps its own name."""
        return self.by_client.get((namespace, name), name)


def flatten_tools(tools: Any) -> tuple[list[dict[str, Any]], ToolNames, bool]:
    """``(chat tools, names, search)`` of a Responses ``tools`` list; 400 for a tool the relay cannot run."""
    if tools is None:
        return [], ToolNames(), False
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    entries: list[tuple[str | None, dict[str, Any]]] = []  # (namespace, function tool)
    search = False
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            entries.append((None, _function(tool, where)))
        elif kind == "namespace":
            entries.extend(_namespace(tool, where))
        elif kind in SEARCH_TOOLS:
            search = True
        elif isinstance(kind, str):
            raise InvalidRequest(
                f"The tool type '{kind}' ({where}) is a built-in tool this relay cannot run: Qwen Chat has "
                "no such tool. Remove it, or declare a function tool your client runs instead.",
                param="tools", code="unsupported_value")
        else:
            raise InvalidRequest(f"'{where}' must be an object with a string 'type'.", param="tools",
                                 code="invalid_type")
    return _named(entries), _names(entries), search


def _function(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{where}.name' is required (a non-empty string).", param="tools",
                             code="missing_required_parameter")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("parameters"), dict):
        function["parameters"] = tool["parameters"]
    return function


def _namespace(tool: dict[str, Any], where: str) -> list[tuple[str | None, dict[str, Any]]]:
    namespace, nested = tool.get("name"), tool.get("tools")
    if not isinstance(namespace, str) or not namespace:
        raise InvalidRequest(f"'{where}.name' is required (a non-empty string).", param="tools",
                             code="missing_required_parameter")
    if not isinstance(nested, list):
        raise InvalidRequest(f"'{where}.tools' must be an array of function tools.", param="tools",
                             code="invalid_type")
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for index, inner in enumerate(nested):
        inner_where = f"{where}.tools[{index}]"
        kind = inner.get("type") if isinstance(inner, dict) else None
        if kind != "function" or not isinstance(inner, dict):
            raise InvalidRequest(
                f"'{inner_where}' is a {kind!r} tool; this relay runs only function tools in a namespace.",
                param="tools", code="unsupported_value")
        entries.append((namespace, _function(inner, inner_where)))
    return entries


def _names(entries: list[tuple[str | None, dict[str, Any]]]) -> ToolNames:
    """Bare names, unless two tools share one: then the nested ones are qualified."""
    counts: dict[str, int] = {}
    for _, function in entries:
        counts[function["name"]] = counts.get(function["name"], 0) + 1
    names = ToolNames()
    for namespace, function in entries:
        name = function["name"]
        visible = name if namespace is None or counts[name] == 1 else f"{namespace}__{name}"
        if visible in names.by_visible:
            raise InvalidRequest(f"Two tools are named '{visible}'; tool names must be unique.", param="tools")
        names.by_visible[visible] = (namespace, name)
        names.by_client[(namespace, name)] = visible
    return names


def _named(entries: list[tuple[str | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    names = _names(entries)
    return [{"type": "function", "function": {**function, "name": names.visible_name(namespace, function["name"])}}
            for namespace, function in entries]


def chat_tool_choice(choice: Any, names: ToolNames) -> Any:
    """The chat ``tool_choice`` of a Responses one (``{"type": "function", "name"}`` is flat there)."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("name"), str):
            namespace = choice.get("namespace") if isinstance(choice.get("namespace"), str) else None
            visible = names.by_client.get((namespace, choice["name"]))
            if visible is None and namespace is None:  # a nested tool named without its namespace
                visible = next((v for v, (_, n) in names.by_visible.items() if n == choice["name"]), None)
            return {"type": "function", "function": {"name": visible or choice["name"]}}
        if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            return choice["mode"]  # the subset is not enforced: every tool stays listed
        if kind in SEARCH_TOOLS:
            return "auto"  # search runs in the search chat, not as a call
    raise InvalidRequest("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                         "\"name\": ...}.", param="tool_choice", code="invalid_value")
