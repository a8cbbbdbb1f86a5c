"""GET /status (HTML), /status.json and /status/usage?days=N: the operator's view, admin keys only.

The key comes as ``Authorization: Bearer <key>`` or as HTTP Basic's password
(``relay/status/admin.py``). Refusals:

- no key, or one the relay does not know: 401 with ``WWW-Authenticate: Basic``,
  so a browser asks for one;
- a relay key (``[[operator.keys]]``) presented as Bearer: 403
  ``admin_key_required``: the key is valid, it just may not read this, and an
  API client should not retry with the same key;
- a relay key presented through Basic: 401 ``admin_key_required``, with
  ``WWW-Authenticate``. Why this differs from the Bearer case: a browser keeps
  sending the Basic credentials it was given for the realm and asks again only
  after a 401; a 403 would leave a user who typed the wrong key stuck until the
  browser forgets it.

The page refuses in HTML (a browser shows it), the JSON routes in the error
envelope. Every answer is ``Cache-Control: no-store``: it names keys and usage.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import AdminKeyRequired, AuthenticationFailed, InvalidRequest, RelayError
from ..jsonio import dumps
from ..keys import OPERATOR, STATUS
from ..middleware import INFO, error_response
from ..status.admin import is_admin_key, presented_key
from ..status.page import CONTENT_SECURITY_POLICY, render_error, render_page
from ..status.report import build_report, build_usage
from .common import json_response

__all__ = ["REALM", "status_json", "status_page", "status_usage"]

#: the realm of the Basic challenge (browsers show it in their prompt).
REALM = "qwen-relay"
#: the days /status/usage answers without ?days=.
_DEFAULT_USAGE_DAYS = 7
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def status_page(request: web.Request) -> web.StreamResponse:
    refusal = _refusal(request, page=True)
    if refusal is not None:
        return refusal
    app = request.app
    report = await build_report(app[OPERATOR], app[STATUS])
    return web.Response(text=render_page(report), content_type="text/html", charset="utf-8",
                        headers=_PAGE_HEADERS)


async def status_json(request: web.Request) -> web.StreamResponse:
    refusal = _refusal(request, page=False)
    if refusal is not None:
        return refusal
    app = request.app
    return _no_store(await json_response(request, dumps(await build_report(app[OPERATOR], app[STATUS]))))


async def status_usage(request: web.Request) -> web.StreamResponse:
    refusal = _refusal(request, page=False)
    if refusal is not None:
        return refusal
    app = request.app
    board = app[STATUS]
    kept = board.usage.keep_days
    raw = request.query.get("days", str(min(_DEFAULT_USAGE_DAYS, kept)))
    if not raw.isdigit() or not 1 <= int(raw) <= kept:
        raise InvalidRequest(f"days must be a whole number from 1 to {kept} (--usage-days).", param="days")
    usage = await build_usage(app[OPERATOR], board, int(raw))
    return _no_store(await json_response(request, dumps(usage)))


def _refusal(request: web.Request, *, page: bool) -> web.Response | None:
    """None for an admin key; otherwise the refusal (see the module docstring for which)."""
    operator = request.app[OPERATOR]
    presented = presented_key(request.headers.get("Authorization"))
    if presented is not None and is_admin_key(presented.key, operator.config.admin_keys):
        return None
    if presented is not None and operator.keys.find(presented.key) is not None:
        message = ("This is a relay key; the status page needs an admin key ([operator] admin_keys). "
                   "Sign in again with an admin key.")
        if presented.scheme == "bearer":
            return _refuse(request, AdminKeyRequired(message), page=page, ask=False)
        return _refuse(request, AuthenticationFailed(message, code=AdminKeyRequired.code), page=page, ask=True)
    if operator.config.admin_keys:
        message = ("The status page needs an admin key ([operator] admin_keys), as 'Authorization: Bearer "
                   "<key>' or as the password of HTTP Basic (any user name).")
    else:
        message = ("No admin key is configured: add [operator] admin_keys = [\"sha256:...\"] to the --config "
                   "file (qwen-relay hash-key prints the hash of a key).")
    return _refuse(request, AuthenticationFailed(message), page=page, ask=True)


def _refuse(request: web.Request, exc: RelayError, *, page: bool, ask: bool) -> web.Response:
    code = exc.instance_code or exc.code
    request[INFO].error_code = code
    if page:
        title = "Admin key required" if exc.http_status == 403 or code == AdminKeyRequired.code else "Sign in"
        response = web.Response(status=exc.http_status, text=render_error(exc.http_status, title, exc.message),
                                content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)
    else:
        response = _no_store(error_response(exc))
    if ask:
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return response


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    return response
