"""The chat host's upload calls: ``getstsToken``, ``files/parse`` and its status (QWEN_IMAGES.md §1.2, §1.4, §6.1).

``POST /api/v2/files/getstsToken`` (and ``/api/v1/…``) ``{"filename", "filesize",
"filetype"}`` answers, per call, a fresh STS key pair and token for one object
``<user_id>/<file_id>_<filename>`` in bucket ``qwen-webui-prod``:

    {"success": true, "request_id": …, "data": {"access_key_id": "STS.…",
     "access_key_secret": …, "security_token": "CAIS…", "bucketname": "qwen-webui-prod",
     "endpoint": "oss-accelerate.emu.invalid", "region": "oss-ap-southeast-1",
     "file_path": "<user_id>/<file_id>_<filename>", "file_id": <uuid>, "file_url": <V4 pre-signed GET>}}

Admission is chat creation's: the gateway applies rules 1-3 of ``strict.py``
(kind ``"file"``: any ``/c/…`` Referer), armed faults and the per-login gates
(risk control, ``bx-*``); then :func:`routes_chats.admit` checks the token (the
cookie when strict) and the ``version`` header. A body without a usable
``filename``, ``filesize`` (integer or digit string) or ``filetype`` is 200 + 400
``Bad_Request`` "Invalid file information!" (§1.2, measured); with knob
``filetype_enum`` also a filetype outside image/video/audio/file.

Knobs (``POST /_emulator/files``, see ``files_control.py``): ``sts_envelope: "flat"``
(no wrapper), ``endpoint: "omit" | "loopback"`` (no field; ``http://127.0.0.1:PORT``, the
OSS stand-in's URL, scheme included), ``file_url: "cdn"`` (``<chat origin>/cdn/<file_path>?key=<JWT>``),
``sts_ttl_s``. Refusals are armed for the path like any gateway fault,
``POST /_emulator/arm {"path": "/api/v2/files/getstsToken", "directive": …}`` with
``{"fault": "v2_error", "code": "RateLimited", "num": 3}`` (200 + 429 ``success:
false``), ``{"fault": "waf"}`` (the slider page), ``{"fault": "risk_control"}`` (the
x5sec ``ret[]`` JSON) or ``{"ttfb_ms": 800}`` (latency); a login's challenge and
``bx-*`` demand (``/_emulator/challenge``, ``/_emulator/require_bx``) apply here too.

``POST /api/v2/files/parse {"file_id"}`` → ``{"success": true, "data": {"file_id",
"status": "running"}}``; ``POST /api/v2/files/parse/status {"file_id_list": [...]}``
→ ``data: [{"file_id", "status"}]``: ``running`` on the first poll of a file, then
``success`` (knob ``parse_result: "failed"``: ``failed`` with ``error_code`` and
``error_msg``). An id not issued to the caller is ``failed`` at once ([I]).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    respond,
    v2_error,
    v2_token,
)
from relay.emulator.oss_auth import Signer, presign_v4_query
from relay.emulator.resource_keys import mint_resource_key
from relay.emulator.routes_chats import read_v2_body
from relay.emulator.state import RequestRecord
from relay.emulator.uploads import FILETYPES, REGION, TEST_ENDPOINT, FileBook, StsGrant, user_id_for

__all__ = ["INVALID_FILE_DETAILS", "account_user", "add_file_routes", "quote_path"]

# §1.2 (A, measured): what a body without filetype gets.
INVALID_FILE_DETAILS = "Invalid file information!"
# I-02: the pre-signed file_url lives 300 s.
FILE_URL_EXPIRES_S = 300


def add_file_routes(app: web.Application) -> None:
    app.router.add_post("/api/v2/files/getstsToken", sts_token)
    app.router.add_post("/api/v1/files/getstsToken", sts_token)
    app.router.add_post("/api/v2/files/parse", parse)
    app.router.add_post("/api/v2/files/parse/status", parse_status)


def account_user(request: web.Request) -> str:
    """The user id of the account a chat-host request authenticated as (``uploads.user_id_for``)."""
    token = v2_token(request, request.app[EMULATOR_CONFIG]) or ""
    verdict = request.app[EMULATOR_STATE].logins.judge(token)
    if verdict is not None and verdict.login is not None:
        return user_id_for("login:" + verdict.login.email)
    return user_id_for("token:" + token)


def quote_path(key: str) -> str:
    """Percent-encode an object key for a URL path, ``/`` kept."""
    return quote(key, safe="/")


async def _body(request: web.Request, record: RequestRecord) -> dict[str, Any] | web.Response:
    """Admitted as every bx-signed write is (``routes_chats.read_v2_body``, write kind ``"file"``)."""
    return await read_v2_body(request, record, "file")


def _file_info(body: dict[str, Any], book: FileBook) -> tuple[str, int, str] | None:
    """(filename, filesize, filetype) from a getstsToken body, or None when it is not usable."""
    filename, filesize, filetype = body.get("filename"), body.get("filesize"), body.get("filetype")
    if not isinstance(filename, str) or not filename.strip():
        return None
    if isinstance(filesize, str) and filesize.isdigit():
        filesize = int(filesize)  # A: the web app sends a string (§1.2, measured); both are accepted
    if isinstance(filesize, bool) or not isinstance(filesize, int) or filesize < 0:
        return None
    if not isinstance(filetype, str) or not filetype:
        return None
    if book.knobs.filetype_enum and filetype not in FILETYPES:
        return None
    return filename, filesize, filetype


def _endpoint(book: FileBook) -> str | None:
    if book.knobs.endpoint == "omit":
        return None
    if book.knobs.endpoint == "loopback" and book.oss_url is not None:
        return book.oss_url  # with its scheme (X's sample has one, §1.2): plain http on loopback
    return TEST_ENDPOINT


def _file_url(request: web.Request, book: FileBook, grant: StsGrant, endpoint: str | None) -> str:
    """The download link of the answer: V4 pre-signed (I-02) or, with knob ``file_url: "cdn"``, I-01's form."""
    now = time.time()
    if book.knobs.file_url == "cdn":
        key = mint_resource_key(book.secret, user_id=grant.user_id, resource_id=grant.file_id, chat_id=None,
                                now=now, ttl_s=book.knobs.output_ttl_s)
        return f"{request.scheme}://{request.host}/cdn/{quote_path(grant.key)}?{urlencode({'key': key})}"
    signer = Signer(book.service_key_id, book.service_key_secret, None, None)
    query = presign_v4_query(signer, "GET", grant.bucket, grant.key, REGION.removeprefix("oss-"), now,
                             FILE_URL_EXPIRES_S)
    if endpoint is not None and endpoint.startswith("http://"):
        base = f"{endpoint}/{grant.bucket}"  # path style: a bucket cannot be a label of an IP
    else:
        base = f"https://{grant.bucket}.{endpoint or TEST_ENDPOINT}"
    return f"{base}/{quote_path(grant.key)}?{urlencode(query)}"


async def sts_token(request: web.Request) -> web.Response:
    """Mint the STS credentials for one upload (see the module docstring)."""
    record = request[EMULATOR_RECORD]
    body = await _body(request, record)
    if isinstance(body, web.Response):
        return body
    book = request.app[EMULATOR_STATE].files
    info = _file_info(body, book)
    if info is None:
        record.rejected = "invalid_file_information"
        return v2_error(record, 400, "Bad_Request", INVALID_FILE_DETAILS)
    grant = book.issue(account_user(request), *info)
    endpoint = _endpoint(book)
    data: dict[str, Any] = {
        "access_key_id": grant.access_key_id,
        "access_key_secret": grant.access_key_secret,
        "security_token": grant.security_token,
        "bucketname": grant.bucket,
        "region": REGION,
        "file_path": grant.key,
        "file_id": grant.file_id,
        "file_url": _file_url(request, book, grant, endpoint),
    }
    if endpoint is not None:
        data["endpoint"] = endpoint
    if book.knobs.sts_envelope == "flat":
        return respond(record, 200, data)
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": data})


def _owned(book: FileBook, user_id: str, file_id: Any) -> bool:
    grant, stored = book.object_of_file(file_id) if isinstance(file_id, str) else (None, None)
    return grant is not None and stored is not None and grant.user_id == user_id


async def parse(request: web.Request) -> web.Response:
    """``POST /api/v2/files/parse``: start parsing a document (§1.4); the answer is unused by clients."""
    record = request[EMULATOR_RECORD]
    body = await _body(request, record)
    if isinstance(body, web.Response):
        return body
    file_id = body.get("file_id")
    if not _owned(request.app[EMULATOR_STATE].files, account_user(request), file_id):
        return v2_error(record, 404, "Not_Found", "file not found")
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()),
                                 "data": {"file_id": file_id, "status": "running"}})


async def parse_status(request: web.Request) -> web.Response:
    """``POST /api/v2/files/parse/status``: ``running`` once per file, then the knob's result (§1.4)."""
    record = request[EMULATOR_RECORD]
    body = await _body(request, record)
    if isinstance(body, web.Response):
        return body
    ids = body.get("file_id_list")
    if not isinstance(ids, list) or not ids:
        return v2_error(record, 400, "Bad_Request", "file_id_list must be a non-empty list")
    book, user_id = request.app[EMULATOR_STATE].files, account_user(request)
    data = []
    for file_id in ids:
        entry: dict[str, Any] = {"file_id": file_id}
        polls = book.count_parse_poll(str(file_id))
        if not _owned(book, user_id, file_id) or (polls > 1 and book.knobs.parse_result == "failed"):
            entry |= {"status": "failed", "error_code": "parse_failed", "error_msg": "file could not be parsed"}
        else:
            entry["status"] = "running" if polls == 1 else "success"
        data.append(entry)
    return respond(record, 200, {"success": True, "request_id": str(uuid.uuid4()), "data": data})
