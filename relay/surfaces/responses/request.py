"""A Responses request → the OpenAI chat body the pipeline runs, and what its answer echoes.

Input items map onto chat messages one by one: ``message`` (roles user,
assistant, system, developer → system; parts ``input_text`` / ``output_text``
→ text, ``input_image`` → ``image_url``), ``function_call`` → an assistant
``tool_calls`` entry (consecutive calls join one assistant message, the text
before them included), ``function_call_output`` → a ``tool`` message, and
``reasoning`` is accepted and dropped (Codex echoes its reasoning items, with
null fields; the model never needs its own summary back). ``instructions``
becomes the first, system, message. Fields the relay has no use for are
ignored, so a client that sends a newer field still works.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidRequest
from .tools import ToolNames, chat_tool_choice, flatten_tools

__all__ = ["ResponsesContext", "chat_body", "input_items", "items_to_messages", "new_item_id"]

#: Responses' efforts → ``reasoning_effort`` as ``dialects.options`` reads it (on/off is all Qwen has).
_EFFORTS = {"none": "none", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
            "xhigh": "high", "max": "high"}
_MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def new_item_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``: unique, not secret (a stored one is its owner's only)."""
    return f"{prefix}_{random.getrandbits(128):032x}"


@dataclass(slots=True)
class ResponsesContext:
    """What one Responses turn carries beside its chat request (``Turn.context``)."""

    response_id: str
    created_at: int
    #: the response object's fields that echo the request (instructions, tools, reasoning, …).
    echo: dict[str, Any]
    names: ToolNames
    store: bool
    previous_response_id: str | None
    instructions: str | None
    #: this turn's input items as sent (strings made a user message); later the whole
    #: conversation (a previous response's input and output first), kept only to store it.
    items: list[dict[str, Any]] | None = None
    #: who may read the stored answer: a relay key's name or a token's fingerprint (``store.owner_of``).
    owner: str | None = None
    #: the chat body before tools were planned, kept until ``prepare_turn`` puts a previous
    #: response's conversation before this turn's (only with ``previous_response_id``).
    unplanned: dict[str, Any] | None = None


def chat_body(body: Any) -> tuple[dict[str, Any], ResponsesContext]:
    """Validate a ``POST /v1/responses`` body; return the chat body and the turn's context."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required (a non-empty string).", param="model",
                             code="missing_required_parameter")
    for name in ("conversation", "background"):
        if body.get(name) not in (None, False):
            raise InvalidRequest(f"'{name}' is not supported by this relay; chain turns with "
                                 "'previous_response_id' instead.", param=name, code="unsupported_parameter")
    items = input_items(body.get("input"))
    instructions = _optional(body, "instructions", str, "a string")
    previous = _optional(body, "previous_response_id", str, "a string")
    store = _optional(body, "store", bool, "a boolean")
    tools, names, search = flatten_tools(body.get("tools"))
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + items_to_messages(items, names)
    chat: dict[str, Any] = {"model": model, "messages": messages,
                            "stream": _optional(body, "stream", bool, "a boolean") or False}
    if tools:
        chat["tools"] = tools
        choice = chat_tool_choice(body.get("tool_choice"), names)
        if choice is not None:
            chat["tool_choice"] = choice
    parallel = _optional(body, "parallel_tool_calls", bool, "a boolean")
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    if search:
        chat["enable_search"] = True
    reasoning = _reasoning(body.get("reasoning"))
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = _EFFORTS[reasoning["effort"]]
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens",
                                 code="invalid_type")
        chat["max_tokens"] = max_output
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]  # checked by parse_chat_request, under the same name
    metadata = _optional(body, "metadata", dict, "an object")
    echo = {
        "instructions": instructions, "max_output_tokens": max_output, "metadata": metadata or {},
        "model": model, "parallel_tool_calls": parallel is not False, "previous_response_id": previous,
        "reasoning": reasoning, "store": store is not False, "temperature": body.get("temperature"),
        "text": body["text"] if isinstance(body.get("text"), dict) else {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "top_p": body.get("top_p"), "truncation": body.get("truncation") or "disabled",
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
    }
    context = ResponsesContext(response_id=new_item_id("resp"), created_at=int(time.time()), echo=echo,
                               names=names, store=store is not False, previous_response_id=previous,
                               instructions=instructions, items=items)
    if previous is not None:
        context.unplanned = chat
    return chat, context


def _optional(body: dict[str, Any], name: str, kind: type, described: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"'{name}' must be {described}.", param=name, code="invalid_type")
    return value


def _reasoning(value: Any) -> dict[str, Any]:
    """``{"effort", "summary"}`` as the response echoes it; 400 for an effort no model has."""
    if value is None:
        return {"effort": None, "summary": None}
    if not isinstance(value, dict):
        raise InvalidRequest("'reasoning' must be an object such as {\"effort\": \"low\"}.", param="reasoning",
                             code="invalid_type")
    effort = value.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise InvalidRequest(f"'reasoning.effort' must be one of {', '.join(_EFFORTS)}.", param="reasoning.effort",
                             code="invalid_value")
    summary = value.get("summary", value.get("generate_summary"))
    return {"effort": effort, "summary": summary if isinstance(summary, str) else None}


def input_items(value: Any) -> list[dict[str, Any]]:
    """The ``input`` as a list of items: a string is one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' is required: a string or a non-empty array of input items.", param="input",
                             code="missing_required_parameter" if value is None else "invalid_type")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"'input[{index}]' must be an object.", param=f"input[{index}]",
                                 code="invalid_type")
    return value


def items_to_messages(items: list[dict[str, Any]], names: ToolNames, where: str = "input") -> list[dict[str, Any]]:
    """Chat messages of Responses items (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, at))
        elif kind == "function_call":
            call = _function_call(item, at, names)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not _has_parts(last):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"'{at}.call_id' is required.", param=f"{at}.call_id",
                                     code="missing_required_parameter")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": _output_text(item.get("output"))})
        elif kind == "reasoning":
            continue  # the model's own summary: accepted, not replayed
        else:
            raise InvalidRequest(f"'{at}.type' {kind!r} is not an input item this relay can use (message, "
                                 "function_call, function_call_output, reasoning).", param=f"{at}.type",
                                 code="unsupported_value")
    return messages


def _has_parts(message: dict[str, Any]) -> bool:
    """An assistant message with image parts (list content) cannot carry calls in the chat form."""
    return isinstance(message.get("content"), list)


def _message(item: dict[str, Any], at: str) -> dict[str, Any]:
    role = _MESSAGE_ROLES.get(str(item.get("role")))
    if role is None:
        raise InvalidRequest(f"'{at}.role' must be one of user, assistant, system, developer.",
                             param=f"{at}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{at}.content' must be a string or an array of content parts.",
                             param=f"{at}.content", code="invalid_type")
    parts = [_part(part, f"{at}.content[{index}]") for index, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "\n\n".join(part["text"] for part in parts)}
    return {"role": role, "content": parts}


def _part(part: Any, at: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text", "summary_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"'{at}.image_url' is required (a URL or a data: URI); file ids are not "
                                 "supported by this relay.", param=f"{at}.image_url", code="unsupported_value")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(f"'{at}' is a {kind!r} content part; this relay takes input_text, output_text and "
                         "input_image.", param=at, code="unsupported_value")


def _function_call(item: dict[str, Any], at: str, names: ToolNames) -> dict[str, Any]:
    name, call_id, arguments = item.get("name"), item.get("call_id"), item.get("arguments", "{}")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{at}.name' is required.", param=f"{at}.name", code="missing_required_parameter")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{at}.call_id' is required.", param=f"{at}.call_id", code="missing_required_parameter")
    if not isinstance(arguments, str):
        raise InvalidRequest(f"'{at}.arguments' must be a JSON string.", param=f"{at}.arguments", code="invalid_type")
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    return {"id": call_id, "type": "function",
            "function": {"name": names.visible_name(namespace, name), "arguments": arguments}}


def _output_text(output: Any) -> str:
    """A ``function_call_output``'s ``output``: a string, or content parts whose text is kept."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [part["text"] for part in output if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return "\n".join(texts)
    return "" if output is None else str(output)
