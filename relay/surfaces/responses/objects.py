"""The Responses API's objects: the ``response``, its output items, its usage.

Shapes follow the openai SDK's types (``openai.types.responses``), which the
official SDKs and Codex CLI parse: every field the SDK's ``Response`` requires
is present, and the fields that echo the request come from the turn's context.
"""

from __future__ import annotations

import time
from typing import Any

from ...pipeline.frames import ToolCall
from .request import ResponsesContext
from .tools import ToolNames

__all__ = ["function_call_item", "message_item", "reasoning_item", "response_object", "responses_usage"]

#: the finish reason that makes a response ``incomplete`` (OpenAI's ``max_output_tokens``).
LENGTH = "length"


def response_object(context: ResponsesContext, *, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                    incomplete_reason: str | None = None) -> dict[str, Any]:
    """The ``response`` object in the state ``status`` (in_progress, completed, incomplete, failed)."""
    response: dict[str, Any] = {
        "id": context.response_id, "object": "response", "created_at": context.created_at, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        **context.echo,
        "output": output, "max_tool_calls": None, "service_tier": "default", "usage": usage,
    }
    if status in ("completed", "incomplete"):
        response["completed_at"] = int(time.time())
    return response


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's OpenAI chat usage in the Responses API's names."""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    prompt = prompt if isinstance(prompt, int) else 0
    completion = completion if isinstance(completion, int) else 0
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    total = usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning if isinstance(reasoning, int) else 0},
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_text_part(text)]}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """Thinking as a reasoning item with one summary part (no encrypted content: nothing to resume)."""
    return {"id": item_id, "type": "reasoning", "status": status,
            "summary": [{"type": "summary_text", "text": text}], "encrypted_content": None}


def function_call_item(item_id: str, call: ToolCall, names: ToolNames, status: str = "completed",
                       arguments: str | None = None) -> dict[str, Any]:
    """A ``function_call`` item: ``call_id`` is the call's id, the name the client's (``tools.py``)."""
    namespace, name = names.client_name(call.name)
    item: dict[str, Any] = {"id": item_id, "type": "function_call", "status": status, "call_id": call.id,
                            "name": name, "arguments": call.arguments if arguments is None else arguments}
    if namespace is not None:
        item["namespace"] = namespace
    return item
