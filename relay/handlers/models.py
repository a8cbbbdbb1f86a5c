"""GET /v1/models: the caller's model list, cached per token."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..dialects import ChatOptions, Dialect
from ..dialects.options import resolve_options
from ..errors import AuthenticationFailed, ModelNotFound, RelayError
from ..keys import MODELS
from ..models_cache import Fetch
from ..openai_wire import ChatRequest
from ..upstream import UpstreamClient
from .common import bearer_token, json_response

__all__ = ["fetcher", "list_models", "resolve_request"]

#: a model list is small; this only stops a broken upstream from filling memory.
MODELS_MAX_BYTES = 16 * 1024 * 1024


async def list_models(request: web.Request) -> web.Response:
    token = bearer_token(request)
    entry = await request.app[MODELS].get(token)
    return await json_response(request, entry.body, cache=entry.encoded)


def fetcher(client: UpstreamClient, dialect: Dialect) -> Fetch:
    """The upstream call behind the cache."""
    async def fetch(token: str) -> list[dict[str, Any]]:
        async with client.open("GET", dialect.models_path, token=token) as response:
            payload = await response.read_json(MODELS_MAX_BYTES)
        return dialect.models(payload)

    return fetch


async def resolve_request(request: web.Request, token: str, chat: ChatRequest) -> ChatOptions:
    """Check the model against the caller's list and resolve thinking/search switches.

    404 ``model_not_found`` for a model the caller's account does not offer.
    Fails open: when the list cannot be fetched for another reason than the
    token, the upstream decides about the model itself.
    """
    try:
        entry = await request.app[MODELS].get(token)
    except AuthenticationFailed:
        raise
    except RelayError:
        return resolve_options(chat, {})
    if chat.model not in entry.ids:
        raise ModelNotFound(f"The model `{chat.model}` does not exist or you do not have access to it. "
                            "GET /v1/models lists the ids you can use.", param="model")
    return resolve_options(chat, entry.variants)
