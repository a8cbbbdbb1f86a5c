"""GET /healthz (200 serving, 503 draining) and GET /metrics (Prometheus text, every worker's).

With a shared state backend (``--state redis://…``) /healthz also names it and
whether it answers: ``{"status":"ok","state":{"backend":"redis","status":"down"}}``.
Still 200 while Redis is down: the relay serves (limits fail open), so a load
balancer must not take every relay of the fleet out of rotation because Redis is
gone. With the default in-memory state the body is exactly ``{"status":"ok"}``,
the documented contract.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..keys import LIFECYCLE, METRICS, OPERATOR
from ..metrics import CONTENT_TYPE

__all__ = ["healthz", "metrics"]

_OK = b'{"status":"ok"}'
_DRAINING = b'{"status":"draining"}'


async def healthz(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.Response(status=503, body=_DRAINING, content_type="application/json")
    state = request.app[OPERATOR].state
    if state.name == "memory":
        return web.Response(body=_OK, content_type="application/json")
    body = {"status": "ok", "state": {"backend": state.name, "status": state.status()}}
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """The whole process tree's numbers under ``--workers``, whichever worker answers (``relay.metrics``)."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
