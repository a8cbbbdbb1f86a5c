"""GET /v1/responses/{response_id}: a stored Responses answer, to its owner only.

Authenticated as ``POST /v1/responses`` is; a response another relay key (or,
in passthrough, another token) created is "not found", exactly like an id
that never existed or has expired (--responses-ttl), so ids reveal nothing.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..jsonio import dumps
from ..middleware import INFO
from ..surfaces.responses.store import owner_of, store_of
from .common import caller, json_response

__all__ = ["retrieve_response"]


async def retrieve_response(request: web.Request) -> web.Response:
    who = caller(request)
    response_id = request.match_info["response_id"]
    record = await store_of(request.app).load(response_id, owner_of(who))
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    response = await json_response(request, dumps(record.response))
    request[INFO].bytes_out = response.content_length or 0
    return response
