"""GET /v1/models: the caller's model list, cached per token (or once for the pool).

``GET /v1/models/{model}`` answers one entry of that list, or 404 ``model_not_found``,
as OpenAI's "retrieve model" does: clients (the openai SDK's ``models.retrieve``,
editors checking a configured id) ask for one model before they use it.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aiohttp import web

from ..accounts.credential import Credential
from ..calls import Calls
from ..dialects import ChatOptions
from ..dialects.options import resolve_options, thinking_default
from ..errors import AuthenticationFailed, ModelNotFound, RelayError, UpstreamProtocolError
from ..jsonio import dumps, loads
from ..keys import CONFIG, MODELS, OPERATOR, POOL_MODELS
from ..middleware import INFO
from ..models_cache import CachedModels, Fetch, ModelsCache
from ..openai_wire import ChatRequest
from ..operator import Operator
from ..operator.auth import Caller, identify, with_upstream_token
from .common import bearer_token, json_response

__all__ = ["fetcher", "list_models", "pool_fetcher", "resolve_cached", "resolve_request", "retrieve_model",
           "translation_options"]

#: a model list is small; this only stops a broken upstream from filling memory.
MODELS_MAX_BYTES = 16 * 1024 * 1024


#: the pool's one cache key: every pool token is assumed to offer the same models.
POOL_CACHE_KEY = "operator-pool"


async def list_models(request: web.Request) -> web.Response:
    app = request.app  # read once: each request.app[...] costs three Python calls
    caller = identify(app[OPERATOR], bearer_token(request))
    cache, key = _cache_of(app, caller)
    entry = cache.peek(key) or await cache.get(key)
    if caller.key is not None and caller.key.spec.models is not None:
        allowed = caller.key.spec.models
        listing = json.loads(entry.body)
        listing["data"] = [item for item in listing["data"] if item.get("id") in allowed]
        response = await json_response(request, json.dumps(listing, separators=(",", ":")).encode())
    else:
        response = await json_response(request, entry.body, cache=entry.encoded)
    _count_bytes(request, response)
    return response


async def retrieve_model(request: web.Request) -> web.Response:
    """One model object, the same as its entry in ``GET /v1/models``; 404 ``model_not_found`` otherwise.

    A model a relay key may not use is not found either: its list does not show it.
    """
    app = request.app
    caller = identify(app[OPERATOR], bearer_token(request))
    model_id = request.match_info["model"]
    cache, key = _cache_of(app, caller)
    entry = cache.peek(key) or await cache.get(key)
    allowed = caller.key.spec.models if caller.key is not None else None
    if model_id in entry.ids and (allowed is None or model_id in allowed):
        for item in loads(entry.body)["data"]:  # a few KB, parsed only for this rare call
            if item.get("id") == model_id:
                response = await json_response(request, dumps(item))
                _count_bytes(request, response)
                return response
    raise ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it. "
                        "GET /v1/models lists the ids you can use.", param="model")


def _count_bytes(request: web.Request, response: web.Response) -> None:
    """The body's size, for the access line (``len``: a tenth of ``content_length``'s cost, on a hot path)."""
    body = response.body
    request[INFO].bytes_out = len(body) if isinstance(body, bytes | bytearray) else 0


def _cache_of(app: web.Application, caller: Caller) -> tuple[ModelsCache, str]:
    """The cache that holds the caller's model list, and its key there."""
    if caller.token is not None:
        return app[MODELS], caller.token
    return app[POOL_MODELS], POOL_CACHE_KEY


async def _models_of(calls: Calls, credential: Credential) -> list[dict[str, Any]]:
    """The model list the upstream offers ``credential``."""
    dialect = calls.dialect
    async with calls.open(dialect.models_call(), credential) as response:
        payload = await response.read_json(MODELS_MAX_BYTES)
    return dialect.models(payload)


def fetcher(calls: Calls) -> Fetch:
    """The upstream call behind the cache (keyed by the caller's own token)."""
    async def fetch(token: str) -> list[dict[str, Any]]:
        return await _models_of(calls, Credential.bare(token))

    return fetch


def pool_fetcher(calls: Calls, operator: Operator, challenge_cooldown_s: float) -> Fetch:
    """The upstream call behind the pool's cache: any usable pool credential will do."""
    async def fetch_with_pool(_key: str) -> list[dict[str, Any]]:
        return await with_upstream_token(operator, Caller(), partial(_models_of, calls), challenge_cooldown_s)

    return fetch_with_pool


def resolve_cached(app: web.Application, caller: Caller, chat: ChatRequest) -> ChatOptions | None:
    """``resolve_request``'s answer when the caller's model list is cached, else None.

    The common case, once per request: no coroutine, no await.
    """
    cache, key = _cache_of(app, caller)
    entry = cache.peek(key)
    return None if entry is None else _options(chat, entry, _default_thinking(app, caller))


async def resolve_request(request: web.Request, caller: Caller, chat: ChatRequest) -> ChatOptions:
    """Check the model against the caller's list and resolve thinking/search switches.

    404 ``model_not_found`` for a model the caller's account does not offer.
    Fails open: when the list cannot be fetched for another reason than the
    token, the upstream decides about the model itself.
    """
    cache, key = _cache_of(request.app, caller)
    try:
        entry = await cache.get(key)
    except AuthenticationFailed:
        raise
    except RelayError:
        return resolve_options(chat, {}, default=_default_thinking(request.app, caller))
    return _options(chat, entry, _default_thinking(request.app, caller))


def _default_thinking(app: web.Application, caller: Caller) -> bool | None:
    """Thinking for a request without a switch: its relay key's ``thinking``, else --default-thinking."""
    key = caller.key
    name = key.spec.thinking if key is not None and key.spec.thinking is not None else app[CONFIG].default_thinking
    return thinking_default(name)


def _options(chat: ChatRequest, entry: CachedModels, default: bool | None) -> ChatOptions:
    if chat.model not in entry.ids:
        raise ModelNotFound(f"The model `{chat.model}` does not exist or you do not have access to it. "
                            "GET /v1/models lists the ids you can use.", param="model")
    return resolve_options(chat, entry.variants, entry.must_think, default)


async def translation_options(request: web.Request, caller: Caller) -> tuple[str, ChatOptions]:
    """The translation endpoints' model (its id as listed, and its options), always without thinking.

    ``--translate-model`` when set (it must be in the caller's list; a ``-thinking``
    id is taken for its base model), else the first model the caller's list offers
    that can skip thinking: the Fast gear, since a translation gains nothing from
    thinking but seconds. Fails open like ``resolve_request`` when the list cannot
    be fetched and a model is configured.
    """
    app = request.app
    preferred = app[CONFIG].translate_model
    cache, key = _cache_of(app, caller)
    try:
        entry = cache.peek(key) or await cache.get(key)
    except AuthenticationFailed:
        raise
    except RelayError:
        if preferred is None:
            raise
        return preferred, ChatOptions(upstream_model=preferred, thinking=False)
    if preferred is not None:
        if preferred not in entry.ids:
            raise ModelNotFound(f"The translation model `{preferred}` (--translate-model) is not offered to "
                                "this account; GET /v1/models lists the ids it can use.", param="model")
        listed, model = preferred, entry.variants.get(preferred, (preferred, False, False))[0]
    else:
        listed = model = _first_fast_model(entry)
    return listed, ChatOptions(upstream_model=model, thinking=False, can_skip_thinking=model not in entry.must_think)


def _first_fast_model(entry: CachedModels) -> str:
    """The first upstream model (no synthetic variant) that can answer without thinking, else the first."""
    ids = [item["id"] for item in json.loads(entry.body)["data"] if item["id"] not in entry.variants]
    for model_id in ids:
        if model_id not in entry.must_think:
            return str(model_id)
    if not ids:
        raise UpstreamProtocolError("The upstream lists no model to translate with.")
    return str(ids[0])
