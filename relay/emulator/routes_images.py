"""The chat host's read side of images: CDN links and the chat detail (QWEN_IMAGES.md §6.1.4, §6.1.5).

- ``GET /output/<user_id>/<kind>/<chat_id>/<id>.png?key=<JWT>``: a generated image
  (``images.py``), a real ``image/png`` of the size its stream announced.
- ``GET /cdn/<file_path>?key=<JWT>``: an uploaded object by the 2025 cdn-style
  ``file_url`` (knob ``file_url: "cdn"``).

Both refuse a missing, forged, expired (``UploadKnobs.output_ttl_s``, or
``POST /_emulator/files/expire``) or other resource's ``key`` with 403 and an
OSS-style XML ``AccessDenied`` ([I]: the CDN's own error body is not captured);
an unknown path is 404 ``NoSuchKey``. No chat token is needed: the key is the
credential, as on the real CDN.

- ``GET /api/v2/chats/<chat_id>`` (token as ``GET /api/v2/models``): ``{"success":
  true, "data": {"id", "title", "chat_type", "chat": {"history": {"messages":
  {<id>: …}, "currentId"}, "messages": [...]}}}``. Each remembered turn gives a user
  message (``content``, the ``files`` it sent, I-04 shape as given) and an assistant
  message whose ``content_list`` holds one ``{"phase", "content": <url>, "status":
  "finished", "extra": {"output_image_hw": [[h, w]]}}`` per generated image (also
  those the stream left out, directive ``images: 0``) then the ``answer`` text.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

from aiohttp import web

from relay.emulator.handling import EMULATOR_RECORD, EMULATOR_STATE, judge_access, respond, token, v2_error
from relay.emulator.oss_auth import OssError
from relay.emulator.png import solid_png
from relay.emulator.resource_keys import resource_key_problem
from relay.emulator.routes_chats import v2_unauthorized
from relay.emulator.state import RequestRecord
from relay.emulator.uploads import BUCKET, ChatTurn

__all__ = ["add_image_routes"]


def add_image_routes(app: web.Application) -> None:
    app.router.add_get("/output/{tail:.+}", output_image)
    app.router.add_get("/cdn/{tail:.+}", cdn_object)
    app.router.add_get("/api/v2/chats/{chat_id}", chat_detail)


def _xml_error(record: RequestRecord, error: OssError, host: str) -> web.Response:
    record.status = error.status
    return web.Response(status=error.status, body=error.xml(secrets.token_hex(12).upper(), host),
                        content_type="application/xml")


def _denied(problem: str) -> OssError:
    return OssError(403, "AccessDenied", f"The link's key is {problem.replace('_', ' ')}.")


async def output_image(request: web.Request) -> web.Response:
    """Serve a generated image to its ``?key=`` link."""
    record, book = request[EMULATOR_RECORD], request.app[EMULATOR_STATE].files
    image = book.generated.get(request.path)
    if image is None:
        return _xml_error(record, OssError(404, "NoSuchKey", "The specified key does not exist."), request.host)
    problem = resource_key_problem(book.secret, request.query.get("key"), user_id=image.user_id,
                                   resource_id=image.image_id, now=time.time(), not_before=book.links_not_before)
    if problem is not None:
        return _xml_error(record, _denied(problem), request.host)
    # Up to ~0.15 s of zlib for 2688x1536: off the loop, so other streams keep flowing.
    png = await asyncio.get_running_loop().run_in_executor(None, solid_png, image.width, image.height, image.rgb)
    record.status = 200
    return web.Response(body=png, content_type="image/png")


async def cdn_object(request: web.Request) -> web.Response:
    """Serve an uploaded object to its cdn-style ``?key=`` link."""
    record, book = request[EMULATOR_RECORD], request.app[EMULATOR_STATE].files
    stored = book.objects.get((BUCKET, request.match_info["tail"]))
    if stored is None:
        return _xml_error(record, OssError(404, "NoSuchKey", "The specified key does not exist."), request.host)
    problem = resource_key_problem(book.secret, request.query.get("key"), user_id=stored.user_id,
                                   resource_id=stored.file_id, now=time.time(), not_before=book.links_not_before)
    if problem is not None:
        return _xml_error(record, _denied(problem), request.host)
    record.status = 200
    return web.Response(body=stored.data, headers={"Content-Type": stored.content_type or "application/octet-stream"})


def _messages(turns: list[ChatTurn]) -> dict[str, dict[str, Any]]:
    messages: dict[str, dict[str, Any]] = {}
    parent: str | None = None
    for turn in turns:
        messages[turn.user_fid] = {"id": turn.user_fid, "role": "user", "content": turn.content,
                                   "files": list(turn.files), "parentId": parent, "childrenIds": [turn.response_id]}
        extra = {"output_image_hw": [list(turn.hw)]} if turn.hw is not None else {}
        content_list = [{"phase": turn.phase, "content": url, "status": "finished", "extra": extra}
                        for url in turn.urls]
        if turn.answer:
            content_list.append({"phase": "answer", "content": turn.answer, "status": "finished"})
        messages[turn.response_id] = {"id": turn.response_id, "role": "assistant", "content": turn.answer,
                                      "parentId": turn.user_fid, "childrenIds": [], "content_list": content_list}
        parent = turn.response_id
    return messages


async def chat_detail(request: web.Request) -> web.Response:
    """``GET /api/v2/chats/<id>``: the remembered turns of a chat (see the module docstring)."""
    record, state = request[EMULATOR_RECORD], request.app[EMULATOR_STATE]
    record.dialect = "v2"
    access = judge_access(request, token(request))
    if not access.ok:
        return v2_unauthorized(record, access)
    chat_id = request.match_info["chat_id"]
    record.chat_id = chat_id
    chat = state.chats.get(chat_id)
    if chat is None:
        return v2_error(record, 404, "CHAT_NOT_FOUND", "chat not found")
    turns = state.files.history.get(chat_id, [])
    messages = _messages(turns)
    history = {"messages": messages, "currentId": turns[-1].response_id if turns else None}
    data = {"id": chat.id, "title": chat.title, "chat_type": chat.chat_type, "models": [chat.model],
            "chat": {"history": history, "messages": list(messages.values())}}
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": data})
