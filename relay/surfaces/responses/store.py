"""Finished responses, kept for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A record is the whole conversation up to and including the answer: the input
items of every turn of the chain (a previous response's input and output
first) and the response object. Loading one record is then enough to continue
it, however long the chain, and a link in the middle may expire without
breaking the newest.

Records live in the ``--state`` backend (``put_blob`` / ``get_blob``), so every
relay of a fleet sharing Redis can continue another's response, for
``--responses-ttl`` seconds. The memory backend bounds how many it keeps; a
record larger than ``MAX_RECORD_BYTES`` is not kept at all (logged), since a
Redis write of many megabytes would outlast ``--state-timeout`` and mark the
backend down for everyone.

Who may read a record: its owner, the relay key that created it (by name) or,
in passthrough, the Qwen token (by a SHA-256 fingerprint, never the token).
Another caller gets the same "not found" as for an id that never existed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ...jsonio import dumps, loads
from ...keys import CONFIG, OPERATOR
from ...operator.auth import Caller
from ...state import StateBackend

__all__ = ["MAX_RECORD_BYTES", "ResponseStore", "StoredResponse", "owner_of", "store_of"]

_log = logging.getLogger("relay.error")

#: a record over this (encoded JSON) is not kept: a text conversation Qwen Chat can still
#: answer is far smaller (qwen-v2 takes at most ~120 KB), so only images come near it.
MAX_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredResponse:
    owner: str
    #: every input item of the chain, this turn's last.
    input: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a follow-up continues: the input items, then this answer's output items."""
        return [*self.input, *self.response.get("output", [])]


def owner_of(caller: Caller) -> str:
    """Who a stored response belongs to: ``key:<name>``, or ``token:<sha256 prefix>`` in passthrough."""
    if caller.key is not None:
        return f"key:{caller.key.name}"
    token = caller.token or ""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class ResponseStore:
    """Records by response id in a state backend; a thin, stateless view over it."""

    __slots__ = ("_max_bytes", "_state", "_ttl_s")

    def __init__(self, state: StateBackend, ttl_s: float, max_bytes: int = MAX_RECORD_BYTES) -> None:
        self._state = state
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes

    async def save(self, owner: str, items: list[dict[str, Any]], response: dict[str, Any]) -> bool:
        """Keep the record for the TTL; False when it is not kept (too large, or --responses-ttl 0)."""
        if self._ttl_s <= 0:
            return False
        payload = dumps({"owner": owner, "input": items, "response": response})
        if len(payload) > self._max_bytes:
            _log.warning("response_not_stored", extra={"fields": {
                "response_id": response.get("id"), "bytes": len(payload), "limit_bytes": self._max_bytes}})
            return False
        await self._state.put_blob(_key(response["id"]), payload, self._ttl_s)
        return True

    async def load(self, response_id: str, owner: str) -> StoredResponse | None:
        """The record, if it exists, has not expired and belongs to ``owner``."""
        if self._ttl_s <= 0:
            return None
        payload = await self._state.get_blob(_key(response_id))
        if payload is None:
            return None
        record = loads(payload)
        if not isinstance(record, dict) or record.get("owner") != owner:
            return None
        return StoredResponse(owner=owner, input=record["input"], response=record["response"])


def store_of(app: web.Application) -> ResponseStore:
    """The app's response store: its state backend and ``--responses-ttl``."""
    return ResponseStore(app[OPERATOR].state, app[CONFIG].responses_ttl_s)


def _key(response_id: str) -> str:
    return f"response:{response_id}"
