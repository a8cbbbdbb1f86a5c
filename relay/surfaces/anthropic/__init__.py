"""The Anthropic Messages surface: ``POST /v1/messages`` (Claude Code, the anthropic SDKs).

    request.py   the request, as the OpenAI chat body the pipeline runs; model ids mapped
    stream.py    frames → message_start … message_stop events
    message.py   stop reasons, usage, ids and content blocks in Anthropic's words
    envelope.py  errors in Anthropic's envelope and statuses (529 when the relay is full)

Auth is the relay's own (``x-api-key`` or ``Authorization: Bearer``); the
``anthropic-version`` and ``anthropic-beta`` headers and ``?beta=true`` are
accepted and change nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import InvalidRequest, RelayError
from ...keys import CONFIG
from ...openai_wire import parse_chat_request, prompt_chars, usage_for_chars
from ...operator.auth import Caller
from ...pipeline.aggregate import Aggregate
from ...pipeline.frames import StreamStats
from ...tooling import plan_tools
from ..base import Turn
from .envelope import error_response
from .message import content_blocks, message_id, stop_reason, usage_of
from .request import map_model, openai_body, stop_sequences
from .stream import MessagesEncoder

__all__ = ["ANTHROPIC", "AnthropicMessages", "input_tokens"]


class AnthropicMessages:
    name = "anthropic"

    def parse(self, body: Any, app: web.Application) -> Turn:
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model: field required (a string).", param="model")
        qwen_model = map_model(model, app[CONFIG].anthropic_models)
        plan = plan_tools(parse_chat_request(openai_body(body, qwen_model)))
        return Turn(plan, stop_sequences=stop_sequences(body), client_model=model)

    async def prepare_turn(self, turn: Turn, app: web.Application, caller: Caller) -> None:
        return None

    def encoder(self, turn: Turn, stats: StreamStats, app: web.Application) -> MessagesEncoder:
        return MessagesEncoder(turn.model, input_tokens(turn.chat.messages))

    async def render(self, turn: Turn, answer: Aggregate, usage: dict[str, Any],
                     app: web.Application) -> dict[str, Any]:
        return {
            "id": message_id(), "type": "message", "role": "assistant", "model": turn.model,
            "content": content_blocks(answer.content, answer.reasoning, answer.tool_calls),
            "stop_reason": stop_reason(answer.finish_reason, answer.stop_sequence),
            "stop_sequence": answer.stop_sequence, "usage": usage_of(usage),
        }

    def error_response(self, exc: RelayError) -> web.Response:
        return error_response(exc)

    def reasoning_in_content(self, app: web.Application) -> bool:
        return False  # thinking has blocks of its own here


def input_tokens(messages: list[dict[str, Any]]) -> int:
    """The relay's estimate of a conversation's tokens (``count_tokens``, ``message_start``)."""
    return usage_for_chars(prompt_chars(messages), 0)["prompt_tokens"]


ANTHROPIC = AnthropicMessages()
