"""Anthropic's routes beside ``/v1/messages``: ``count_tokens`` and the probe of ``/``."""

from __future__ import annotations

from aiohttp import web

from ..jsonio import dumps
from ..openai_wire import parse_json_body
from ..surfaces.anthropic import ANTHROPIC, input_tokens
from .common import caller, json_response, read_body

__all__ = ["count_tokens", "root"]


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``, the relay's estimate.

    The request is read exactly as ``/v1/messages`` reads it (tools rendered
    into the prompt included), so the count is of what would be sent.
    """
    caller(request)  # the same keys and tokens as /v1/messages
    body = parse_json_body(await read_body(request))
    if isinstance(body, dict):
        body = {**body, "stream": False}
    turn = ANTHROPIC.parse(body, request.app)
    return await json_response(request, dumps({"input_tokens": input_tokens(turn.chat.messages)}))


async def root(request: web.Request) -> web.Response:
    """``GET /`` and ``HEAD /``: 200, for clients that probe the base URL (Claude Code does)."""
    return web.Response(text="qwen-relay: an OpenAI- and Anthropic-compatible relay for Qwen Chat\n")
