"""make_app(config): routes (each wrapped by ``relay_route``), and the resources paired by cleanup_ctx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .accounts.refresh import Refresher
from .accounts.store import AccountStore, default_state_dir
from .busypoll import BusyPoll
from .calls import Calls
from .config import DEFAULT_AUTH_ORIGIN, EMULATOR_UPSTREAM, Config
from .deadline import Deadlines
from .dialects import get_dialect
from .dialects.v2_errors import refusal as v2_refusal
from .dialects.web_headers import WebHeaders
from .handlers import anthropic, health, images, models, responses, status, translate
from .handlers.serve import serve
from .keys import (
    CALLS,
    CONFIG,
    EGRESS,
    GATE,
    LIFECYCLE,
    METRICS,
    MODELS,
    NONSTREAM_DEADLINES,
    OPERATOR,
    POOL_MODELS,
    STATUS,
    TRANSLATION_CACHE,
    UPSTREAM,
)
from .lifecycle import Lifecycle
from .limits import ConcurrencyGate
from .metrics import Metrics
from .middleware import method_not_allowed, not_found, preflight, relay_route, response_headers
from .models_cache import ModelsCache
from .operator import Operator
from .operator.logins import Logins
from .state import open_state
from .status import StatusBoard
from .surfaces import SURFACES
from .translate.cache import open_translation_cache
from .upstream import Egress, UpstreamClient
from .upstream.recording import Recorder

__all__ = ["make_app"]

#: routes whose errors are not in OpenAI's envelope: each surface's own, and Anthropic's count_tokens.
_ERROR_ENVELOPES = {path: surface.error_response for path, surface in SURFACES.items()}
_ERROR_ENVELOPES["/v1/messages/count_tokens"] = SURFACES["/v1/messages"].error_response

#: starts and stops (``emulator_started``), as server.py's ``listening`` and ``drain_*``.
_log = logging.getLogger("relay.lifecycle")

def make_app(config: Config) -> web.Application:
    """Build the relay application; resources open on startup and close on cleanup."""
    # +1 so that aiohttp never rejects first: our 413 check gives the OpenAI envelope.
    app = web.Application(client_max_size=config.limits.max_body_bytes + 1)
    app[CONFIG] = config
    app[NONSTREAM_DEADLINES] = Deadlines(config.timeouts.nonstream_deadline_s)
    gate = app[GATE] = ConcurrencyGate(config.limits.max_concurrency)
    lifecycle = app[LIFECYCLE] = Lifecycle()
    metrics = app[METRICS] = Metrics(config.metrics_dir)
    metrics.gauges.update({
        "qwen_relay_in_flight": ("Chat completions holding a concurrency slot.", lambda: gate.in_flight),
        "qwen_relay_max_concurrency": ("Concurrency slots: --max-concurrency, times the workers with --workers.",
                                       lambda: gate.capacity),
        "qwen_relay_draining": ("1 while the relay drains after SIGTERM.", lambda: int(lifecycle.draining)),
    })
    metrics.counters["qwen_relay_rejected_total"] = ("Requests refused with 429 because the relay was full.",
                                                     lambda: gate.rejected)
    # First, so cleaned up last: a worker's final counts are published after everything else closed.
    app.cleanup_ctx.append(_metrics_context)
    state = open_state(config.state, config.state_timeout_s, config.state_lease_s)
    operator = app[OPERATOR] = Operator(config.operator, state)
    metrics.collectors.append(operator.render_metrics)
    metrics.collectors.append(state.render_metrics)
    translations = app[TRANSLATION_CACHE] = open_translation_cache(
        config.translation_cache, ttl_s=config.translation_cache_ttl_s, max_mb=config.translation_cache_mb,
        state=state)
    if translations is not None:
        metrics.collectors.append(translations.render_metrics)
    app[STATUS] = StatusBoard(state, metrics, config.usage_days)
    app.cleanup_ctx.append(_upstream_context)
    # After _upstream_context, so cleaned up before it: pending usage is written before the state closes.
    app.cleanup_ctx.append(_status_context)
    # After _upstream_context (it needs the egress and the dialect): image uploads, relay/images.
    app.cleanup_ctx.append(images.images_context)
    app.on_response_prepare.append(response_headers(config))
    routes: dict[str, dict[str, Handler]] = {
        "/healthz": {"GET": health.healthz, "HEAD": health.healthz},
        "/metrics": {"GET": health.metrics},
        # The operator's view, admin keys only (relay/status): read-only, any other method 405.
        "/status": {"GET": status.status_page, "HEAD": status.status_page},
        "/status.json": {"GET": status.status_json, "HEAD": status.status_json},
        "/status/usage": {"GET": status.status_usage, "HEAD": status.status_usage},
        "/v1/models": {"GET": models.list_models, "OPTIONS": preflight},
        "/v1/models/{model:.+}": {"GET": models.retrieve_model, "OPTIONS": preflight},  # ids may hold a '/'
        # A stored /v1/responses answer (relay/surfaces/responses/store.py), to its owner only.
        "/v1/responses/{response_id}": {"GET": responses.retrieve_response, "OPTIONS": preflight},
        # The API surfaces (relay/surfaces): one handler, each surface its own wire and envelope.
        **{path: {"POST": serve(surface), "OPTIONS": preflight} for path, surface in SURFACES.items()},
        "/v1/messages/count_tokens": {"POST": anthropic.count_tokens, "OPTIONS": preflight},
        # Clients that probe the base URL (Claude Code: HEAD /).
        "/": {"GET": anthropic.root, "HEAD": anthropic.root},
        # Qwen Chat's t2i and image_edit chats (relay/images, handlers/images.py).
        "/v1/images/generations": {"POST": images.generations, "OPTIONS": preflight},
        "/v1/images/edits": {"POST": images.edits, "OPTIONS": preflight},
        # Translation plugins' own APIs (DeepLX, Immersive's and Kiss's custom APIs): handlers/translate.py.
        "/translate": {"POST": translate.deeplx, "OPTIONS": preflight},
        "/imme": {"POST": translate.immersive, "OPTIONS": preflight},
        "/kiss": {"POST": translate.kiss, "OPTIONS": preflight},
    }
    on_request = BusyPoll(config.busy_poll_us / 1e6).activity if config.busy_poll_us else None
    for path, methods in routes.items():
        for method, handler in methods.items():
            errors = _ERROR_ENVELOPES.get(path)
            app.router.add_route(method, path, relay_route(handler, path, on_request, errors))
        # Any other method: a 405 envelope naming the allowed ones (aiohttp's own is plain text).
        app.router.add_route("*", path, relay_route(method_not_allowed(",".join(sorted(methods))), path))
    # Last, so it matches only what nothing above does: a 404 envelope.
    app.router.add_route("*", "/{path:.*}", relay_route(not_found, "unmatched"))
    return app


async def _metrics_context(app: web.Application) -> AsyncIterator[None]:
    """``--workers``: publish this worker's metrics for the others to read (nothing for one process)."""
    async with app[METRICS].publishing():
        yield


async def _status_context(app: web.Application) -> AsyncIterator[None]:
    """The status board's minute sampler; on the way out, the usage still pending is written."""
    async with app[STATUS].running():
        yield


async def _upstream_context(app: web.Application) -> AsyncIterator[None]:
    """Open the upstream session (and the emulator, for the demo); close both."""
    config = app[CONFIG]
    emulator: Any = None
    origin = config.upstream
    if origin == EMULATOR_UPSTREAM:
        from .emulator import start_emulator

        emulator = await start_emulator()
        origin = emulator.url
        _log.info("emulator_started", extra={"fields": {"url": origin}})
    # No cookie jar (Egress): a Set-Cookie from Qwen Chat answering one caller must never
    # ride along on another caller's request (configured cookies go in --config headers).
    dialect = get_dialect(config.dialect, config)
    egress = app[EGRESS] = Egress.from_config(config)
    # --record: both origins' exchanges, numbered in one sequence (made here: it creates the directory).
    recorder = Recorder(config.record_dir) if config.record_dir is not None else None
    client = UpstreamClient(origin, config, app[METRICS], refusal=dialect.refusal, egress=egress,
                            recorder=recorder)
    app[UPSTREAM] = client
    calls = app[CALLS] = Calls(client, dialect, config)
    operator = app[OPERATOR]
    state = operator.state
    app[MODELS] = ModelsCache(models.fetcher(calls), config.models_ttl_s, state=state)
    app[POOL_MODELS] = ModelsCache(models.pool_fetcher(calls, operator, config.challenge_cooldown_s),
                                   config.models_ttl_s, state=state)
    # Accounts stay signed in: refreshed at the auth host (the emulator serves it too).
    auth_origin = config.auth_origin or (origin if emulator is not None else DEFAULT_AUTH_ORIGIN)
    auth_client = UpstreamClient(auth_origin, config, app[METRICS], refusal=v2_refusal, egress=egress,
                                 follow_redirects=True, recorder=recorder)
    store = AccountStore(state, config.state_dir or default_state_dir())
    refresher = Refresher(auth_client, WebHeaders(origin, config).for_refresh, store)
    logins = operator.logins = Logins(operator, refresher, store)
    await logins.start()
    try:
        yield
    finally:
        await logins.close()
        await app[MODELS].close()
        await app[POOL_MODELS].close()
        await auth_client.close()
        await client.close()
        await egress.close()
        if recorder is not None:
            await recorder.close()  # the files of the last exchanges are written before exit
        await state.close()
        app[NONSTREAM_DEADLINES].close()
        if emulator is not None:
            await emulator.close()
