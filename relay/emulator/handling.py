"""What every emulator endpoint shares: app keys, auth, error answers, fault flow.

The v1 routes (``routes_v1.py``), the v2 routes (``routes_v2.py``) and the gateway
middleware (``server.py``) all answer faults and errors through these helpers, so a
fault means the same bytes whichever dialect hit it.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from relay.emulator.catalogue import ModelCaps
from relay.emulator.config import EmulatorConfig
from relay.emulator.directive import HTTP_FAULTS, NO_DIRECTIVE, Directive
from relay.emulator.faults import (
    ACTUAL_STATUS_HEADER,
    SLOW_DRIBBLE_DELAY_MS,
    UNAUTHORIZED_DETAIL,
    http_fault,
    v2_error_body,
)
from relay.emulator.logins import Access
from relay.emulator.playback import stall
from relay.emulator.request import Features
from relay.emulator.script import DEFAULT_SOURCES
from relay.emulator.state import EmulatorState, RequestRecord

__all__ = [
    "EMULATOR_CONFIG",
    "EMULATOR_RECORD",
    "EMULATOR_STATE",
    "HANDLERS",
    "applied_fault",
    "delay_s",
    "detail",
    "dumps",
    "is_authorized",
    "judge_access",
    "pre_stream",
    "read_json",
    "reject",
    "respond",
    "search_sources",
    "token",
    "unauthorized_v1",
    "v2_error",
    "v2_token",
]

EMULATOR_STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
EMULATOR_CONFIG: web.AppKey[EmulatorConfig] = web.AppKey("emulator_config", EmulatorConfig)
HANDLERS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("emulator_handlers", set)
# The request's log record, made by the gateway middleware before any handler runs.
EMULATOR_RECORD: web.RequestKey[RequestRecord] = web.RequestKey("emulator_record", RequestRecord)

# Real UTF-8 rather than \u escapes, as the service sends.
dumps = functools.partial(json.dumps, ensure_ascii=False)


def token(request: web.Request) -> str | None:
    """Read the Bearer token, or the web app's ``token`` cookie as a fallback (§1)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get("token") or None


def v2_token(request: web.Request, config: EmulatorConfig) -> str | None:
    """The token a v2 write is judged by: the cookie when strict (§7.1), else either."""
    if config.strict:
        return request.cookies.get("token") or None
    return token(request)


def is_authorized(value: str | None, config: EmulatorConfig) -> bool:
    if not value or value in config.expired_tokens:
        return False
    return config.valid_tokens is None or value in config.valid_tokens


def judge_access(request: web.Request, value: str | None) -> Access:
    """Judge a token: an emulator JWT by its signature, ``exp`` and login (``logins.py``);
    any other token by the pre-login rules of :func:`is_authorized`."""
    verdict = request.app[EMULATOR_STATE].logins.judge(value)
    if verdict is not None:
        return verdict
    return Access("ok" if is_authorized(value, request.app[EMULATOR_CONFIG]) else "bad_token")


async def read_json(request: web.Request) -> Any:
    """Decode the body; raise ValueError if it is not JSON."""
    return json.loads(await request.read())


def respond(record: RequestRecord, status: int, payload: Any) -> web.Response:
    record.status = status
    return web.json_response(payload, status=status, dumps=dumps)


def detail(record: RequestRecord, status: int, message: str) -> web.Response:
    """Answer in the Open-WebUI error shape the v1 service uses (§2.5 [I])."""
    return respond(record, status, {"detail": message})


def unauthorized_v1(record: RequestRecord) -> web.Response:
    return detail(record, 401, UNAUTHORIZED_DETAIL)


def v2_error(
    record: RequestRecord, actual_status: int, code: str, details: str | None = None, num: int | None = None
) -> web.Response:
    """Answer HTTP 200 with the real status in ``x-actual-status-code`` (§4.5 [C])."""
    record.status = 200
    return web.json_response(
        v2_error_body(code, details, num),
        status=200,
        headers={ACTUAL_STATUS_HEADER: str(actual_status)},
        dumps=dumps,
    )


def reject(record: RequestRecord, rule: str) -> web.Response:
    """Answer a request a strict rule refused with the risk-control JSON (§7.5)."""
    record.rejected = rule
    return fault_response(record, "risk_control", NO_DIRECTIVE)


def fault_response(record: RequestRecord, fault: str, directive: Directive) -> web.Response:
    spec = http_fault(fault, directive.retry_after, directive)
    headers = dict(spec.headers)
    if spec.content_type is not None:
        headers["Content-Type"] = spec.content_type
    record.status = spec.status
    return web.Response(status=spec.status, body=spec.body, headers=headers)


def applied_fault(
    state: EmulatorState, record: RequestRecord, directive: Directive, has_directive: bool
) -> str | None:
    """Count the attempt and return the fault if ``fail_times`` still allows it."""
    if not has_directive:
        return None
    record.directive = dict(directive.source)
    record.attempt = state.count_attempt(directive.counter_key())
    fault = directive.effective_fault
    if fault is None or (directive.fail_times is not None and record.attempt > directive.fail_times):
        return None
    record.fault = fault
    return fault


async def pre_stream(
    request: web.Request,
    state: EmulatorState,
    record: RequestRecord,
    directive: Directive,
    fault: str | None,
    *,
    stream: bool,
) -> web.StreamResponse | None:
    """Apply what happens before any answer: waits and HTTP faults; None = go on.

    Without a stream there are no headers to send first, so every stall waits here.
    """
    try:
        if directive.ttfb_ms > 0:
            await stall(request, directive.ttfb_ms / 1000)
        is_late_stall = fault in ("stall_headers", "stall_mid")
        if fault == "stall_before" or (is_late_stall and not stream):
            await stall(request, directive.stall_s)
    except ConnectionResetError:
        state.client_gone(record)
        return web.Response(status=204)  # never delivered: nobody is listening
    if fault in HTTP_FAULTS:
        return fault_response(record, fault, directive)
    return None


def delay_s(directive: Directive, fault: str | None, config: EmulatorConfig) -> float:
    """The gap between events: the directive's, slow_dribble's, or the default."""
    delay_ms = directive.delay_ms
    if delay_ms is None:
        delay_ms = SLOW_DRIBBLE_DELAY_MS if fault == "slow_dribble" else config.default_delay_ms
    return delay_ms / 1000


def search_sources(
    features: Features, directive: Directive, caps: ModelCaps
) -> tuple[Mapping[str, Any], ...] | None:
    """The search results to send, or None when the request did not ask for search.

    [I] Directive ``sources`` are sent for any model; the default two only for a
    model whose ``chat_type`` lists ``search`` (the notes do not say what the
    service does for the others).
    """
    if not features.is_search:
        return None
    if directive.sources is not None:
        return directive.sources
    return DEFAULT_SOURCES if caps.can_search else None
