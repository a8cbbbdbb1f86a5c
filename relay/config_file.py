"""``--config FILE``: settings and upstream headers from a TOML file.

Operators follow Qwen Chat's changes (a new ``bx-v``, a WAF cookie, another
User-Agent) by editing a file instead of waiting for a release (issue 4). The
``[relay]`` table takes any flag by its long name (``max_concurrency = 200``);
precedence is flag > env var > file > default. A malformed file is rejected at
start with the line and the field, never half-applied.

    [relay]
    dialect = "qwen-v2"
    max_concurrency = 200

    [upstream]
    cookies = "ssxmod_itna=…"          # sent in the Cookie header, beside token=
    timezone = "Asia/Shanghai"         # the ``timezone`` header's zone (IANA name)
    user_agent = "Mozilla/5.0 …"       # replaces the User-Agent and its client hints
    bearer = true                      # Authorization: Bearer beside the token cookie
    ca_file = "ca.pem"                 # trusted beside the system CAs; relative to this file
    oss_signing = "v4"                 # image uploads to Qwen's OSS: "v4" (default) or "v1"
    oss_base_url = "http://10.0.0.5:8000"  # OSS uploads sent here; Host and signature stay the bucket's

    [upstream.headers]
    "bx-v" = "2.5.36"
    "User-Agent" = "Mozilla/5.0 …"

    [surfaces.anthropic.models]        # /v1/messages: client model id globs → Qwen ids,
    "claude-*haiku*" = "qwen3-coder-flash"  # first match in file order (default: "claude-*" =
    "claude-*" = "qwen3-coder-plus"         # "qwen3-coder-plus"); other ids pass through as they are

The ``[operator]`` tables (relay keys, the Qwen token pool, the mode) are
parsed by ``relay.operator.config``; see its docstring and the README.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .operator.config import OperatorConfig, parse_operator

__all__ = ["ConfigFile", "ConfigFileError", "load_config_file"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: headers the relay sets per request; a file must not override them (cookies go in
#: ``[upstream] cookies``, merged with the credential's own ``token`` cookie).
_RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host", "cookie"})


class ConfigFileError(ValueError):
    """A config file problem, with where it is."""


@dataclass(frozen=True, slots=True)
class ConfigFile:
    #: flag name (underscores) → raw value, still to be parsed like a flag value.
    settings: dict[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    #: ``[upstream]`` settings of the web client: cookies, timezone, user_agent, bearer.
    web: dict[str, Any] = field(default_factory=dict)
    #: ``[upstream] oss_signing`` and ``oss_base_url`` (image uploads, issue 20).
    images: dict[str, Any] = field(default_factory=dict)
    #: ``[upstream] ca_file``, resolved against the file's directory; checked to exist.
    ca_file: str | None = None
    #: None when the file has no ``[operator]`` table.
    operator: OperatorConfig | None = None
    #: ``[surfaces.anthropic.models]``; None when the file has none (the default table applies).
    anthropic_models: tuple[tuple[str, str], ...] | None = None


def _line_of(text: str, key: str) -> str:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE)
    match = pattern.search(text)
    return f"line {text.count(chr(10), 0, match.start()) + 1}, " if match else ""


def _line_in_array_table(text: str, table: str, index: int, key: str) -> str:
    """``line N, `` of ``key`` inside the index-th ``[[table]]``, else of its header."""
    headers = list(re.finditer(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]", text, re.MULTILINE))
    if index >= len(headers):
        return ""
    start = headers[index].start()
    end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
    next_table = re.compile(r"^\s*\[", re.MULTILINE).search(text, headers[index].end())
    if next_table is not None:
        end = min(end, next_table.start())
    match = None
    if key:
        match = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE).search(text, start, end)
    position = match.start() if match else start
    return f"line {text.count(chr(10), 0, position) + 1}, "


def load_config_file(path: str, known_settings: frozenset[str]) -> ConfigFile:
    """Read and check the whole file before anything of it is used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: invalid TOML: {exc}") from exc

    def fail(key: str, message: str, line: str | None = None) -> ConfigFileError:
        where = _line_of(text, key.rsplit(".", 1)[-1]) if line is None else line
        return ConfigFileError(f"{path}: {where}{key}: {message}")

    def line_in_key(index: int, name: str) -> str:
        return _line_in_array_table(text, "operator.keys", index, name)

    unknown_tables = set(data) - {"relay", "upstream", "operator", "surfaces"}
    if unknown_tables:
        name = min(unknown_tables)
        raise fail(name, "unknown table (expected [relay], [upstream], [operator] and [surfaces])")
    settings: dict[str, Any] = {}
    relay = data.get("relay", {})
    if not isinstance(relay, dict):
        raise fail("relay", "must be a table")
    for key, value in relay.items():
        name = key.replace("-", "_")
        if name not in known_settings:
            raise fail(f"relay.{key}", "unknown setting")
        if isinstance(value, dict | list):
            raise fail(f"relay.{key}", "must be a string, number or boolean")
        settings[name] = value
    upstream = data.get("upstream", {})
    if not isinstance(upstream, dict):
        raise fail("upstream", "must be a table")
    headers: list[tuple[str, str]] = []
    web: dict[str, Any] = {}
    ca_file: str | None = None
    images: dict[str, Any] = {}
    for key, value in upstream.items():
        if key == "headers":
            if not isinstance(value, dict):
                raise fail("upstream.headers", "must be a table of header names to values")
            for name, header_value in value.items():
                headers.append(_header(fail, name, header_value))
        elif key in ("cookies", "timezone", "user_agent"):
            if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
                raise fail(f"upstream.{key}", "must be a one-line string")
            web[key] = value
        elif key == "ca_file":
            if not isinstance(value, str) or not value.strip():
                raise fail("upstream.ca_file", "must be the path of a PEM file")
            resolved = Path(path).parent / Path(value).expanduser()
            if not resolved.is_file():
                raise fail("upstream.ca_file", f"no such file: {resolved}")
            ca_file = str(resolved)
        elif key == "oss_signing":
            if value not in ("v4", "v1"):
                raise fail("upstream.oss_signing", 'must be "v4" or "v1"')
            images[key] = value
        elif key == "oss_base_url":
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise fail("upstream.oss_base_url", "must be an http(s):// URL")
            images[key] = value.rstrip("/")
        elif key == "bearer":
            if not isinstance(value, bool):
                raise fail("upstream.bearer", "must be true or false")
            web[key] = value
        else:
            raise fail(f"upstream.{key}", "unknown setting (expected headers, cookies, timezone, user_agent, "
                                          "bearer, ca_file, oss_signing or oss_base_url)")
    operator = parse_operator(data["operator"], fail, line_in_key) if "operator" in data else None
    anthropic_models = _anthropic_models(data["surfaces"], fail) if "surfaces" in data else None
    return ConfigFile(settings=settings, headers=tuple(headers), web=web, ca_file=ca_file, images=images,
                      operator=operator, anthropic_models=anthropic_models)


def _anthropic_models(surfaces: Any, fail: Any) -> tuple[tuple[str, str], ...] | None:
    """``[surfaces.anthropic.models]``: ``"glob" = "qwen-id"`` pairs, in file order."""
    if not isinstance(surfaces, dict) or set(surfaces) - {"anthropic"}:
        raise fail("surfaces", "only [surfaces.anthropic.models] is known")
    anthropic = surfaces.get("anthropic", {})
    if not isinstance(anthropic, dict) or set(anthropic) - {"models"}:
        raise fail("surfaces.anthropic", "only the models table is known")
    if "models" not in anthropic:
        return None
    models = anthropic["models"]
    if not isinstance(models, dict):
        raise fail("surfaces.anthropic.models", 'must be a table of "glob" = "qwen model id"')
    for pattern, qwen_id in models.items():
        if not isinstance(qwen_id, str) or not qwen_id.strip():
            raise fail(f"surfaces.anthropic.models.{pattern}", "must be a Qwen model id (a string)")
    return tuple(models.items())


def _header(fail: Any, name: str, value: Any, key: str | None = None) -> tuple[str, str]:
    where = key or f"upstream.headers.{name}"
    if not _HEADER_NAME.match(name):
        raise fail(where, "not a valid HTTP header name")
    if name.lower() in _RESERVED_HEADERS:
        raise fail(where, "set by the relay itself; cannot be overridden")
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise fail(where, "must be a one-line string")
    return name, value
