"""An Anthropic Messages request, read as the OpenAI chat body the pipeline runs.

What Claude Code sends is the yardstick (captured from 2.1.197): ``system`` as
text blocks, ``role: "system"`` entries inside ``messages``, ``tool_use`` /
``tool_result`` blocks (result content a string or blocks, ``is_error``),
``thinking`` blocks echoed back with their signature, ``cache_control`` on
blocks, ``thinking: {"type": "adaptive"}``, ``output_config``,
``context_management``, ``metadata.user_id`` as a JSON string. Unknown fields
are ignored; a block the relay cannot carry is a 400 naming it, never dropped
in silence (thinking blocks excepted: the model's own earlier thoughts).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from typing import Any

from ...errors import InvalidRequest

__all__ = ["map_model", "openai_body", "stop_sequences"]

#: the first ``system`` block Claude Code sends: billing metadata, not prompt text.
_BILLING_HEADER = "x-anthropic-billing-header:"
#: tool choice → OpenAI's ``tool_choice``.
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
#: request fields passed on as OpenAI's (same meaning; options.py reads ``thinking`` as Anthropic means it).
_PASSED_ON = ("max_tokens", "temperature", "top_p", "thinking")


def map_model(model: str, table: Sequence[tuple[str, str]]) -> str:
    """The Qwen id for ``model``: the first glob of ``[surfaces.anthropic.models]`` that matches, else itself."""
    for pattern, qwen_id in table:
        if fnmatch.fnmatchcase(model, pattern):
            return qwen_id
    return model


def stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(stop, str) for stop in value):
        raise InvalidRequest("stop_sequences: must be an array of strings.", param="stop_sequences")
    return tuple(stop for stop in value if stop)


def openai_body(body: Any, model: str) -> dict[str, Any]:
    """The chat-completions body that asks what ``body`` asks (validated on the way)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: field required (a non-empty array).", param="messages")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise InvalidRequest("max_tokens: must be a positive integer.", param="max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean.", param="stream")
    out: dict[str, Any] = {"model": model, "stream": stream, "messages": _messages(body.get("system"), messages)}
    for name in _PASSED_ON:
        if body.get(name) is not None:
            out[name] = body[name]
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_tool_choice(choice))
    return out


def _messages(system: Any, messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system_text = _system_text(system, "system")
    if system_text:
        out.append({"role": "system", "content": system_text})
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: must be an object.", param=where)
        role, content = message.get("role"), message.get("content")
        if role == "system":  # Claude Code puts some of its prompt here
            out.append({"role": "system", "content": _system_text(content, where)})
        elif role == "user":
            out.extend(_user(content, where))
        elif role == "assistant":
            out.append(_assistant(content, where))
        else:
            raise InvalidRequest(f"{where}.role: must be user, assistant or system.", param=f"{where}.role")
    return out


def _system_text(system: Any, where: str) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise InvalidRequest(f"{where}: must be a string or an array of text blocks.", param=where)
    texts = []
    for block in _blocks(system, where):
        if block.get("type") != "text":
            raise InvalidRequest(f"{where}: only text blocks may be a system prompt.", param=where)
        text = _text_of(block, where)
        if not text.startswith(_BILLING_HEADER):
            texts.append(text)
    return "\n\n".join(texts)


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results first (OpenAI wants them right after the calls), then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content, where):
        kind = block.get("type")
        if kind == "tool_result":
            results.extend(_tool_result(block, where))
        elif kind in ("text", "image", "document"):
            parts.append(_part(block, where))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported(kind, where)
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content, where):
        kind = block.get("type")
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind not in ("thinking", "redacted_thinking"):  # earlier thoughts: not replayed
            raise _unsupported(kind, where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise InvalidRequest(f"{where}: a tool_use block needs a string id and name, and an object input.",
                             param=where)
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _tool_result(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A ``tool`` message; images in the result follow as a user turn (tool messages carry text)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{where}: a tool_result block needs a tool_use_id.", param=where)
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for part in _blocks(content, where):
            if part.get("type") == "image":
                images.append(_part(part, where))
            elif part.get("type") == "text":
                texts.append(_text_of(part, where))
            else:
                raise _unsupported(part.get("type"), where)
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}"
    out: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": call_id, "content": text}]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A text, image or (text) document block as an OpenAI content part."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _text_of(block, where)}
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}: a {kind} block needs a source.", param=where)
    if kind == "document":
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        raise _unsupported(f"document ({source.get('type')})", where)
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise InvalidRequest(f"{where}: an image source must be base64 data or a url.", param=where)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be an array.", param="tools")
    out = []
    for index, tool in enumerate(tools):
        where = f"tools.{index}"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"{where}: a tool needs a name.", param=where)
        kind = tool.get("type")
        if kind not in (None, "custom"):  # Anthropic's server tools run at Anthropic, not here
            raise InvalidRequest(f"{where}: the relay cannot run the server tool {kind!r} "
                                 f"({tool['name']}); declare client tools with an input_schema.", param=where)
        schema = tool.get("input_schema", {"type": "object", "properties": {}})
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise InvalidRequest("tool_choice: must be an object with a type.", param="tool_choice")
    kind = choice["type"]
    out: dict[str, Any] = {}
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequest("tool_choice: type tool needs a name.", param="tool_choice")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise InvalidRequest("tool_choice.type: must be auto, any, tool or none.", param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise InvalidRequest(f"{where}.content: must be a string or an array of blocks.", param=f"{where}.content")
    return content


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}: a text block needs a string text.", param=where)
    return text


def _unsupported(kind: Any, where: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: the relay cannot carry a {kind!r} block to Qwen Chat.", param=where)
