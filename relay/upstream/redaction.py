"""Redaction of a recorded exchange: one pure function, ``redact_exchange``.

``relay.upstream.recording`` hands it what it saw of one exchange (``RawExchange``)
and writes what it returns; nothing reaches the disk unredacted. Rules:

- headers ``Authorization`` (the scheme kept), ``Proxy-Authorization``,
  ``bx-ua``, ``bx-umidtoken``: the value becomes ``<redacted:sha256[:8]>``
  (``bx-v`` is a version and stays); ``Cookie`` and ``Set-Cookie`` keep each
  cookie's name (and attributes), never its value;
- JSON fields ``token``, ``access_token``, ``refresh_token`` (and their
  camelCase forms), ``password`` and ``email``, at any depth;
- any JWT and any e-mail address in any text: headers, paths, bodies;
- ids: the JSON fields ``chat_id``, ``chatId``, ``response_id``, ``id``,
  ``fid``, ``parent_id``, ``parentId``, ``childrenIds``, the ``chat_id`` (or
  another id) of a query, any uuid, and any path segment that looks like an id
  become ``h:<sha256[:12]>``: the same id hashes the same in every file, so a
  replay (``relay.emulator.replay``) still tells one chat's calls apart.

Why this differs from the letter of "hash every ``id``": in the answer of a
model list (a path ending in ``/models`` or ``/models/``) ``id`` is the public
model name clients send back as ``model``; hashed, a replayed list would name
no model the relay can be asked for. Everywhere else ``id`` is hashed.

A JSON body is re-encoded after redaction, an SSE body line by line (each
``data:`` JSON redacted), anything else has its text redacted (undecodable
bytes kept as they are). The password is replaced outright, not fingerprinted:
a fingerprint of a low-entropy secret would let a guess be checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FORMAT_VERSION", "RawExchange", "hash_id", "redact_exchange", "redact_headers", "redact_path",
           "redact_text", "slug"]

#: the format of a file; ``relay.emulator.replay`` reads it.
FORMAT_VERSION = 1
_SLUG_CHARS = 60

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
#: a path segment that is an id: a uuid, or a long run of hex (with dashes).
_ID_SEGMENT = re.compile(r"^[0-9a-fA-F-]{16,}$")
_HASHED = re.compile(r"^h:[0-9a-f]{12}$")

#: headers whose whole value is a credential.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "bx-ua", "bx-umidtoken"})
#: JSON fields (lower-cased) whose value is a credential or a person.
_SECRET_FIELDS = frozenset({"token", "access_token", "accesstoken", "refresh_token", "refreshtoken"})
_ID_FIELDS = frozenset({"chat_id", "chatId", "response_id", "id", "fid", "parent_id", "parentId", "childrenIds"})


@dataclass(slots=True)
class RawExchange:
    """One exchange as seen, before redaction: built on the loop, redacted in the executor."""

    seq: int
    origin: str
    method: str
    path: str
    request_headers: list[tuple[str, str]]
    request_body: bytes | None
    started_at: float
    started: float = field(repr=False)
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    redirects: list[tuple[int, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list, repr=False)
    size: int = 0
    truncated: bool = False
    complete: bool = False
    error: str | None = None
    duration_ms: float = 0.0


def _digest(value: str, length: int) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def _secret(value: str) -> str:
    """Stand-in for a credential: tells values apart, reveals nothing of them."""
    return f"<redacted:{_digest(value, 8)}>"


def hash_id(value: str) -> str:
    """``h:<sha256[:12]>`` of an id; an id hashed already stays as it is."""
    return value if _HASHED.match(value) else "h:" + _digest(value, 12)


def redact_text(text: str) -> str:
    """Replace JWTs, e-mail addresses and uuids in free text."""
    if "eyJ" in text:
        text = _JWT.sub(lambda m: _secret(m.group()), text)
    if "@" in text:
        text = _EMAIL.sub("<redacted:email>", text)
    if "-" in text:
        text = _UUID.sub(lambda m: hash_id(m.group()), text)
    return text


def _redact_json(value: Any, *, keep_id: bool = False) -> Any:
    if isinstance(value, dict):
        return {key: _redact_field(key, item, keep_id) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_json(item, keep_id=keep_id) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _redact_field(key: Any, value: Any, keep_id: bool) -> Any:
    name = key if isinstance(key, str) else ""
    lowered = name.lower()
    if value is None or value == "" or isinstance(value, bool):
        return value
    if lowered in _SECRET_FIELDS:
        return _secret(value) if isinstance(value, str) else "<redacted>"
    if lowered == "password":
        return "<redacted>"  # even a fingerprint would let a guess be checked
    if lowered == "email":
        return "<redacted:email>"
    if name in _ID_FIELDS and not (keep_id and name == "id"):
        if isinstance(value, list):
            return [hash_id(str(item)) if isinstance(item, str | int) else _redact_json(item) for item in value]
        if isinstance(value, str | int | float):
            return hash_id(str(value))
    return _redact_json(value, keep_id=keep_id)


def redact_path(path: str) -> str:
    """The request target with ids hashed and secrets replaced (path segments and query values)."""
    raw_path, sep, query = path.partition("?")
    segments = []
    for segment in raw_path.split("/"):
        plain = unquote(segment)
        segments.append(hash_id(plain) if _ID_SEGMENT.match(plain) or _HASHED.match(plain)
                        else quote(redact_text(plain), safe=":@!$&'()*+,;=-._~"))
    if not sep:
        return "/".join(segments)
    pairs = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        plain_name, plain = unquote(name.replace("+", " ")), unquote(value.replace("+", " "))
        redacted = _redact_field(plain_name, plain, False)
        shown = redacted if isinstance(redacted, str) else str(redacted)
        pairs.append(quote(plain_name, safe="") + (eq + quote(shown, safe=":<>") if eq else ""))
    return "/".join(segments) + "?" + "&".join(pairs)


def _redact_cookie_pairs(value: str, separator: str) -> str:
    """``a=1; b=2`` → ``a=<redacted:…>; b=<redacted:…>``: names kept, values never."""
    parts = []
    for part in value.split(separator):
        name, eq, secret = part.strip().partition("=")
        parts.append(f"{name}={_secret(secret)}" if eq and secret else part.strip())
    return (separator + " ").join(parts)


def _redact_set_cookie(value: str) -> str:
    """The cookie's value replaced; its name and attributes (Path, Max-Age, …) kept."""
    first, sep, attributes = value.partition(";")
    name, eq, secret = first.strip().partition("=")
    shown = f"{name}={_secret(secret)}" if eq and secret else first.strip()
    return shown + (sep + redact_text(attributes) if sep else "")


def redact_headers(headers: Iterable[Sequence[str]]) -> list[list[str]]:
    """Each ``[name, value]`` with its secret replaced (see the module docstring)."""
    redacted: list[list[str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in _SECRET_HEADERS:
            scheme, space, rest = value.partition(" ")
            if lowered.endswith("authorization") and space and rest:
                value = f"{scheme} {_secret(rest.strip())}"
            else:
                value = _secret(value) if value else value
        elif lowered == "cookie":
            value = _redact_cookie_pairs(value, ";")
        elif lowered == "set-cookie":
            value = _redact_set_cookie(value)
        else:
            value = redact_text(value)
        redacted.append([name, value])
    return redacted


def _is_models_path(path: str) -> bool:
    return path.partition("?")[0].rstrip("/").endswith("/models")


def _redact_body(body: bytes, *, keep_id: bool) -> bytes:
    """A body with its secrets replaced: as JSON, as SSE lines, else as text."""
    if not body:
        return body
    text = body.decode("utf-8", "surrogateescape")
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            decoded = json.loads(text)
        except ValueError:
            pass
        else:
            return json.dumps(_redact_json(decoded, keep_id=keep_id), ensure_ascii=False,
                              separators=(",", ":")).encode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if any(line.startswith("data:") for line in lines):
        return "\n".join(_redact_sse_line(line) for line in lines).encode("utf-8", "surrogateescape")
    return redact_text(text).encode("utf-8", "surrogateescape")


def _redact_sse_line(line: str) -> str:
    if line.startswith("data:"):
        payload = line[5:].strip()
        if payload[:1] in ("{", "["):
            try:
                decoded = json.loads(payload)
            except ValueError:
                pass
            else:
                return "data: " + json.dumps(_redact_json(decoded), ensure_ascii=False, separators=(",", ":"))
    return redact_text(line)


def _body_fields(body: bytes, *, as_json: bool) -> dict[str, Any]:
    """``body`` (decoded JSON) when asked and possible; else ``body_base64`` and ``text`` if UTF-8."""
    if as_json and body:
        try:
            return {"body": json.loads(body)}
        except ValueError:
            pass
    fields: dict[str, Any] = {"body_base64": base64.b64encode(body).decode("ascii")}
    try:
        fields["text"] = body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return fields


def redact_exchange(raw: RawExchange) -> dict[str, Any]:
    """The JSON of one file: what ``raw`` holds, every secret replaced. Pure: no I/O, no state."""
    path = redact_path(raw.path)
    request: dict[str, Any] = {"method": raw.method, "path": path, "headers": redact_headers(raw.request_headers)}
    if raw.request_body is not None:
        request.update(_body_fields(_redact_body(raw.request_body, keep_id=False), as_json=True))
    record: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "seq": raw.seq,
        "origin": redact_text(_without_userinfo(raw.origin)),
        "request": request,
        "response": None,
        "started_at": datetime.fromtimestamp(raw.started_at, UTC).isoformat(timespec="milliseconds"),
        "duration_ms": round(raw.duration_ms, 3),
        "complete": raw.complete,
        "truncated": raw.truncated,
    }
    if raw.status is not None:
        body = _redact_body(b"".join(raw.chunks), keep_id=_is_models_path(raw.path))
        record["response"] = {"status": raw.status, "headers": redact_headers(raw.response_headers),
                              **_body_fields(body, as_json=False)}
        if raw.redirects:
            record["response"]["redirects"] = [[status, redact_path(location)] for status, location in raw.redirects]
    if raw.error is not None:
        record["error"] = raw.error
    return record


def _without_userinfo(origin: str) -> str:
    parts = urlsplit(origin)
    return origin if "@" not in parts.netloc else origin.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)


def slug(path: str) -> str:
    """``/api/v2/chats/h:0a1b…?x=1`` → ``api-v2-chats-h-0a1b…``: a file name, from the redacted path."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", path.partition("?")[0]).strip("-")
    return (slug or "root")[:_SLUG_CHARS].rstrip("-")
