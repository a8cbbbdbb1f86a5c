"""AppKeys: the typed slots where make_app keeps the relay's shared objects."""

from __future__ import annotations

from aiohttp import web

from .calls import Calls
from .config import Config
from .deadline import Deadlines
from .lifecycle import Lifecycle
from .limits import ConcurrencyGate
from .metrics import Metrics
from .models_cache import ModelsCache
from .operator import Operator
from .status import StatusBoard
from .translate.cache import ItemCache
from .upstream import Egress, UpstreamClient

__all__ = ["CALLS", "CONFIG", "EGRESS", "GATE", "LIFECYCLE", "METRICS", "MODELS", "NONSTREAM_DEADLINES", "OPERATOR", "POOL_MODELS", "STATUS",
           "TRANSLATION_CACHE", "UPSTREAM"]

CONFIG = web.AppKey("config", Config)
#: the dialect's calls over the transport (set on startup, once the origin is known).
CALLS = web.AppKey("calls", Calls)
GATE = web.AppKey("gate", ConcurrencyGate)
UPSTREAM = web.AppKey("upstream", UpstreamClient)
#: the ways out (direct, proxies) every upstream client of the app sends through.
EGRESS = web.AppKey("egress", Egress)
MODELS = web.AppKey("models", ModelsCache)
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
OPERATOR = web.AppKey("operator", Operator)
#: operator mode: one model list for the whole token pool (one upstream call per TTL).
POOL_MODELS = web.AppKey("pool_models", ModelsCache)
#: --nonstream-deadline for every non-stream request, on one ticker.
NONSTREAM_DEADLINES = web.AppKey("nonstream_deadlines", Deadlines)
#: --translation-cache: None when it is off.
TRANSLATION_CACHE: web.AppKey[ItemCache | None] = web.AppKey("translation_cache")
#: usage records and the upstream's last hour, for /status (relay/status).
STATUS = web.AppKey("status", StatusBoard)
