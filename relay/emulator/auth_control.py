"""``/_emulator/*`` hooks for the auth host, for tests of a relay in another process.

- ``GET /_emulator/logins`` → ``[{"id", "email", "alive", "refresh_count"}, ...]``
- ``POST /_emulator/logins {"email"}`` → ``{"id", "email", "access_token",
  "refresh_token", "expires_at", "cookie"}`` (``EmulatorState.create_login``)
- ``GET /_emulator/refreshes`` → ``[{"token_fingerprint", "login_id", "result", "at"}, ...]``
- ``POST /_emulator/signin_wall {"mode": "waf" | "risk_control" | "off"}``
- ``POST /_emulator/challenge {"login": <id or email>, "times": N, "on": "writes" | "refresh"}``
- ``POST /_emulator/require_bx {"login": <id or email>, "on": true | false}``

A bad request is HTTP 400 ``{"detail": …}`` naming the field, as ``/_emulator/arm``
answers; an unknown login is 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.emulator.handling import EMULATOR_STATE, dumps, read_json
from relay.emulator.logins import Login

__all__ = ["add_auth_control_routes"]

_WALL_MODES = ("waf", "risk_control", "off")


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def add_auth_control_routes(app: web.Application) -> None:
    app.router.add_get("/_emulator/logins", _list_logins)
    app.router.add_post("/_emulator/logins", _create_login)
    app.router.add_get("/_emulator/refreshes", _refreshes)
    app.router.add_post("/_emulator/signin_wall", _signin_wall)
    app.router.add_post("/_emulator/challenge", _challenge)
    app.router.add_post("/_emulator/require_bx", _require_bx)


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = await read_json(request)
    except ValueError:
        raise _Refused(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "body must be a JSON object")
    return body


def _login(request: web.Request, body: dict[str, Any]) -> Login:
    key = body.get("login")
    if not isinstance(key, str) or not key:
        raise _Refused(400, "login must be a login id or an email")
    login = request.app[EMULATOR_STATE].logins.find(key)
    if login is None:
        raise _Refused(404, f"no login {key!r}")
    return login


def _refused(exc: _Refused) -> web.Response:
    return web.json_response({"detail": str(exc)}, status=exc.status)


async def _list_logins(request: web.Request) -> web.Response:
    logins = request.app[EMULATOR_STATE].logins.logins.values()
    return web.json_response([login.to_json() for login in logins], dumps=dumps)


async def _create_login(request: web.Request) -> web.Response:
    try:
        email = (await _object(request)).get("email")
        if not isinstance(email, str) or not email:
            raise _Refused(400, "email must be a non-empty string")
    except _Refused as exc:
        return _refused(exc)
    return web.json_response(request.app[EMULATOR_STATE].create_login(email).to_json(), dumps=dumps)


async def _refreshes(request: web.Request) -> web.Response:
    records = request.app[EMULATOR_STATE].refreshes
    return web.json_response([record.to_json() for record in records], dumps=dumps)


async def _signin_wall(request: web.Request) -> web.Response:
    try:
        mode = (await _object(request)).get("mode")
        if mode not in _WALL_MODES:
            raise _Refused(400, f"mode must be one of {', '.join(_WALL_MODES)}")
    except _Refused as exc:
        return _refused(exc)
    request.app[EMULATOR_STATE].logins.signin_wall = mode
    return web.json_response({"ok": True})


async def _challenge(request: web.Request) -> web.Response:
    try:
        body = await _object(request)
        login = _login(request, body)
        times, on = body.get("times", 1), body.get("on", "writes")
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            raise _Refused(400, "times must be a non-negative integer")
        if on not in ("writes", "refresh"):
            raise _Refused(400, 'on must be "writes" or "refresh"')
    except _Refused as exc:
        return _refused(exc)
    if on == "writes":
        login.challenge_writes = times
    else:
        login.challenge_refreshes = times
    return web.json_response({"ok": True, "login": login.id})


async def _require_bx(request: web.Request) -> web.Response:
    try:
        body = await _object(request)
        login = _login(request, body)
        on = body.get("on", True)
        if not isinstance(on, bool):
            raise _Refused(400, "on must be true or false")
    except _Refused as exc:
        return _refused(exc)
    login.requires_bx = on
    return web.json_response({"ok": True, "login": login.id})
