"""Config: one frozen dataclass, built once by ``cli`` and passed explicitly.

Nothing reads the environment or the config at import time; ``make_app``
stores the Config under an AppKey. Each default carries its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .operator.config import OperatorConfig

__all__ = ["DEFAULT_AUTH_ORIGIN", "DEFAULT_MAX_UPSTREAM_BODY_BYTES", "DIALECT_NAMES", "EMULATOR_UPSTREAM", "LOG_LEVELS", "LOOPS", "PROXY_SCHEMES", "TRANSLATION_CACHES", "Config", "Images", "Limits", "Timeouts", "WebClient", "proxy_problem", "zone"]

#: ``--upstream emulator`` starts the bundled Qwen Chat emulator in-process.
EMULATOR_UPSTREAM = "emulator"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DIALECT_NAMES = ("qwen-v1", "qwen-phase", "qwen-v2")
LOOPS = ("auto", "asyncio", "uvloop")
TRANSLATION_CACHES = ("memory", "redis", "off")
#: egress proxies the relay can use: HTTP CONNECT (``https``: TLS to the proxy) and SOCKS5
#: (``socks5h``: the proxy resolves the name).
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
#: Qwen Chat's sign-in and refresh host since 2026-09-30 (docs/qwen-protocol.md §7.1).
DEFAULT_AUTH_ORIGIN = "https://auth.qwen.ai"
#: above ~128 KB of encoded JSON a completion gets risk control (§7.3 [C]); a margin below.
DEFAULT_MAX_UPSTREAM_BODY_BYTES = 120_000


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream time limits; none of them caps a whole stream."""

    #: connect + first upstream byte, and the longest silent gap inside a stream.
    #: 30 s is the original Worker's figure, which users already tuned clients to.
    upstream_s: float = 30.0
    #: first retry waits about this long, doubling each attempt (with full jitter).
    backoff_base_s: float = 0.25
    #: no single backoff wait (nor an honoured Retry-After) exceeds this.
    backoff_max_s: float = 8.0
    #: a client must deliver its whole request body within this (slowloris guard).
    client_body_s: float = 30.0
    #: a request that finds the relay full waits this long for a slot before its 429:
    #: Immersive Translate fires bursts and turns every 429 into a failed paragraph.
    queue_s: float = 10.0
    #: a non-stream answer (or its error) is sent within this; Immersive gives up at ~100 s.
    nonstream_deadline_s: float = 95.0
    #: a ``: keep-alive`` comment goes to a stream's client after this much upstream
    #: silence, so proxies and clients do not time out during long thinking.
    keepalive_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and counts that keep one request from hurting the others."""

    #: in-flight chat completions, streams included until their last byte.
    max_concurrency: int = 100
    #: a client request body over this gets 413 (10 MiB fits a base64 image).
    max_body_bytes: int = 10 * 1024 * 1024
    #: the longest upstream SSE line (or non-stream JSON body) we buffer.
    max_line_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebClient:
    """The web app the relay speaks as (qwen-v2): every value may drift, so each is a setting."""

    #: the web app's ``version`` header: without it writes answer ``Bad_Request`` (§7.2 [S]).
    version: str = "0.3.12"
    #: IANA zone of the ``timezone`` header (the JS ``Date().toString()`` form).
    timezone: str = "UTC"
    #: None: a current Chrome on Windows; otherwise this, with matching client hints.
    user_agent: str | None = None
    #: send ``Authorization: Bearer`` beside the ``token`` cookie, as web bundle 0.3.x does.
    bearer: bool = True
    #: ``[upstream] cookies``: sent with every call, beside ``token=`` (``Cookie`` header form).
    cookies: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _require(bool(self.version.strip()) and self.version.isprintable(),
                 "--web-version must be a printable version string")
        _require(not any(ch in self.cookies + (self.user_agent or "") for ch in "\r\n\0"),
                 "[upstream] cookies and user_agent must be one line")
        try:
            zone(self.timezone)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"[upstream] timezone: unknown IANA time zone {self.timezone!r}") from exc


#: ``[upstream] oss_signing``: how uploads to Qwen Chat's OSS bucket are signed (QWEN_IMAGES.md §1.3).
OSS_SIGNINGS = ("v4", "v1")


@dataclass(frozen=True, slots=True)
class Images:
    """Image input (uploads) and output (``/v1/images/*``), issue 20."""

    #: ``--fetch-image-urls``: download ``http(s)`` image URLs of a request (public addresses
    #: only) to upload them; off, such a URL is refused, since fetching it lets a client
    #: make the relay reach any host.
    fetch_urls: bool = False
    #: an upload is re-used this long per (account, bytes): agents resend the same screenshot
    #: every turn; 600 s stays well inside a working session and frees the memory soon after.
    upload_cache_ttl_s: float = 600.0
    #: most images per ``/v1/images/*`` request: each is a chat of its own (~20 s, one credit).
    max_n: int = 4
    #: the chat model of a generation when the request names none (or an OpenAI image model).
    model: str = "qwen3-max"
    #: ``[upstream] oss_signing``: V4 (the browser SDK's today) or V1 (what other relays use).
    oss_signing: str = "v4"
    #: ``[upstream] oss_base_url``: OSS uploads go to this base URL instead (the signed
    #: resource and the ``Host`` stay the bucket's): tests, an operator's own forwarder.
    oss_base_url: str | None = None

    def __post_init__(self) -> None:
        _require(self.upload_cache_ttl_s >= 0, "--upload-cache-ttl must not be negative")
        _require(1 <= self.max_n <= 10, "--images-max-n must be between 1 and 10")
        _require(bool(self.model.strip()), "--image-model must name a model")
        _require(self.oss_signing in OSS_SIGNINGS, "[upstream] oss_signing must be \"v4\" or \"v1\"")
        _require(self.oss_base_url is None or self.oss_base_url.startswith(("http://", "https://")),
                 "[upstream] oss_base_url must be an http(s):// URL")


def zone(name: str) -> tzinfo:
    """The ``tzinfo`` of an IANA name; UTC needs no time zone database."""
    if name.upper() in ("UTC", "ETC/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError as exc:
        raise ValueError(name) from exc


#: without a ``[surfaces.anthropic.models]`` table, Claude Code's ids go to Qwen's coding model.
DEFAULT_ANTHROPIC_MODELS: tuple[tuple[str, str], ...] = (("claude-*", "qwen3-coder-plus"),)


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Qwen Chat's origin; a path prefix on it is kept. ``emulator`` = in-process demo.
    upstream: str = "https://chat.qwen.ai"
    #: which generation of the Qwen Chat web API the upstream speaks (§3–§5).
    dialect: str = "qwen-v2"
    #: put reasoning back into ``content`` as ``<think>…</think>`` for clients that want it.
    reasoning_in_content: bool = False
    #: thinking for a request with no switch: ``auto`` (the web app's Auto gear), ``off``, ``on``.
    default_thinking: str = "auto"
    #: attempts per upstream request (1 = no retry), only before the first byte.
    retries: int = 3
    models_ttl_s: float = 3600.0
    #: below this a JSON body is sent as is: compression would not pay for itself.
    compress_min_bytes: int = 512
    #: on SIGTERM, open streams get this long to finish before they are ended.
    drain_timeout_s: float = 30.0
    #: listen on this unix socket instead of host:port (nginx on the same host).
    unix: str | None = None
    #: the egress of every upstream call without a proxy of its own (``--proxy``); None: the
    #: environment's ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, else direct.
    proxy: str | None = field(default=None, repr=False)  # may carry user:password
    #: ``[upstream] ca_file``: PEM certificates trusted beside the system's (a TLS-inspecting proxy).
    ca_file: str | None = None
    #: extra upstream request headers (``--config`` ``[upstream.headers]``), e.g. ``bx-v``;
    #: they override the relay's own, name by name.
    upstream_headers: tuple[tuple[str, str], ...] = ()
    #: how the relay presents itself to Qwen Chat (qwen-v2, docs/qwen-protocol.md §7.2).
    web: WebClient = field(default_factory=lambda: WebClient())
    #: image input and output (issue 20).
    images: Images = field(default_factory=lambda: Images())
    #: a credential answered with risk control rests this long (§7.5: retrying deepens the mark).
    challenge_cooldown_s: float = 900.0
    #: a qwen-v2 completion body larger than this (encoded JSON) is refused with 400
    #: ``context_length_exceeded`` instead of being sent: above ~128 KB the service
    #: answers with risk control (§7.3 [C]); 120,000 leaves room for its own rounding.
    max_upstream_body_bytes: int = DEFAULT_MAX_UPSTREAM_BODY_BYTES
    #: keep the chats the relay creates (qwen-v2) instead of deleting them after the answer.
    keep_chats: bool = False
    #: the model of the translation endpoints (``/translate``, ``/imme``, ``/kiss``); None: the
    #: first model the caller's list offers that can answer without thinking.
    translate_model: str | None = None
    #: texts per upstream call of a translation: a model keeps 40 keys apart reliably, and
    #: Kiss Translator's own batches are at most 20, Immersive's a page's paragraphs.
    translate_batch_items: int = 40
    #: ``--translation-cache``: ``memory`` (this process), ``redis`` (--state's Redis, shared
    #: by the fleet) or ``off``. Plugins re-send a page's paragraphs on every visit.
    translation_cache: str = "memory"
    #: a cached translation is served this long: a week covers re-reading the same pages,
    #: and the prompt version in the key retires old translations sooner when it changes.
    translation_cache_ttl_s: float = 604_800.0
    #: the memory cache's bound in MiB of keys' and translations' bytes: 256 holds ~1.6 million
    #: paragraphs of ~130 characters, ~560 MB with Python's ~190 bytes per entry on top.
    translation_cache_mb: float = 256.0
    #: where accounts refresh their access tokens (§7.1); None: https://auth.qwen.ai, or
    #: the emulator itself with ``--upstream emulator``.
    auth_origin: str | None = None
    #: where rotated jars persist (0600 files); None: ``$STATE_DIRECTORY`` or ~/.local/state/qwen-relay.
    state_dir: str | None = None
    #: ``("*",)`` allows every origin: the API authenticates by header, never cookie.
    cors_origins: tuple[str, ...] = ("*",)
    log_level: str = "info"
    #: event loop: ``auto`` takes uvloop when installed (the ``speed`` extra), else asyncio.
    loop: str = "auto"
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    #: ``[operator]``: passthrough (default), or relay keys over a pool of Qwen tokens.
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    #: ``[surfaces.anthropic.models]``: client model id globs → Qwen ids, first match in file order.
    anthropic_models: tuple[tuple[str, str], ...] = DEFAULT_ANTHROPIC_MODELS
    #: the ``--config`` file, re-read for ``[operator]`` on SIGHUP.
    config_file: str | None = None
    #: worker processes sharing one listening socket; 1 = no supervisor (one core, as before).
    workers: int = 1
    #: not a flag: the supervisor's run directory where every worker's metrics meet
    #: (``relay/metrics_files.py``); None: one process, its /metrics its own.
    metrics_dir: str | None = None
    #: where key limits, token flags and model lists live: ``memory`` or a ``redis://`` URL.
    state: str = "memory"
    #: the longest a request waits on one state backend call: a few Redis round trips
    #: on a LAN, and short next to any upstream call (past it the call fails open).
    state_timeout_s: float = 0.1
    #: a Redis concurrency slot expires this long after its holder stops renewing it
    #: (renewed every third of it): how long a crashed worker can keep a key's slot.
    state_lease_s: float = 10.0
    #: after each request, keep the loop polling this many µs instead of sleeping (0 = off):
    #: lower latency at one request at a time, for CPU (see ``relay.busypoll``).
    busy_poll_us: int = 0
    #: ``--record``: write every upstream exchange, secrets replaced, as a JSON file here
    #: (``relay/upstream/recording.py``); None: nothing is recorded (the normal case).
    record_dir: str | None = None
    #: ``--usage-days``: usage per key and account per UTC day is kept this long in the state
    #: backend (/status/usage): a month, what a monthly bill or quota is checked against.
    usage_days: int = 30
    #: ``--responses-ttl``: a finished ``/v1/responses`` answer stays in the state backend this
    #: long, for ``previous_response_id`` and ``GET /v1/responses/{id}`` (0: none is kept): an
    #: hour covers the turns of a working session, and a conversation is not kept much past it.
    responses_ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "--port must be between 0 and 65535")
        _require(bool(self.upstream.strip()), "--upstream must not be empty")
        if self.upstream != EMULATOR_UPSTREAM:
            _require(
                self.upstream.startswith(("http://", "https://")),
                "--upstream must be an http(s):// origin or 'emulator'",
            )
        _require(self.dialect in DIALECT_NAMES, f"--dialect must be one of {', '.join(DIALECT_NAMES)}")
        _require(self.default_thinking in ("auto", "off", "on"), "--default-thinking must be auto, off or on")
        _require(self.retries >= 1, "--retries counts attempts and must be at least 1")
        _require(self.models_ttl_s >= 0, "--models-ttl must not be negative")
        _require(self.compress_min_bytes >= 0, "--compress-min-bytes must not be negative")
        _require(self.loop in LOOPS, f"--loop must be one of {', '.join(LOOPS)}")
        _require(self.log_level in LOG_LEVELS, f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        _require(self.drain_timeout_s >= 0, "--drain-timeout must not be negative")
        _require(self.unix is None or bool(self.unix.strip()), "--unix must be a path")
        problem = proxy_problem(self.proxy) if self.proxy is not None else None
        _require(problem is None, f"--proxy: {problem}")
        _require(self.ca_file is None or os.path.isfile(self.ca_file),
                 f"[upstream] ca_file: no such file: {self.ca_file}")
        _require(self.auth_origin is None or self.auth_origin.startswith(("http://", "https://")),
                 "--auth-origin must be an http(s):// origin")
        _require(self.state_dir is None or bool(self.state_dir.strip()), "--state-dir must be a path")
        _require(self.challenge_cooldown_s >= 0, "--challenge-cooldown must not be negative")
        _require(self.max_upstream_body_bytes >= 1024, "--max-upstream-body-bytes must be at least 1024")
        _require(1 <= self.translate_batch_items <= 1000, "--translate-batch-items must be between 1 and 1000")
        _require(self.translate_model is None or bool(self.translate_model.strip()),
                 "--translate-model must name a model")
        _require(self.translation_cache in TRANSLATION_CACHES,
                 f"--translation-cache must be one of {', '.join(TRANSLATION_CACHES)}")
        _require(self.translation_cache != "redis" or self.state != "memory",
                 "--translation-cache redis keeps translations in --state's Redis, but --state is memory: "
                 "give --state redis://host:port/db, or use --translation-cache memory")
        _require(self.translation_cache_ttl_s > 0, "--translation-cache-ttl must be positive")
        _require(self.translation_cache_mb > 0, "--translation-cache-mb must be positive")
        _require(self.timeouts.upstream_s > 0, "--timeout must be positive")
        _require(self.timeouts.client_body_s > 0, "--body-timeout must be positive")
        _require(self.timeouts.queue_s >= 0, "--queue-timeout must not be negative")
        _require(self.timeouts.nonstream_deadline_s > 0, "--nonstream-deadline must be positive")
        _require(self.timeouts.keepalive_s > 0, "--keepalive-interval must be positive")
        _require(0 <= self.busy_poll_us <= 10_000, "--busy-poll-us must be between 0 and 10000")
        _require(self.limits.max_concurrency >= 1, "--max-concurrency must be at least 1")
        _require(self.limits.max_body_bytes >= 1024, "--max-body-bytes must be at least 1024")
        _require(self.limits.max_line_bytes >= 1024, "--max-line-bytes must be at least 1024")
        _require(self.workers >= 1, "--workers must be at least 1 (or 'auto')")
        _require(self.state == "memory" or self.state.startswith(("redis://", "rediss://", "unix://")),
                 "--state must be 'memory' or a redis:// URL")
        _require(self.state_timeout_s > 0, "--state-timeout must be positive")
        _require(self.state_lease_s >= 1, "--state-lease must be at least 1 second")
        _require(1 <= self.usage_days <= 3660, "--usage-days must be between 1 and 3660")
        _require(self.responses_ttl_s >= 0, "--responses-ttl must not be negative")
        _require(bool(self.cors_origins), "--cors-origins must name at least one origin or '*'")
        _require(self.record_dir is None or bool(self.record_dir.strip()), "--record must be a directory path")
        _require(self.record_dir is None or not os.path.exists(self.record_dir) or os.path.isdir(self.record_dir),
                 f"--record: {self.record_dir} exists and is not a directory")
        # One process numbers the files of a recording; workers would interleave two counters.
        _require(self.record_dir is None or self.workers == 1, "--record needs --workers 1")

    @property
    def cors_allows_any(self) -> bool:
        return "*" in self.cors_origins


def proxy_problem(url: str) -> str | None:
    """What is wrong with a proxy URL, or None; never quotes it (it may hold a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL (expected scheme://[user:password@]host:port)"
    if parts.scheme not in PROXY_SCHEMES:
        return f"the scheme must be one of {', '.join(s + '://' for s in PROXY_SCHEMES)}"
    if not parts.hostname:
        return "the proxy URL names no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy URL is scheme://[user:password@]host:port, without a path"
    del port  # parsed only to reject a bad one
    return None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
