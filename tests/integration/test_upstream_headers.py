"""Browser-like upstream headers, configurable without a release (issue 4)."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from relay.app import make_app
from relay.config import Config
from tests.conftest import TOKEN, auth


async def test_configured_headers_and_cookies_reach_the_upstream(aiohttp_server: AiohttpServer) -> None:
    """``[upstream.headers]`` / cookies from --config are sent; Authorization stays the caller's."""
    seen: list[dict[str, str]] = []

    async def models(request: web.Request) -> web.Response:
        # A recording stand-in for Qwen Chat at the network edge: it only keeps headers.
        seen.append(dict(request.headers))
        return web.json_response({"data": [{"id": "m1"}]})

    upstream_app = web.Application()
    upstream_app.router.add_get("/api/models", models)
    upstream = await aiohttp_server(upstream_app, host="127.0.0.1")
    config = Config(upstream=str(upstream.make_url("")).rstrip("/"), dialect="qwen-v1",
                    upstream_headers=(("bx-v", "2.5.36"), ("Cookie", "ssxmod_itna=abc")))
    relay = await aiohttp_server(make_app(config), host="127.0.0.1")
    async with aiohttp.ClientSession() as session, session.get(relay.make_url("/v1/models"), headers=auth()) as response:
        assert response.status == 200
    headers = seen[-1]
    assert headers["bx-v"] == "2.5.36"
    assert headers["Cookie"] == "ssxmod_itna=abc"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Origin"] == config.upstream and headers["Referer"] == config.upstream + "/"
    assert "Mozilla/5.0" in headers["User-Agent"]
