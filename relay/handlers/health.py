"""GET /healthz (200 serving, 503 draining) and GET /metrics (Prometheus text)."""

from __future__ import annotations

from aiohttp import web

from ..keys import LIFECYCLE, METRICS
from ..metrics import CONTENT_TYPE

__all__ = ["healthz", "metrics"]

_OK = b'{"status":"ok"}'
_DRAINING = b'{"status":"draining"}'


async def healthz(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.Response(status=503, body=_DRAINING, content_type="application/json")
    return web.Response(body=_OK, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render().encode(), headers={"Content-Type": CONTENT_TYPE})
