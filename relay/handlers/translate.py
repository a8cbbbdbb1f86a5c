"""POST /translate (DeepLX), /imme (Immersive Translate's custom API), /kiss (Kiss Translator's custom API).

Thin, one function per client: read its body, ``_translate``, write its answer.
``_translate`` takes the chat completions' admission path: the caller as
``identify_caller`` finds it (a ``?token=`` in the URL counts too), the key's
model, rate and concurrency limits (``caller.admit``), --nonstream-deadline, and
per upstream call the concurrency gate, the token and the retries
(``chat.complete_once``). The translating itself is ``relay.translate``'s, the
translation cache included: it is consulted after admission, so a cached answer
still needs a caller allowed the model.

Errors are OpenAI envelopes (the middleware's) on /imme and /kiss; DeepLX
clients expect ``{"code": <status>, "message": …}`` with the HTTP status, so
/translate renders its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from typing import Any

from aiohttp import web

from ..errors import InvalidRequest, RelayError
from ..jsonio import dumps
from ..keys import CONFIG, METRICS, OPERATOR, TRANSLATION_CACHE
from ..middleware import INFO
from ..openai_wire import parse_json_body
from ..operator.auth import Caller
from ..translate import Language, TranslateLimits, TranslationStats, parse_language, translate_texts
from .common import caller as identify_caller
from .common import json_response, read_body
from .exchange import nonstream_deadline
from .models import translation_options
from .serve import complete_once

__all__ = ["deeplx", "immersive", "kiss"]

#: texts in one request: a page's worth many times over; beyond it a client is misconfigured.
MAX_TEXTS = 1000
_METHOD = "qwen-relay"


async def deeplx(request: web.Request) -> web.Response:
    """DeepLX: ``{text, source_lang, target_lang}`` → ``{code: 200, id, data, alternatives, …}``.

    ``text`` may be a list (DeepL's own API takes one); ``data`` is then a list too.
    """
    try:
        caller = identify_caller(request, query_token=True)
        body = _object(await read_body(request))
        text = body.get("text")
        single = isinstance(text, str)
        if text is None or not isinstance(text, str | list):
            raise InvalidRequest("'text' must be a string or an array of strings.", param="text",
                                 code="missing_required_parameter" if text is None else "invalid_type")
        texts = [text] if isinstance(text, str) else _texts(text, "text")
        target = parse_language(body.get("target_lang"), param="target_lang", allow_auto=False)
        source = parse_language(body.get("source_lang"), param="source_lang", allow_auto=True)
        assert target is not None  # allow_auto=False
        translations = await _translate(request, caller, texts, source, target)
    except RelayError as exc:
        return _deeplx_error(request, exc)
    return await json_response(request, dumps({
        "code": 200, "id": random.randrange(10**9, 10**10), "data": translations[0] if single else translations,
        # The languages as the client named them, DeepL-style upper case ("auto" when it asked for detection).
        "alternatives": [], "source_lang": _echo(body.get("source_lang"), source).upper(),
        "target_lang": str(body["target_lang"]).strip().upper(), "method": _METHOD,
    }))


async def immersive(request: web.Request) -> web.Response:
    """Immersive Translate's custom API: ``{source_lang, target_lang, text_list}`` → ``{translations: […]}``."""
    caller = identify_caller(request, query_token=True)
    body = _object(await read_body(request))
    texts = _texts(body.get("text_list"), "text_list")
    target = parse_language(body.get("target_lang"), param="target_lang", allow_auto=False)
    source = parse_language(body.get("source_lang"), param="source_lang", allow_auto=True)
    assert target is not None  # allow_auto=False
    translations = await _translate(request, caller, texts, source, target)
    detected = _echo(body.get("source_lang"), source)
    return await json_response(request, dumps({
        "translations": [{"detected_source_lang": detected, "text": text} for text in translations]}))


async def kiss(request: web.Request) -> web.Response:
    """Kiss Translator's custom API: ``{from, to, text}`` → ``{text, src}``; ``{from, to, texts}`` → ``{translations}``."""
    caller = identify_caller(request, query_token=True)
    body = _object(await read_body(request))
    batch = "texts" in body
    texts = _texts(body.get("texts"), "texts") if batch else [_text(body.get("text"), "text")]
    target = parse_language(body.get("to"), param="to", allow_auto=False)
    source = parse_language(body.get("from"), param="from", allow_auto=True)
    assert target is not None  # allow_auto=False
    translations = await _translate(request, caller, texts, source, target)
    src = _echo(body.get("from"), source)
    if not batch:
        return await json_response(request, dumps({"text": translations[0], "src": src}))
    return await json_response(request, dumps({"translations": [{"text": text, "src": src}
                                                                for text in translations]}))


async def _translate(request: web.Request, caller: Caller, texts: Sequence[str], source: Language | None,
                     target: Language) -> list[str]:
    """``texts`` translated, under the chat path's admission rules (see the module docstring)."""
    if not any(text.strip() for text in texts):
        return list(texts)  # nothing to translate: no upstream call, not even the model list
    app = request.app
    config, metrics = app[CONFIG], app[METRICS]
    info = request[INFO]
    stats = TranslationStats()
    # A relay key with ``cache = false`` neither reads nor fills it; passthrough callers use it.
    cache = app[TRANSLATION_CACHE] if caller.key is None or caller.key.spec.cache else None
    try:
        async with nonstream_deadline(app):
            model, options = await translation_options(request, caller)
            info.model = model
            async with caller.admit(model, app[OPERATOR].state):
                return await translate_texts(texts, target=target, source=source, options=options,
                                             exchange=partial(complete_once, request, caller),
                                             limits=TranslateLimits.from_config(config), stats=stats,
                                             cache=cache)
    finally:
        metrics.translated_texts += stats.texts
        metrics.translation_calls += stats.upstream_calls
        metrics.translation_reasked += stats.reasked


def _object(raw: bytes) -> dict[str, Any]:
    body = parse_json_body(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string.", param=param,
                             code="missing_required_parameter" if value is None else "invalid_type")
    return value


def _texts(value: Any, param: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array of strings.", param=param,
                             code="missing_required_parameter" if value is None else "invalid_type")
    if len(value) > MAX_TEXTS:
        raise InvalidRequest(f"'{param}' holds {len(value)} texts; at most {MAX_TEXTS} go in one request.",
                             param=param, code="too_many_texts")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidRequest(f"'{param}[{index}]' must be a string.", param=f"{param}[{index}]",
                                 code="invalid_type")
    return value


def _echo(given: Any, source: Language | None) -> str:
    """The source language as the client named it ("auto" when it asked for detection)."""
    return given.strip() if source is not None and isinstance(given, str) else "auto"


def _deeplx_error(request: web.Request, exc: RelayError) -> web.Response:
    """A DeepLX error body, ``{"code": <status>, "message": …}``, with that HTTP status."""
    request[INFO].error_code = exc.instance_code or exc.code
    status = exc.http_status
    response = web.Response(status=status, content_type="application/json",
                            body=dumps({"code": status, "message": exc.message}))
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if exc.closes_connection:
        response.force_close()
    return response
