"""The auth host (auth.qwen.ai, §7.1) on the emulator's own listener, routed by path.

A relay is pointed at it with ``--auth-origin <emulator url>``. Routes:

- ``POST /api/v2/auths/signin`` ``{"email", "password": <sha256 hex>}`` → the
  access token in ``data`` and the jar as ``Set-Cookie`` (``token``,
  ``refresh_token`` HttpOnly for 30 days, ``acw_tc``, ``x-ap``, ``ssxmod_itna``);
  a wrong password is 200 + 401 ``Unauthorized``. Rate-walled per client
  (``signin_limit`` per ``signin_window_s`` → the WAF slider page), and a test
  switch (``/_emulator/signin_wall``) answers every sign-in with the WAF page or
  the risk-control JSON.
- ``POST /api/v1/auths/signin`` → HTTP 405, as the service answers since 2026-09 [C].
- ``GET /api/v2/auths/refresh`` with cookie ``refresh_token`` and the headers
  ``version``, ``source: web``, ``x-request-origin``, ``sec-fetch-site: same-site``
  → new tokens; the refresh token rotates and a spent one kills the login
  (``logins.py``). Every attempt is recorded (``EmulatorState.refreshes``).

It also holds what the chat host does with logins: :func:`account_gate` (pairing,
per-login challenges, the ``bx-*`` demand; run by the gateway on every v2 write)
and :func:`rotate_jar` (``chats/new`` answers ``Set-Cookie: ssxmod_itna``).

[I] choices where the notes are silent: the refresh check order is challenge
(a WAF in front: the token is not spent), headers, then the token; ``Domain`` is
left out of every cookie (the emulator is on loopback, not ``.qwen.ai``); a
malformed sign-in body is 200 + 422 ``RequestValidationError``; the rate wall
counts every sign-in attempt from a client address, walled ones included;
``x-request-origin`` may hold any origin but must be present.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from relay.emulator.handling import (
    EMULATOR_CONFIG,
    EMULATOR_RECORD,
    EMULATOR_STATE,
    read_json,
    reject,
    respond,
    v2_error,
    v2_token,
)
from relay.emulator.logins import JAR_COOKIES, Login
from relay.emulator.state import RequestRecord

__all__ = [
    "BAD_CREDENTIALS_DETAILS",
    "INVALID_HEADER_DETAILS",
    "REFRESH_MAX_AGE_S",
    "SIGNIN_WAF_PAGE",
    "account_gate",
    "add_auth_routes",
    "rotate_jar",
]

# §7.1 [C]: the refresh_token cookie lives 30 days.
REFRESH_MAX_AGE_S = 30 * 24 * 3600
BAD_CREDENTIALS_DETAILS = "Incorrect email or password"
INVALID_HEADER_DETAILS = "Invalid request header"  # §7.1 [S]
REFRESH_UNAUTHORIZED_DETAILS = "Invalid refresh token"
# The slider page's markers (§7.5 [C]); the real page is ~16 KB of script around them.
SIGNIN_WAF_PAGE = (
    "<!doctypehtml><html><head><meta charset=utf-8><title>人机验证</title>"
    "<script>window.aliyun_waf_aa='FAIL_SYS_USER_VALIDATE';var requestInfo={"
    "url:'https://auth.qwen.ai/api/v2/auths/_____tmd_____/punish?x5secdata=x5&x5step=1',"
    "x5referer:'https://chat.qwen.ai/auth'};</script><script src=//g.alicdn.com/baxia/captcha.js></script>"
    "</head><body><div id=aliyun_waf_aa class=x5sec-captcha>安全验证: please slide to verify</div>"
    "</body></html>"
).encode()


def add_auth_routes(app: web.Application) -> None:
    """Serve the auth host's paths on this app."""
    app.router.add_post("/api/v2/auths/signin", signin)
    app.router.add_get("/api/v2/auths/refresh", refresh)
    app.router.add_post("/api/v1/auths/signin", signin_v1)


def _waf_page(record: RequestRecord, rule: str) -> web.Response:
    record.rejected, record.status = rule, 200
    return web.Response(status=200, body=SIGNIN_WAF_PAGE, content_type="text/html", charset="utf-8")


def _set_cookie(response: web.StreamResponse, name: str, value: str) -> None:
    if name == "refresh_token":
        response.set_cookie(name, value, path="/", httponly=True, max_age=REFRESH_MAX_AGE_S)
    else:
        response.set_cookie(name, value, path="/")


async def signin(request: web.Request) -> web.Response:
    """``POST /api/v2/auths/signin``: walls first, then the password; a new login each time."""
    state, record = request.app[EMULATOR_STATE], request[EMULATOR_RECORD]
    book = state.logins
    is_within_rate = book.note_signin(request.remote or "")
    if book.signin_wall == "risk_control":
        return reject(record, "signin_risk_control")
    if book.signin_wall == "waf":
        return _waf_page(record, "signin_waf")
    if not is_within_rate:
        return _waf_page(record, "signin_rate")
    try:
        body = await read_json(request)
    except ValueError:
        body = None
    email = body.get("email") if isinstance(body, dict) else None
    digest = body.get("password") if isinstance(body, dict) else None
    if not isinstance(email, str) or not isinstance(digest, str):
        return v2_error(record, 422, "RequestValidationError", "body.email and body.password are required")
    if not book.check_password(email, digest):
        record.rejected = "bad_credentials"
        return v2_error(record, 401, "Unauthorized", BAD_CREDENTIALS_DETAILS)
    seed = state.create_login(email)
    login = book.logins[seed.id]
    record.login_id = login.id
    data = {"access_token": seed.access_token, "token_type": "Bearer", "expires_at": seed.expires_at,
            "id": login.id, "email": email}
    response = respond(record, 200, {"success": True, "data": data})
    _set_cookie(response, "token", seed.access_token)
    _set_cookie(response, "refresh_token", seed.refresh_token)
    for name in JAR_COOKIES:
        _set_cookie(response, name, login.jar[name])
    return response


async def signin_v1(request: web.Request) -> web.Response:
    """``POST /api/v1/auths/signin``: gone since sign-in moved to auth.qwen.ai (§7.1 [C])."""
    record = request[EMULATOR_RECORD]
    record.rejected = "signin_v1"
    return respond(record, 405, {"detail": "Method Not Allowed"})


def _has_refresh_headers(headers: Mapping[str, str]) -> bool:
    """The headers the web app sends to the auth host (§7.1 [S]); ``headers`` is case-insensitive."""
    return (
        bool(headers.get("version"))
        and headers.get("source") == "web"
        and bool(headers.get("x-request-origin"))
        and headers.get("sec-fetch-site") == "same-site"
    )


async def refresh(request: web.Request) -> web.Response:
    """``GET /api/v2/auths/refresh``: spend the refresh token for a new pair (§7.1 [S])."""
    state, record = request.app[EMULATOR_STATE], request[EMULATOR_RECORD]
    book = state.logins
    presented = request.cookies.get("refresh_token") or None
    login = book.login_of_refresh(presented) if presented else None
    record.login_id = login.id if login else None
    try:
        if login is not None and login.challenge_refreshes > 0:
            login.challenge_refreshes -= 1
            book.record_refresh(presented, login, "challenged")
            return reject(record, "challenged")
        if not _has_refresh_headers(request.headers):
            book.record_refresh(presented, login, "bad_headers")
            record.rejected = "bad_headers"
            return v2_error(record, 400, "Bad_Request", INVALID_HEADER_DETAILS)
        if presented is None:
            book.record_refresh(None, None, "unknown")
            record.rejected = "refresh_unknown"
            return v2_error(record, 401, "Unauthorized", REFRESH_UNAUTHORIZED_DETAILS)
        outcome = book.refresh(presented)
        book.record_refresh(presented, outcome.login, outcome.result)
        if outcome.login is None or outcome.result != "ok":
            record.rejected = f"refresh_{outcome.result}"
            return v2_error(record, 401, "Unauthorized", REFRESH_UNAUTHORIZED_DETAILS)
        new = outcome.login
        data = {"access_token": outcome.access_token, "refresh_token": new.refresh_token,
                "expires_at": outcome.expires_at}
        response = respond(record, 200, {"success": True, "data": data})
        _set_cookie(response, "token", outcome.access_token)
        _set_cookie(response, "refresh_token", new.refresh_token)
        return response
    finally:
        state.notify()


def account_gate(request: web.Request, record: RequestRecord) -> web.Response | None:
    """Apply the per-login rules to any v2 write; the risk-control answer, or None to go on.

    Only for an emulator JWT with a good signature (expired or dead: the WAF in
    front does not read ``exp``); notes the login and any outdated jar cookie.
    """
    state, config = request.app[EMULATOR_STATE], request.app[EMULATOR_CONFIG]
    verdict = state.logins.judge(v2_token(request, config))
    login = verdict.login if verdict is not None else None
    if login is None:
        return None
    record.login_id = login.id
    record.stale_cookies = state.logins.stale_cookies(login, request.cookies)
    rule = state.logins.write_gate(login, request.cookies, record.headers)
    if rule is None:
        return None
    record.dialect = "v2"
    return reject(record, rule)


def rotate_jar(request: web.Request, record: RequestRecord, response: web.Response) -> web.Response:
    """Give a live login's jar a new ``ssxmod_itna`` by ``Set-Cookie`` (§7.1: answers update the jar).

    [I] Every successful ``chats/new`` of an emulator-JWT login does it; a write
    that later presents the old value is only recorded (``stale_cookies``).
    """
    login: Login | None = request.app[EMULATOR_STATE].logins.logins.get(record.login_id or "")
    if login is not None and login.alive:
        _set_cookie(response, "ssxmod_itna", request.app[EMULATOR_STATE].logins.rotate_itna(login))
    return response
