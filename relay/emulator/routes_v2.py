"""The qwen-v2 endpoints (§4): create a chat, complete in it, stop a response.

Every error here is a v2 envelope on HTTP 200 with the real status in
``x-actual-status-code`` (§4.5 [C]), including a bad token; the injected HTTP faults
(``http_5xx``, ``waf``…) keep their own status, as a gateway in front would.

[I] choices where the notes are silent: the chat is looked up before the messages
are checked (an unknown chat wins over a bad body); ``chat_id`` comes from the query
and falls back to the body; an unknown model is ``Not_Found``/404;
``response.created.parent_id`` is the user message's ``fid`` (a fresh id if it has
none); ``chats/new`` answers ``data`` with ``id`` plus the echoed fields; the stop
call answers ``{"success": true, "request_id"}`` whether or not anything was live.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from relay.emulator.catalogue import capabilities
from relay.emulator.framing import plan_events
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    applied_fault,
    delay_s,
    is_authorized,
    pre_stream,
    read_json,
    respond,
    search_sources,
    token,
    v2_error,
)
from relay.emulator.phase import build_reply
from relay.emulator.playback import play_stream
from relay.emulator.request import BadRequest, V2Request, parse_v2_request
from relay.emulator.state import LiveResponse, RequestRecord
from relay.emulator.v2 import (
    V2Stream,
    input_tokens,
    is_thinking_requested,
    think_phase_for,
    v2_error_event,
    v2_frames,
    v2_padded,
)

__all__ = ["chat_completions_v2", "chats_new", "stop_v2"]

UNAUTHORIZED_V2 = "Unauthorized: your token is invalid or has expired; please sign in again."


def _check_token(request: web.Request, record: RequestRecord) -> web.Response | None:
    if is_authorized(token(request), request.app[EMULATOR_CONFIG]):
        return None
    return v2_error(record, 401, "Unauthorized", UNAUTHORIZED_V2)


async def _v2_request(request: web.Request) -> tuple[RequestRecord, dict[str, Any] | web.Response]:
    """Record a v2 request and check its token, then its JSON body; a refusal comes back as the body."""
    record = request[EMULATOR_RECORD]
    record.dialect = "v2"
    refused = _check_token(request, record)
    if refused is not None:
        return record, refused
    return record, await _body(request, record)


async def _body(request: web.Request, record: RequestRecord) -> dict[str, Any] | web.Response:
    try:
        body = await read_json(request)
    except ValueError:
        return v2_error(record, 400, "Bad_Request", "request body is not valid JSON")
    if not isinstance(body, dict):
        return v2_error(record, 400, "Bad_Request", "request body must be a JSON object")
    return body


async def chats_new(request: web.Request) -> web.Response:
    """``POST /api/v2/chats/new`` → ``{"success": true, "data": {"id": …}}`` (§4.1 [C])."""
    record, body = await _v2_request(request)
    if isinstance(body, web.Response):
        return body
    models = body.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        return v2_error(record, 400, "Bad_Request", "models must be a non-empty list of model ids")
    record.model = models[0]
    if models[0] not in request.app[EMULATOR_CONFIG].models:
        return v2_error(record, 404, "Not_Found", "Model not found")
    title, mode, chat_type, stamp = (body.get(k) for k in ("title", "chat_mode", "chat_type", "timestamp"))
    chat = request.app[EMULATOR_STATE].create_chat(
        str(uuid.uuid4()),
        models[0],
        title=title if isinstance(title, str) else "New Chat",
        chat_type=chat_type if isinstance(chat_type, str) else "t2t",
        chat_mode=mode if isinstance(mode, str) else "normal",
        timestamp_ms=stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None,
    )
    record.chat_id, record.chat_type = chat.id, chat.chat_type
    data = {
        "id": chat.id,
        "title": chat.title,
        "models": list(models),
        "chat_mode": chat.chat_mode,
        "chat_type": chat.chat_type,
        "created_at": int(chat.created_at),
    }
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": data})


async def chat_completions_v2(request: web.Request) -> web.StreamResponse:
    """``POST /api/v2/chat/completions?chat_id=…``: always an SSE stream (§4.2, §4.3)."""
    state, config = request.app[EMULATOR_STATE], request.app[EMULATOR_CONFIG]
    record, body = await _v2_request(request)
    if isinstance(body, web.Response):
        return body
    body_chat_id = body.get("chat_id")
    chat_id = request.query.get("chat_id") or (body_chat_id if isinstance(body_chat_id, str) else None)
    record.chat_id = chat_id
    stream = body.get("stream")
    record.stream = stream if isinstance(stream, bool) else None
    if not chat_id:
        return v2_error(record, 400, "Bad_Request", "chat_id is required")
    chat = state.chats.get(chat_id)
    if chat is None:
        return v2_error(record, 404, "CHAT_NOT_FOUND", "chat not found")
    try:
        v2 = parse_v2_request(body)
    except BadRequest as exc:
        return v2_error(record, exc.status, exc.code, exc.detail)
    record.model, record.user_message, record.parent_id = v2.model, v2.user_message, v2.parent_id
    record.feature_config, record.chat_type = v2.features.feature_config, v2.features.chat_type
    if v2.model not in config.models:
        return v2_error(record, 404, "Not_Found", "Model not found")
    chat.completions += 1
    fault = applied_fault(state, record, v2.directive, v2.has_directive)
    early = await pre_stream(request, state, record, v2.directive, fault, stream=True)
    if early is not None:
        return early
    response_id = str(uuid.uuid4())
    record.response_id = response_id
    chat.responses.append(response_id)
    live = state.live_responses[response_id] = LiveResponse(chat_id)
    try:
        spec = _stream_spec(v2, chat_id, response_id, config.default_chunks)
        steps = plan_events(
            v2_frames(spec),
            v2.directive,
            fault=fault,
            delay_s=delay_s(v2.directive, fault, config),
            error=v2_error_event(v2.directive, response_id),
            padded=v2_padded(response_id),
        )
        return await play_stream(request, state, record, steps, v2.directive.split, stop=live.stop)
    finally:
        del state.live_responses[response_id]


def _stream_spec(v2: V2Request, chat_id: str, response_id: str, default_chunks: int) -> V2Stream:
    directive = v2.directive
    caps = capabilities(v2.model)
    reply = build_reply(
        directive,
        v2.user_text,
        default_chunks,
        thinking=is_thinking_requested(v2.features),
        model_thinks=caps.can_think,
    )
    return V2Stream(
        chat_id=chat_id,
        response_id=response_id,
        parent_id=v2.user_fid or str(uuid.uuid4()),
        reply=reply,
        think_phase=think_phase_for(v2.features, directive),
        summary_mode=directive.summary_mode,
        sources=search_sources(v2.features, directive, caps),
        input_tokens=None if directive.usage is False else input_tokens(v2.user_message),
        keepalives=directive.keepalive_info,
        done=directive.done is True,
        timestamp=int(time.time()),
    )


def _id(body: dict[str, Any], query: Any, *names: str) -> str:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    for name in names:
        value = query.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


async def stop_v2(request: web.Request) -> web.Response:
    """``POST /api/v2/chat/completions/stop``: record the call, end that live stream (§4.2 [S]).

    Ids come from the body or the query, snake or camel case; [I] a call naming
    neither a chat nor a response is a 400 and is not recorded as a stop.
    """
    state = request.app[EMULATOR_STATE]
    record = request[EMULATOR_RECORD]
    record.dialect = "v2"
    refused = _check_token(request, record)
    if refused is not None:
        return refused
    raw = await request.read()
    body: Any = {}
    if raw.strip():
        try:
            body = await read_json(request)
        except ValueError:
            return v2_error(record, 400, "Bad_Request", "request body is not valid JSON")
    if not isinstance(body, dict):
        body = {}
    chat_id = _id(body, request.query, "chat_id", "chatId")
    response_id = _id(body, request.query, "response_id", "responseId")
    record.chat_id, record.response_id = chat_id or None, response_id or None
    if not chat_id and not response_id:
        return v2_error(record, 400, "Bad_Request", "chat_id or response_id is required")
    state.record_stop(chat_id, response_id)
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4())})
