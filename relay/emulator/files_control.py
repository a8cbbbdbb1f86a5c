"""``/_emulator/*`` hooks for the upload path (QWEN_IMAGES.md §6), for tests in or out of process.

- ``GET /_emulator/files`` → ``{"oss_url", "knobs", "grants": [...], "objects":
  [{bucket, key, size, sha256, content_type, file_id, user_id, signature_version,
  stored_at}], "generated": [...], "oss_faults": [...]}``: never a secret or a byte.
- ``POST /_emulator/files {<knob>: <value>, ...}`` sets ``UploadKnobs`` (all or none):
  ``sts_envelope`` ``"wrapped"|"flat"``, ``endpoint`` ``"test_host"|"omit"|"loopback"``,
  ``file_url`` ``"presigned"|"cdn"``, ``filetype_enum`` bool, ``sts_ttl_s`` seconds,
  ``oss_region_prefix`` ``"reject"|"accept"``, ``enforce_declared`` bool,
  ``content_array`` ``"ignore"|"accept"``, ``parse_result`` ``"success"|"failed"``,
  ``output_ttl_s`` seconds → ``{"ok": true, "knobs": {...}}``.
- ``POST /_emulator/files/expire {"what": "sts" | "links" | "all"}`` (default
  ``all``): every STS credential issued so far expires now (the PUT gets
  ``SecurityTokenExpired``), and/or every ``?key=`` link minted so far stops opening
  → ``{"ok": true, "expired_grants": n}``.
- ``POST /_emulator/oss/arm {"fault": <oss.OSS_FAULTS>, "times": 1 | null, "delay_ms": 0}``
  → the next ``times`` PUTs to the OSS stand-in get the fault (null: until reset).

``POST /_emulator/reset`` clears all of it (grants, objects, knobs, faults). A bad
request is HTTP 400 ``{"detail": …}`` naming the field, as ``/_emulator/arm`` answers.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from relay.emulator.handling import EMULATOR_STATE, dumps, read_json
from relay.emulator.oss import OSS_FAULTS
from relay.emulator.uploads import ArmedOssFault, UploadKnobs

__all__ = ["add_files_control_routes"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "sts_envelope": ("wrapped", "flat"),
    "endpoint": ("test_host", "omit", "loopback"),
    "file_url": ("presigned", "cdn"),
    "oss_region_prefix": ("reject", "accept"),
    "content_array": ("ignore", "accept"),
    "parse_result": ("success", "failed"),
}
_FLAGS = ("filetype_enum", "enforce_declared")
_SECONDS = ("sts_ttl_s", "output_ttl_s")


class _Refused(ValueError):
    pass


def add_files_control_routes(app: web.Application) -> None:
    app.router.add_get("/_emulator/files", _show)
    app.router.add_post("/_emulator/files", _set_knobs)
    app.router.add_post("/_emulator/files/expire", _expire)
    app.router.add_post("/_emulator/oss/arm", _arm_oss)


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = await read_json(request)
    except ValueError:
        raise _Refused("body must be JSON") from None
    if not isinstance(body, dict):
        raise _Refused("body must be a JSON object")
    return body


def _refused(exc: _Refused) -> web.Response:
    return web.json_response({"detail": str(exc)}, status=400)


def _knob(name: str, value: Any) -> Any:
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise _Refused(f"{name} must be one of {', '.join(_CHOICES[name])}")
    elif name in _FLAGS:
        if not isinstance(value, bool):
            raise _Refused(f"{name} must be true or false")
    elif name in _SECONDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _Refused(f"{name} must be a positive number of seconds")
        value = float(value)
    else:
        raise _Refused(f"unknown knob {name!r}; known: {', '.join(UploadKnobs.names())}")
    return value


async def _show(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR_STATE].files.to_json(), dumps=dumps)


async def _set_knobs(request: web.Request) -> web.Response:
    try:
        values = {name: _knob(name, value) for name, value in (await _object(request)).items()}
    except _Refused as exc:
        return _refused(exc)
    knobs = request.app[EMULATOR_STATE].files.knobs
    for name, value in values.items():
        setattr(knobs, name, value)
    return web.json_response({"ok": True, "knobs": knobs.to_json()})


async def _expire(request: web.Request) -> web.Response:
    try:
        what = (await _object(request)).get("what", "all")
        if what not in ("sts", "links", "all"):
            raise _Refused("what must be one of sts, links, all")
    except _Refused as exc:
        return _refused(exc)
    book = request.app[EMULATOR_STATE].files
    expired = book.expire_all() if what in ("sts", "all") else 0
    if what in ("links", "all"):
        book.links_not_before = time.time()
    return web.json_response({"ok": True, "expired_grants": expired})


async def _arm_oss(request: web.Request) -> web.Response:
    try:
        body = await _object(request)
        fault, times, delay_ms = body.get("fault"), body.get("times", 1), body.get("delay_ms", 0)
        if fault not in OSS_FAULTS:
            raise _Refused(f"fault must be one of {', '.join(OSS_FAULTS)}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise _Refused("times must be an integer >= 1 or null")
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)) or delay_ms < 0:
            raise _Refused("delay_ms must be a number >= 0")
    except _Refused as exc:
        return _refused(exc)
    request.app[EMULATOR_STATE].files.oss_faults.append(ArmedOssFault(fault, times, float(delay_ms)))
    return web.json_response({"ok": True})
