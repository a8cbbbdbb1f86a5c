"""What every handler needs: the caller's token, the body, a JSON response."""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from ..compression import compress_async, negotiate_encoding
from ..errors import AuthenticationFailed, BodyTooLarge, RequestTimeout
from ..keys import CONFIG, OPERATOR
from ..middleware import INFO
from ..operator.auth import Caller, identify

__all__ = ["bearer_token", "caller", "json_response", "read_body"]

_TOKEN_MAX_CHARS = 8192
#: every JSON answer varies with Accept-Encoding, compressed or not (a cache must not mix them).
_JSON_HEADERS: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "Vary": "Accept-Encoding"})


def bearer_token(request: web.Request, *, query_token: bool = False) -> str:
    """The Qwen token from ``Authorization: Bearer``, or ``api-key`` as a fallback.

    Immersive Translate sends both headers; Azure-style clients send only
    ``api-key``. A token must be printable ASCII: it goes into an upstream header.
    ``query_token``: a ``?token=`` in the URL also counts, after the headers (the
    translation endpoints: Immersive's custom API and DeepLX clients put it there;
    Kiss sends ``Bearer `` with nothing after it when its key field is empty).
    """
    header = request.headers.get("Authorization")
    token = ""
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationFailed("The Authorization header must be 'Bearer <your Qwen Chat token>'.")
        token = value.strip()
    else:
        token = (request.headers.get("api-key") or request.headers.get("x-api-key") or "").strip()
    if not token and query_token:
        token = request.query.get("token", "").strip()
    if not token:
        raise AuthenticationFailed(
            "Missing token: send your Qwen Chat token as 'Authorization: Bearer <token>'.")
    if len(token) > _TOKEN_MAX_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise AuthenticationFailed("The bearer token is malformed.")
    return token


def caller(request: web.Request, *, query_token: bool = False) -> Caller:
    """The request's credentials under the operator mode (401 before any upstream call).

    The key's name, and later the pool credential's, are noted on the request's
    ``RequestInfo`` for the usage records.
    """
    return identify(request.app[OPERATOR], bearer_token(request, query_token=query_token), request[INFO])


async def read_body(request: web.Request) -> bytes:
    """The request body, refusing early (413) when it cannot fit the limit."""
    config = request.app[CONFIG]
    limit = config.limits.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit} (--max-body-bytes).")
    content = request.content
    if content.is_eof():
        # The whole body came with the head: take it as it lies, no await.
        body = content.read_nowait()
    else:
        # Not request.read(): it keeps a copy on the request for the request's whole
        # life, which for a stream is the stream's (a coding agent's prompt is 100 KB+).
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(config.timeouts.client_body_s):
                while chunk := await content.readany():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        break  # refused below, without reading the rest
        except TimeoutError as exc:
            raise RequestTimeout(f"The request body did not arrive within {config.timeouts.client_body_s:g} s "
                                 "(--body-timeout).") from exc
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(body) > limit:
        raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes (--max-body-bytes).")
    return body


async def json_response(request: web.Request, body: bytes, *, status: int = 200,
                        cache: dict[str, bytes] | None = None) -> web.Response:
    """A JSON response, br/gzip-compressed when it pays and the client accepts it.

    ``cache`` keeps compressed variants of a body that is served many times
    (the model list), so it is compressed once per coding.
    """
    if len(body) >= request.app[CONFIG].compress_min_bytes:
        coding = negotiate_encoding(request.headers.get("Accept-Encoding"))
        if coding is not None:
            encoded = cache.get(coding) if cache is not None else None
            if encoded is None:
                encoded = await compress_async(body, coding)
                if cache is not None:
                    cache[coding] = encoded
            headers = CIMultiDict(_JSON_HEADERS)
            headers["Content-Encoding"] = coding
            return web.Response(status=status, body=encoded, headers=headers)
    # Response copies the headers it is given: one shared, prebuilt set is safe.
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)
