"""The qwen-v2 chat endpoints (§4.1, §7.3): create, stop, delete; and what every v2 write shares.

Every error here is a v2 envelope on HTTP 200 with the real status in
``x-actual-status-code`` (§4.5 [C]), including a bad token. Rules 1-5 of the 2026
checks run in the gateway (``server.py``); the ones answered with a v2 envelope run
here, in the service's order (§7.1, §7.2, §7.5): the token (the ``token`` cookie
when strict, Bearer or cookie when lenient), then the ``version`` header, then the
body shape (``strict.body_problem``).

A token that is an emulator JWT (``logins.py``) is judged by its signature, ``exp``
and login: expired is 401 ``Unauthorized`` "Token expired" (§7.1 [C]). A successful
``chats/new`` of such a login also answers ``Set-Cookie: ssxmod_itna`` (``auth.rotate_jar``).

[I] choices where the notes are silent: ``chats/new`` answers ``data`` with ``id``
plus the echoed fields; the stop call answers ``{"success": true, "request_id"}``
whether or not anything was live; DELETE answers ``data: {"status": true}`` and an
unknown (or already deleted) chat is ``CHAT_NOT_FOUND``.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from relay.emulator.auth import rotate_jar
from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    judge_access,
    read_json,
    respond,
    v2_error,
    v2_token,
)
from relay.emulator.logins import Access
from relay.emulator.state import RequestRecord
from relay.emulator.strict import WriteKind, body_problem

__all__ = [
    "TOKEN_EXPIRED_DETAILS",
    "UNAUTHORIZED_V2",
    "admit",
    "chats_new",
    "delete_chat",
    "read_v2_body",
    "stop_v2",
    "v2_unauthorized",
]

UNAUTHORIZED_V2 = "Unauthorized: your token is invalid or has expired; please sign in again."
# §7.1 [C]: an expired access token, the relay's cue to refresh and retry once.
TOKEN_EXPIRED_DETAILS = "Token expired"
# §7.2 [S, controlled]: a write without the version header.
NO_VERSION_DETAILS = "internal error"


def admit(request: web.Request, record: RequestRecord) -> web.Response | None:
    """Check the token, then (strict) the ``version`` header; a refusal, or None to go on."""
    record.dialect = "v2"
    config = request.app[EMULATOR_CONFIG]
    access = judge_access(request, v2_token(request, config))
    if not access.ok:
        return v2_unauthorized(record, access)
    if config.strict and not request.headers.get("version"):
        record.rejected = "no_version"
        return v2_error(record, 400, "Bad_Request", NO_VERSION_DETAILS)
    return None


def v2_unauthorized(record: RequestRecord, access: Access) -> web.Response:
    """200 + 401 ``Unauthorized``; "Token expired" when only the ``exp`` is past (§7.1 [C])."""
    record.rejected = access.rule
    details = TOKEN_EXPIRED_DETAILS if access.rule == "token_expired" else UNAUTHORIZED_V2
    return v2_error(record, 401, "Unauthorized", details)


async def read_v2_body(
    request: web.Request, record: RequestRecord, kind: WriteKind
) -> dict[str, Any] | web.Response:
    """Admit the request, decode its JSON object and (strict) check its shape; or a refusal."""
    refused = admit(request, record)
    if refused is not None:
        return refused
    try:
        body = await read_json(request)
    except ValueError:
        return v2_error(record, 400, "Bad_Request", "request body is not valid JSON")
    if not isinstance(body, dict):
        return v2_error(record, 400, "Bad_Request", "request body must be a JSON object")
    if request.app[EMULATOR_CONFIG].strict:
        problem = body_problem(kind, body, request.query.get("chat_id"))
        if problem is not None:
            record.rejected = problem.rule
            return v2_error(record, 422, "RequestValidationError", problem.details)
    return body


async def chats_new(request: web.Request) -> web.Response:
    """``POST /api/v2/chats/new`` → ``{"success": true, "data": {"id": …}}`` (§4.1 [C])."""
    record = request[EMULATOR_RECORD]
    body = await read_v2_body(request, record, "new")
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
    response = respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": data})
    return rotate_jar(request, record, response)


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
    """``POST /api/v2/chat/completions/stop``: record the call, end that live stream (§4.2, §7.3 [S]).

    Ids come from the body or the query (``?chat_id=`` as the 2026 web app sends
    it), snake or camel case; [I] a call naming neither a chat nor a response is a
    400 and is not recorded as a stop.
    """
    state = request.app[EMULATOR_STATE]
    record = request[EMULATOR_RECORD]
    refused = admit(request, record)
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


async def delete_chat(request: web.Request) -> web.Response:
    """``DELETE /api/v2/chats/<chat_id>`` → ``data: {"status": true}``; the chat is gone (§7.3 [C])."""
    state = request.app[EMULATOR_STATE]
    record = request[EMULATOR_RECORD]
    refused = admit(request, record)
    if refused is not None:
        return refused
    chat_id = request.match_info["chat_id"]
    record.chat_id = chat_id
    if not state.delete_chat(chat_id):
        return v2_error(record, 404, "CHAT_NOT_FOUND", "chat not found")
    record.chat_deleted = True
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": {"status": True}})
