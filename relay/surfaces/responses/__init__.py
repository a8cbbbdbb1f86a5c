"""The OpenAI Responses surface: ``POST /v1/responses`` (Codex CLI, the openai SDKs' ``responses``).

    request.py   input items, instructions, reasoning → the OpenAI chat body the pipeline runs
    tools.py     function and namespace tools flattened; web_search → search; other built-ins 400
    stream.py    frames → response.created … response.completed events
    objects.py   the response object, its output items and usage
    store.py     finished responses in the --state backend (previous_response_id, GET by id)

``GET /v1/responses/{id}`` is ``handlers/responses.py``. Errors before the
stream starts use the OpenAI envelope, as ``/v1/chat/completions`` does;
after, ``response.failed``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from ...errors import InvalidRequest, RelayError
from ...middleware import error_response
from ...openai_wire import parse_chat_request
from ...operator.auth import Caller
from ...pipeline.aggregate import Aggregate
from ...pipeline.frames import StreamStats
from ...tooling import plan_tools
from ..base import Turn
from .objects import (
    LENGTH,
    function_call_item,
    message_item,
    reasoning_item,
    response_object,
    responses_usage,
)
from .request import ResponsesContext, chat_body, items_to_messages, new_item_id
from .store import owner_of, store_of
from .stream import ResponsesEncoder

__all__ = ["RESPONSES", "Responses", "ResponsesEncoder"]


class Responses:
    name = "responses"

    def parse(self, body: Any, app: web.Application) -> Turn:
        chat, context = chat_body(body)
        plan = plan_tools(parse_chat_request(chat))
        return Turn(plan, client_model=context.echo["model"], context=context)

    async def prepare_turn(self, turn: Turn, app: web.Application, caller: Caller) -> None:
        """Note the caller as the owner; put a previous response's conversation before this turn's."""
        context: ResponsesContext = turn.context
        context.owner = owner_of(caller)
        previous_id, unplanned = context.previous_response_id, context.unplanned
        if previous_id is not None and unplanned is not None:
            previous = None if context.owner is None else await store_of(app).load(previous_id, context.owner)
            if previous is None:
                raise InvalidRequest(f"Previous response with id '{previous_id}' not found.",
                                     param="previous_response_id", code="previous_response_not_found")
            history = previous.conversation
            items = context.items or []
            instructions = [{"role": "system", "content": context.instructions}] if context.instructions else []
            messages = [*instructions, *items_to_messages(history, context.names, "previous_response"),
                        *items_to_messages(items, context.names)]
            turn.plan = plan_tools(parse_chat_request({**unplanned, "messages": messages}))
            context.items = [*history, *items]
        context.unplanned = None
        if not context.store or context.owner is None:
            context.items = None  # nothing to keep: the prompt need not outlive the request

    def encoder(self, turn: Turn, stats: StreamStats, app: web.Application) -> ResponsesEncoder:
        context: ResponsesContext = turn.context
        save = partial(_save, app, context) if context.items is not None else None
        return ResponsesEncoder(context, save)

    async def render(self, turn: Turn, answer: Aggregate, usage: dict[str, Any],
                     app: web.Application) -> dict[str, Any]:
        context: ResponsesContext = turn.context
        incomplete = answer.finish_reason == LENGTH
        status = "incomplete" if incomplete else "completed"
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append(reasoning_item(new_item_id("rs"), answer.reasoning))
        if answer.content or not (answer.tool_calls or answer.reasoning):
            output.append(message_item(new_item_id("msg"), answer.content, status))
        output.extend(function_call_item(new_item_id("fc"), call, context.names) for call in answer.tool_calls)
        response = response_object(context, status=status, output=output, usage=responses_usage(usage),
                                   incomplete_reason="max_output_tokens" if incomplete else None)
        if context.items is not None:
            await _save(app, context, response)
        return response

    def error_response(self, exc: RelayError) -> web.Response:
        return error_response(exc)

    def reasoning_in_content(self, app: web.Application) -> bool:
        return False  # thinking has reasoning items of its own here


async def _save(app: web.Application, context: ResponsesContext, response: dict[str, Any]) -> None:
    if context.items is not None and context.owner is not None:
        await store_of(app).save(context.owner, context.items, response)


RESPONSES = Responses()
