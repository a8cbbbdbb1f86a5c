"""Command line: each setting declared once as flag, env var, type and help.

Precedence is flag > ``QWEN_RELAY_<NAME>`` env var > default (uvicorn's
``auto_envvar_prefix``). The result is one frozen ``Config``.

Subcommands (``SUBCOMMANDS``, which both runs them and lists them in ``--help``):
``smoke`` (check a running relay), ``bench``, ``hash-key`` (print the
``sha256:<hex>`` of a relay key read from stdin, for ``[[operator.keys]]``),
``login`` (sign an account in, into the accounts file) and ``doctor`` (check the
way to Qwen Chat and one account, step by step). ``--version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .config import DEFAULT_AUTH_ORIGIN, LOG_LEVELS, Config, Images, Limits, Timeouts, WebClient
from .config_file import ConfigFile, ConfigFileError, load_config_file
from .operator.config import OperatorConfig, hash_key, with_env

__all__ = ["ENV_PREFIX", "SUBCOMMANDS", "hash_key_main", "load_operator", "main", "parse_config"]

ENV_PREFIX = "QWEN_RELAY_"


@dataclass(frozen=True, slots=True)
class _Setting:
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _origins(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _workers(value: str) -> int:
    """A count, or ``auto``: the CPUs this process may run on (systemd's CPUAffinity included)."""
    if value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(value)


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


_DEFAULTS = Config()
_SETTINGS: tuple[_Setting, ...] = (
    _Setting("--host", str, _DEFAULTS.host, "address to listen on"),
    _Setting("--port", int, _DEFAULTS.port, "TCP port to listen on"),
    _Setting(
        "--upstream",
        str,
        _DEFAULTS.upstream,
        "Qwen Chat origin (a path prefix is kept), or 'emulator' for the offline demo",
    ),
    _Setting("--dialect", str, _DEFAULTS.dialect,
             "upstream protocol: qwen-v2 (chat.qwen.ai today), qwen-phase (mid-2025), qwen-v1 (early 2025)"),
    _Setting("--web-version", str, _DEFAULTS.web.version,
             "the Qwen Chat web app version sent as the 'version' header (qwen-v2); without the current "
             "one, writes fail with Bad_Request"),
    _Setting("--proxy", str, None,
             "egress proxy for upstream calls without their own: http://, https:// (CONNECT) or "
             "socks5:// / socks5h:// URL, user:password@ allowed; unset: HTTPS_PROXY/HTTP_PROXY/NO_PROXY"),
    _Setting("--auth-origin", str, DEFAULT_AUTH_ORIGIN,
             "where accounts refresh their access tokens (with --upstream emulator: the emulator)"),
    _Setting("--state-dir", str, None,
             "where rotated account jars are kept (0600 files); default $STATE_DIRECTORY (systemd) "
             "or ~/.local/state/qwen-relay; with --state redis:// they live in Redis"),
    _Setting("--challenge-cooldown", float, _DEFAULTS.challenge_cooldown_s,
             "seconds a credential rests after Qwen Chat answered it with risk control"),
    _Setting("--max-upstream-body-bytes", int, _DEFAULTS.max_upstream_body_bytes,
             "largest qwen-v2 completion body sent upstream (encoded JSON); over it 400 "
             "context_length_exceeded"),
    _Setting("--translate-model", str, None,
             "model of the translation endpoints (/translate, /imme, /kiss); default: the first listed "
             "model that can answer without thinking"),
    _Setting("--translate-batch-items", int, _DEFAULTS.translate_batch_items,
             "texts per upstream call of a translation request"),
    _Setting("--translation-cache", str, _DEFAULTS.translation_cache,
             "where translations of /translate, /imme and /kiss are cached: memory (this process), "
             "redis (--state's Redis, shared by every relay) or off"),
    _Setting("--translation-cache-ttl", float, _DEFAULTS.translation_cache_ttl_s,
             "seconds a cached translation is served"),
    _Setting("--translation-cache-mb", float, _DEFAULTS.translation_cache_mb,
             "bound of the memory translation cache in MiB (keys' and translations' bytes; "
             "least recently used go first)"),
    _Setting("--fetch-image-urls", _bool, _DEFAULTS.images.fetch_urls,
             "download http(s) image URLs of chat requests (public addresses only, <= 20 MB, image/*) "
             "to upload them to Qwen Chat; off: such URLs get 400 image_url_not_allowed"),
    _Setting("--upload-cache-ttl", float, _DEFAULTS.images.upload_cache_ttl_s,
             "seconds an uploaded image is re-used for the same account and bytes"),
    _Setting("--images-max-n", int, _DEFAULTS.images.max_n,
             "most images one /v1/images/generations or /edits request may ask for (n)"),
    _Setting("--image-model", str, _DEFAULTS.images.model,
             "the Qwen Chat model that generates images when a request names none (or an OpenAI one)"),
    _Setting("--keep-chats", _bool, _DEFAULTS.keep_chats,
             "keep the chats the relay creates in the Qwen Chat account instead of deleting them"),
    _Setting("--default-thinking", str, _DEFAULTS.default_thinking,
             "thinking for a request with no thinking switch: auto (the web app's Auto gear), off or on; "
             "a relay key's own 'thinking' wins"),
    _Setting("--reasoning-in-content", _bool, _DEFAULTS.reasoning_in_content,
             "put thinking into content as <think>...</think> instead of reasoning_content"),
    _Setting("--max-concurrency", int, _DEFAULTS.limits.max_concurrency,
             "chat completions in flight (streams until their last byte); over it 429"),
    _Setting("--timeout", float, _DEFAULTS.timeouts.upstream_s,
             "seconds: upstream connect + first byte, and the longest silent gap in a stream"),
    _Setting("--body-timeout", float, _DEFAULTS.timeouts.client_body_s,
             "seconds a client may take to send its request body; then 408 and the connection closes"),
    _Setting("--queue-timeout", float, _DEFAULTS.timeouts.queue_s,
             "seconds a request waits for a free slot when the relay is full, then 429 (0 = at once)"),
    _Setting("--nonstream-deadline", float, _DEFAULTS.timeouts.nonstream_deadline_s,
             "seconds within which a non-stream request is answered or failed (504)"),
    _Setting("--keepalive-interval", float, _DEFAULTS.timeouts.keepalive_s,
             "seconds of upstream silence after which a stream gets a ': keep-alive' comment"),
    _Setting("--retries", int, _DEFAULTS.retries,
             "upstream attempts before the first byte reaches the client (1 = no retry)"),
    _Setting("--models-ttl", float, _DEFAULTS.models_ttl_s, "seconds a token's model list is cached"),
    _Setting("--max-line-bytes", int, _DEFAULTS.limits.max_line_bytes,
             "longest upstream SSE line (or non-stream JSON body)"),
    _Setting("--max-body-bytes", int, _DEFAULTS.limits.max_body_bytes,
             "largest client request body; over it 413"),
    _Setting("--compress-min-bytes", int, _DEFAULTS.compress_min_bytes,
             "smallest JSON body worth compressing with br/gzip"),
    _Setting("--cors-origins", _origins, ",".join(_DEFAULTS.cors_origins),
             "comma-separated allowed browser origins, or '*'"),
    _Setting("--log-level", _log_level, _DEFAULTS.log_level, "debug, info, warning, error"),
    _Setting("--loop", str, _DEFAULTS.loop, "event loop: auto (uvloop when installed), asyncio or uvloop"),
    _Setting("--busy-poll-us", int, _DEFAULTS.busy_poll_us,
             "after each request keep the event loop polling this many µs instead of sleeping: "
             "lower latency at low load, for CPU (0 = off)"),
    _Setting("--drain-timeout", float, _DEFAULTS.drain_timeout_s,
             "seconds open streams may take to finish after SIGTERM before they are ended"),
    _Setting("--unix", str, None, "listen on this unix socket path instead of --host/--port"),
    _Setting("--workers", _workers, str(_DEFAULTS.workers),
             "worker processes sharing the listening socket, or 'auto' (one per CPU); "
             "--max-concurrency applies to each"),
    _Setting("--state", str, _DEFAULTS.state,
             "where key limits, token flags and model lists live: memory, or redis://host:port/db "
             "shared by every worker and host"),
    _Setting("--state-timeout", float, _DEFAULTS.state_timeout_s,
             "seconds a request waits on one state backend call before it fails open"),
    _Setting("--state-lease", float, _DEFAULTS.state_lease_s,
             "seconds a Redis concurrency slot outlives a relay that died holding it"),
    _Setting("--usage-days", int, _DEFAULTS.usage_days,
             "days of usage per relay key and account kept in the state backend (GET /status/usage)"),
    _Setting("--responses-ttl", float, _DEFAULTS.responses_ttl_s,
             "seconds a finished /v1/responses answer is kept in the state backend for "
             "previous_response_id and GET /v1/responses/{id} (0 = none kept)"),
    _Setting("--record", str, None,
             "write every upstream exchange, secrets replaced, as one JSON file (0600) to this "
             "directory (0700): for diagnosis, and for the emulator's replay mode"),
)


_SETTING_NAMES = frozenset(setting.dest for setting in _SETTINGS)


@dataclass(frozen=True, slots=True)
class _Subcommand:
    module: str
    function: str
    help: str


#: ``qwen-relay NAME ...``: the function that runs it (``(argv) -> exit code``, imported only then,
#: so the relay itself starts without them) and its line in ``--help``; one table, so the two agree.
SUBCOMMANDS: dict[str, _Subcommand] = {
    "smoke": _Subcommand("relay.smoke", "main",
                         "check a running relay: list the models, stream one short completion"),
    "bench": _Subcommand("relay.bench", "main",
                         "measure this build on loopback against the bundled emulator"),
    "hash-key": _Subcommand("relay.cli", "hash_key_main",
                            "print the sha256:<hex> of a relay key read from stdin, for [[operator.keys]]"),
    "login": _Subcommand("relay.login", "main",
                         "sign an account in at the auth host and write it into the accounts file"),
    "doctor": _Subcommand("relay.doctor", "main",
                          "check the way to Qwen Chat and one account, step by step"),
}


def _subcommands_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in SUBCOMMANDS.items()]
    return "subcommands ('qwen-relay NAME --help' for each):\n" + "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-relay",
        usage="qwen-relay [FLAGS]   (serve)\n       qwen-relay {" + ",".join(SUBCOMMANDS) + "} ...",
        description="OpenAI-compatible relay for the Qwen Chat web service.\n"
        "Without a subcommand it serves, set up by the flags below.\n\n" + _subcommands_help(),
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG>, "
        f"e.g. {ENV_PREFIX}MAX_CONCURRENCY=200; the flag wins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the subcommand table's lines
    )
    parser.add_argument("--version", action="version", version=f"qwen-relay {__version__}")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"TOML file with [relay] settings and [upstream.headers] (env {ENV_PREFIX}CONFIG)")
    for setting in _SETTINGS:
        shown = setting.default if not isinstance(setting.default, tuple) else ",".join(setting.default)
        help_text = f"{setting.help} (env {setting.env}; default {shown})"
        if setting.parse is _bool:  # a switch: "--flag" alone means true
            parser.add_argument(setting.flag, dest=setting.dest, default=None, nargs="?", const="true",
                                metavar="BOOL", help=help_text)
            continue
        parser.add_argument(setting.flag, dest=setting.dest, default=None, metavar=setting.dest.upper(),
                            help=help_text)
    return parser


def _resolve(parser: argparse.ArgumentParser, args: argparse.Namespace,
             environ: Mapping[str, str], from_file: Mapping[str, Any], file_name: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in _SETTINGS:
        raw = getattr(args, setting.dest)
        source = setting.flag
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], setting.env
        if raw is None and setting.dest in from_file:
            raw, source = from_file[setting.dest], f"{file_name}: [relay] {setting.dest}"
            raw = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if raw is None:
            value = setting.default
            if isinstance(value, str) and setting.parse is not str:
                value = setting.parse(value)
        else:
            try:
                value = setting.parse(raw)
            except ValueError as exc:
                parser.error(f"{source}: invalid value {raw!r} ({exc})")
        values[setting.dest] = value
    return values


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from flags, then env vars, then defaults; exit 2 on bad input."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    file = ConfigFile()
    if config_path:
        try:
            file = load_config_file(config_path, _SETTING_NAMES)
        except ConfigFileError as exc:
            parser.error(str(exc))
    v = _resolve(parser, args, environ, file.settings, config_path or "")
    try:
        operator = with_env(file.operator or OperatorConfig(), environ, ENV_PREFIX)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return Config(
            host=v["host"],
            port=v["port"],
            upstream=v["upstream"].rstrip("/"),
            dialect=v["dialect"],
            reasoning_in_content=v["reasoning_in_content"],
            default_thinking=v["default_thinking"],
            retries=v["retries"],
            models_ttl_s=v["models_ttl"],
            compress_min_bytes=v["compress_min_bytes"],
            cors_origins=v["cors_origins"],
            log_level=v["log_level"],
            loop=v["loop"],
            drain_timeout_s=v["drain_timeout"],
            busy_poll_us=v["busy_poll_us"],
            unix=v["unix"] or None,
            upstream_headers=file.headers,
            anthropic_models=_DEFAULTS.anthropic_models if file.anthropic_models is None else file.anthropic_models,
            proxy=v["proxy"] or None,
            ca_file=file.ca_file,
            web=WebClient(version=v["web_version"], **file.web),
            images=Images(fetch_urls=v["fetch_image_urls"], upload_cache_ttl_s=v["upload_cache_ttl"],
                          max_n=v["images_max_n"], model=v["image_model"], **file.images),
            challenge_cooldown_s=v["challenge_cooldown"],
            max_upstream_body_bytes=v["max_upstream_body_bytes"],
            keep_chats=v["keep_chats"],
            translate_model=v["translate_model"] or None,
            translate_batch_items=v["translate_batch_items"],
            translation_cache=v["translation_cache"],
            translation_cache_ttl_s=v["translation_cache_ttl"],
            translation_cache_mb=v["translation_cache_mb"],
            auth_origin=_auth_origin(args, environ, file.settings, v["auth_origin"]),
            state_dir=v["state_dir"] or None,
            operator=operator,
            config_file=config_path or None,
            workers=v["workers"],
            state=v["state"],
            state_timeout_s=v["state_timeout"],
            state_lease_s=v["state_lease"],
            usage_days=v["usage_days"],
            responses_ttl_s=v["responses_ttl"],
            record_dir=v["record"] or None,
            timeouts=Timeouts(upstream_s=v["timeout"], client_body_s=v["body_timeout"],
                              queue_s=v["queue_timeout"], nonstream_deadline_s=v["nonstream_deadline"],
                              keepalive_s=v["keepalive_interval"]),
            limits=Limits(
                max_concurrency=v["max_concurrency"],
                max_body_bytes=v["max_body_bytes"],
                max_line_bytes=v["max_line_bytes"],
            ),
        )
    except ValueError as exc:
        parser.error(_name_env_source(str(exc), args, environ))


def _auth_origin(args: argparse.Namespace, environ: Mapping[str, str], from_file: Mapping[str, Any],
                 value: str) -> str | None:
    """The auth origin when given anywhere; None (the default) lets ``--upstream emulator`` pick its own."""
    given = (args.auth_origin is not None or ENV_PREFIX + "AUTH_ORIGIN" in environ or "auth_origin" in from_file)
    return value.rstrip("/") if given else None


def _name_env_source(message: str, args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """Point at the env var when the bad value came from one, not from the flag."""
    for setting in _SETTINGS:
        if setting.flag in message and getattr(args, setting.dest) is None and setting.env in environ:
            shown = "***" if setting.dest == "proxy" else repr(environ[setting.env])  # may hold a password
            return f"{message} ({setting.env}={shown})"
    return message


def load_operator(path: str | None, environ: Mapping[str, str]) -> OperatorConfig:
    """Re-read the operator settings (SIGHUP): the whole file is checked, env vars applied.

    Raises ``ValueError`` (``ConfigFileError`` included) for a bad file; the caller keeps the old settings.
    """
    file = load_config_file(path, _SETTING_NAMES) if path else ConfigFile()
    return with_env(file.operator or OperatorConfig(), environ, ENV_PREFIX)


def hash_key_main(argv: Sequence[str], stdin: Any = None, stdout: Any = None) -> int:
    """``qwen-relay hash-key``: read one key from stdin, print ``sha256:<hex>``.

    From stdin rather than an argument, so the key stays out of shell history and ``ps``.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    usage = "usage: qwen-relay hash-key < keyfile   (reads the key from stdin)"
    if list(argv) in (["-h"], ["--help"]):
        print(usage, file=stdout)
        return 0
    if argv:
        print(usage, file=sys.stderr)
        return 2
    key = stdin.read().strip()
    if not key:
        print("qwen-relay hash-key: no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key), file=stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``qwen-relay`` and ``python -m relay``."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = SUBCOMMANDS.get(args[0]) if args else None
    if command is not None:
        run_command: Callable[[list[str]], int] = getattr(importlib.import_module(command.module), command.function)
        sys.exit(run_command(args[1:]))
    config = parse_config(args)  # --help and --version exit here, before the server is imported
    environ = dict(os.environ)
    from .server import run  # imported here so that --help stays fast

    def reload() -> OperatorConfig:
        return load_operator(config.config_file, environ)

    if config.workers > 1:
        from .supervisor import supervise

        sys.exit(supervise(config, reload))
    sys.exit(run(config, reload_operator=reload))
