"""The ``[operator]`` tables of ``--config``: mode, relay keys, Qwen tokens.

Everything is parsed and checked before any of it is used, so a bad file is
rejected whole at start (and on SIGHUP the old settings stay). Errors name the
line and the field, through the ``fail`` callable of ``config_file``.

    [operator]
    mode = "pool"                     # passthrough (default) | pool | both
    admin_keys = ["sha256:<hex>"]     # optional: keys that may read /status (qwen-relay hash-key)

    [[operator.keys]]
    name = "team"
    hash = "sha256:<hex>"             # qwen-relay hash-key < key.txt
    models = ["qwen-max-latest"]      # optional; absent = every model
    rpm = 60                          # optional requests per minute
    max_concurrent = 4                # optional requests in flight

    [operator.tokens]
    file = "/etc/qwen-relay/tokens"   # one per line, mode 0600; or list = ["…"]

    [[operator.accounts]]             # a login that stays signed in (see relay/accounts)
    name = "main"
    cookies = "token=eyJ…; refresh_token=…; acw_tc=…"
    bx_ua = "…"                       # optional, sent on writes; also bx_umidtoken, bx_v
    proxy = "socks5://127.0.0.1:1080" # optional egress of this account

``accounts_file = "/etc/qwen-relay/accounts.toml"`` in ``[operator]`` reads the
``[[operator.accounts]]`` tables from a file of their own (mode 0600, like the
tokens file), which ``qwen-relay login`` writes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "AccountSpec", "KeySpec", "OperatorConfig", "Reload", "Secret", "check_private_file",
           "hash_key", "parse_accounts", "parse_operator", "with_env"]

MODES = ("passthrough", "pool", "both")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: a token goes into an upstream header: printable ASCII without spaces.
_TOKEN = re.compile(r"^[!-~]{1,8192}$")

#: ``fail(field, message)`` builds the error naming the file, line and field.
Fail = Callable[..., Exception]


class Secret:
    """A string that never shows itself in ``repr`` or ``str`` (tokens)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a relay key, the form the config file stores."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    #: the 32-byte SHA-256 digest of the key; the key itself is never stored.
    digest: bytes = field(repr=False)
    #: None allows every model.
    models: frozenset[str] | None = None
    rpm: int | None = None
    max_concurrent: int | None = None
    #: thinking for this key's requests without a switch (``auto``/``off``/``on``); None: --default-thinking.
    thinking: str | None = None
    #: ``cache = false``: this key's translations neither read nor fill the translation cache
    #: (a customer whose texts must not be kept, even hashed).
    cache: bool = True


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One ``[[operator.accounts]]`` entry: a browser login the relay keeps signed in."""

    name: str
    #: the browser's Cookie header for chat.qwen.ai: ``token=…; refresh_token=…; acw_tc=…``.
    cookies: Secret = field(repr=False)
    #: the browser bundle of that login, sent on writes (docs/qwen-protocol.md §7.1).
    bx_ua: Secret | None = field(default=None, repr=False)
    bx_umidtoken: Secret | None = field(default=None, repr=False)
    bx_v: str | None = None
    #: this account's egress (http://, https:// or socks5://; may hold user:pass).
    proxy: Secret | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    mode: str = "passthrough"
    keys: tuple[KeySpec, ...] = ()
    tokens: tuple[Secret, ...] = field(default=(), repr=False)
    accounts: tuple[AccountSpec, ...] = ()
    #: ``[operator] accounts_file``: where the accounts come from, and ``login`` writes.
    accounts_file: str | None = None
    #: ``[operator] admin_keys``: SHA-256 digests of the keys that may read /status (relay/status).
    admin_keys: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"operator mode must be one of {', '.join(MODES)}")
        if self.mode != "passthrough" and not self.tokens and not self.accounts:
            raise ValueError(f"operator mode {self.mode!r} needs Qwen accounts or tokens "
                             "([[operator.accounts]], [operator.tokens] list/file or QWEN_RELAY_TOKENS)")
        if self.mode == "pool" and not self.keys:
            raise ValueError("operator mode 'pool' needs at least one [[operator.keys]] entry")


#: re-reads the operator settings (SIGHUP); raises ValueError for a bad file.
Reload = Callable[[], OperatorConfig]


def parse_operator(data: Any, fail: Fail, line_in_key: Callable[[int, str], str]) -> OperatorConfig:
    """Build the OperatorConfig from the parsed ``[operator]`` table.

    ``line_in_key(index, field)`` locates a field of the index-th ``[[operator.keys]]``.
    """
    if not isinstance(data, dict):
        raise fail("operator", "must be a table")
    unknown = set(data) - {"mode", "keys", "tokens", "accounts", "accounts_file", "admin_keys"}
    if unknown:
        raise fail(f"operator.{min(unknown)}",
                   "unknown setting (expected mode, keys, tokens, accounts, accounts_file or admin_keys)")
    mode = data.get("mode", "passthrough")
    if mode not in MODES:
        raise fail("operator.mode", f"must be one of {', '.join(MODES)}")
    raw_keys = data.get("keys", [])
    if not isinstance(raw_keys, list):
        raise fail("operator.keys", "must be an array of tables ([[operator.keys]])")
    keys = tuple(_key(item, index, fail, line_in_key) for index, item in enumerate(raw_keys))
    names = [key.name for key in keys]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise _key_error(fail, line_in_key, index, "name", f"duplicate key name {name!r}")
    digests = [key.digest for key in keys]
    for index, digest in enumerate(digests):
        if digest in digests[:index]:
            raise _key_error(fail, line_in_key, index, "hash", "the same key is configured twice")
    tokens = _tokens(data.get("tokens", {}), fail)
    accounts = parse_accounts(data.get("accounts", []), fail)
    accounts_file = data.get("accounts_file")
    if accounts_file is not None:
        if not isinstance(accounts_file, str) or not accounts_file:
            raise fail("operator.accounts_file", "must be a path")
        accounts += _accounts_from_file(accounts_file, fail)
    names = [account.name for account in accounts]
    duplicate = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if duplicate is not None:
        raise fail("operator.accounts", f"duplicate account name {duplicate!r}")
    admin_keys = _admin_keys(data.get("admin_keys", []), set(digests), fail)
    try:
        return OperatorConfig(mode=mode, keys=keys, tokens=tokens, accounts=accounts, accounts_file=accounts_file,
                              admin_keys=admin_keys)
    except ValueError as exc:
        raise fail("operator.mode", str(exc)) from exc


def with_env(config: OperatorConfig, environ: Mapping[str, str], prefix: str) -> OperatorConfig:
    """Apply ``<prefix>MODE`` and ``<prefix>TOKENS`` (comma-separated) over the file."""
    mode = environ.get(prefix + "MODE", "").strip() or config.mode
    tokens = config.tokens
    raw = environ.get(prefix + "TOKENS", "")
    if raw.strip():
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        for number, part in enumerate(parts, 1):
            if not _TOKEN.match(part):
                raise ValueError(f"{prefix}TOKENS: token {number} is not printable ASCII without spaces")
        if len(set(parts)) != len(parts):
            raise ValueError(f"{prefix}TOKENS: the same token is listed twice")
        tokens = tuple(Secret(part) for part in parts)
    if mode not in MODES:
        raise ValueError(f"{prefix}MODE must be one of {', '.join(MODES)}")
    return OperatorConfig(mode=mode, keys=config.keys, tokens=tokens, accounts=config.accounts,
                          accounts_file=config.accounts_file, admin_keys=config.admin_keys)


def _admin_keys(raw: Any, relay_keys: set[bytes], fail: Fail) -> tuple[bytes, ...]:
    """``admin_keys = ["sha256:…", …]``: the digests of the keys that may read the status page.

    Apart from the relay keys: a key that could both call the API and read every
    key's usage would make any leaked client key an operator's key.
    """
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise fail("operator.admin_keys", "must be an array of 'sha256:<hex>' strings (qwen-relay hash-key)")
    digests: list[bytes] = []
    for number, item in enumerate(raw, 1):
        if not _HASH.match(item):
            raise fail("operator.admin_keys",
                       f"entry {number} must be 'sha256:' and 64 lowercase hex digits (qwen-relay hash-key)")
        digest = bytes.fromhex(item[7:])
        if digest in digests:
            raise fail("operator.admin_keys", f"entry {number} repeats an earlier one")
        if digest in relay_keys:
            raise fail("operator.admin_keys", f"entry {number} is also a relay key ([[operator.keys]]); "
                                              "an admin key must be a key of its own")
        digests.append(digest)
    return tuple(digests)


def _key_error(fail: Fail, line_in_key: Callable[[int, str], str], index: int, name: str,
               message: str) -> Exception:
    return fail(f"operator.keys[{index}].{name}", message, line=line_in_key(index, name))


def _key(item: Any, index: int, fail: Fail, line_in_key: Callable[[int, str], str]) -> KeySpec:
    def error(name: str, message: str) -> Exception:
        return _key_error(fail, line_in_key, index, name, message)

    if not isinstance(item, dict):
        raise error("", "must be a table")
    unknown = set(item) - {"name", "hash", "models", "rpm", "max_concurrent", "thinking", "cache"}
    if unknown:
        raise error(min(unknown),
                    "unknown field (expected name, hash, models, rpm, max_concurrent, thinking, cache)")
    cache = item.get("cache", True)
    if not isinstance(cache, bool):
        raise error("cache", "must be true or false")
    thinking = item.get("thinking")
    if thinking is not None and thinking not in ("auto", "off", "on"):
        raise error("thinking", "must be \"auto\", \"off\" or \"on\"")
    name = item.get("name", f"key{index + 1}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise error("name", "must be 1-64 characters of letters, digits, '_', '.' or '-'")
    digest = item.get("hash")
    if not isinstance(digest, str) or not _HASH.match(digest):
        raise error("hash", "must be 'sha256:' and 64 lowercase hex digits (qwen-relay hash-key)")
    models = item.get("models")
    if models is not None and (not isinstance(models, list) or not models
                               or not all(isinstance(m, str) and m for m in models)):
        raise error("models", "must be a non-empty array of model ids (leave it out to allow all)")
    limits: dict[str, int | None] = {}
    for field_name in ("rpm", "max_concurrent"):
        value = item.get(field_name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise error(field_name, "must be a positive integer (leave it out for no limit)")
        limits[field_name] = value
    return KeySpec(name=name, digest=bytes.fromhex(digest[7:]),
                   models=frozenset(models) if models is not None else None,
                   rpm=limits["rpm"], max_concurrent=limits["max_concurrent"], thinking=thinking,
                   cache=cache)


def _tokens(data: Any, fail: Fail) -> tuple[Secret, ...]:
    if not isinstance(data, dict):
        raise fail("operator.tokens", "must be a table with list = [...] or file = \"path\"")
    unknown = set(data) - {"list", "file"}
    if unknown:
        raise fail(f"operator.tokens.{min(unknown)}", "unknown setting (expected list or file)")
    if "list" in data and "file" in data:
        raise fail("operator.tokens.file", "give list or file, not both")
    values: list[str]
    if "file" in data:
        path = data["file"]
        if not isinstance(path, str) or not path:
            raise fail("operator.tokens.file", "must be a path")
        try:
            values = read_tokens_file(path)
        except ValueError as exc:
            raise fail("operator.tokens.file", str(exc)) from exc
    else:
        raw = data.get("list", [])
        if not isinstance(raw, list) or not all(isinstance(token, str) for token in raw):
            raise fail("operator.tokens.list", "must be an array of strings")
        values = raw
    for number, token in enumerate(values, 1):
        if not _TOKEN.match(token):
            # The token itself is never quoted: the error goes to logs.
            raise fail("operator.tokens", f"token {number} is not printable ASCII without spaces")
    if len(set(values)) != len(values):
        raise fail("operator.tokens", "the same token is listed twice")
    return tuple(Secret(token) for token in values)


def check_private_file(path: str) -> None:
    """Refuse a secrets file that group or others may access.

    A token or accounts file readable by others leaks every account it holds, so
    the relay refuses it (as ssh refuses a private key with loose permissions).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if os.name == "posix" and info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ValueError(f"{path} has mode {mode:04o}; it holds secrets and must not be accessible by "
                         f"group or others (chmod 600 {path})")


def read_tokens_file(path: str) -> list[str]:
    """One token per line ('#' comments and blank lines skipped); owner-only access."""
    check_private_file(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read as UTF-8 text") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


_ACCOUNT_FIELDS = ("name", "cookies", "bx_ua", "bx_umidtoken", "bx_v", "proxy")
_PROXY_SCHEMES = ("http://", "https://", "socks5://", "socks5h://")


def parse_accounts(raw: Any, fail: Fail, where: str = "operator.accounts") -> tuple[AccountSpec, ...]:
    """The ``[[operator.accounts]]`` tables; secrets are never quoted in an error."""
    if not isinstance(raw, list):
        raise fail(where, "must be an array of tables ([[operator.accounts]])")
    accounts = []
    for index, item in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise fail(here, "must be a table")
        unknown = set(item) - set(_ACCOUNT_FIELDS)
        if unknown:
            raise fail(f"{here}.{min(unknown)}", f"unknown field (expected {', '.join(_ACCOUNT_FIELDS)})")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"{here}.name", "must be 1-64 characters of letters, digits, '_', '.' or '-'")
        values: dict[str, str] = {}
        for key in _ACCOUNT_FIELDS[1:]:
            value = item.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value or not all(" " <= ch <= "~" for ch in value):
                raise fail(f"{here}.{key}", "must be a non-empty one-line ASCII string")
            values[key] = value
        cookies = values.get("cookies", "")
        if not any(part.strip().startswith(("token=", "refresh_token=")) for part in cookies.split(";")):
            raise fail(f"{here}.cookies", "must be the browser's Cookie header, with token= and/or "
                                          "refresh_token= in it")
        proxy = values.get("proxy")
        if proxy is not None and not proxy.startswith(_PROXY_SCHEMES):
            raise fail(f"{here}.proxy", "must start with http://, https:// or socks5://")
        accounts.append(AccountSpec(
            name=name, cookies=Secret(cookies),
            bx_ua=Secret(values["bx_ua"]) if "bx_ua" in values else None,
            bx_umidtoken=Secret(values["bx_umidtoken"]) if "bx_umidtoken" in values else None,
            bx_v=values.get("bx_v"), proxy=Secret(proxy) if proxy else None))
    return tuple(accounts)


def _accounts_from_file(path: str, fail: Fail) -> tuple[AccountSpec, ...]:
    """The ``[[operator.accounts]]`` tables of an accounts file (mode 0600)."""
    import tomllib

    try:
        check_private_file(path)
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # TOMLDecodeError is a ValueError
        raise fail("operator.accounts_file", str(exc)) from exc
    operator = data.get("operator", {})
    if set(data) - {"operator"} or not isinstance(operator, dict) or set(operator) - {"accounts"}:
        raise fail("operator.accounts_file", f"{path} may hold only [[operator.accounts]] tables")
    return parse_accounts(operator.get("accounts", []), fail, where=f"{path}: operator.accounts")
