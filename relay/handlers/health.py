"""GET /healthz: 200 while the relay serves."""

from __future__ import annotations

from aiohttp import web

__all__ = ["healthz"]

_OK = b'{"status":"ok"}'


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_OK, content_type="application/json")
