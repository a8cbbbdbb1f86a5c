"""Helpers of the status page and usage tests (issue 21): a pool relay with admin keys, and HTML tables.

The relay runs in the test's loop (``relay_factory``) in front of the conftest
emulator, with two accounts signed in at the emulator (its auth host too), one
relay key and one admin key.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp

from relay.emulator import RunningEmulator
from relay.operator import OperatorConfig, Secret, hash_key
from relay.operator.config import AccountSpec, KeySpec
from tests.conftest import MODEL, RelayFactory, chat_body, directive

__all__ = ["ADMIN_KEY", "RELAY_KEY", "basic", "bearer", "chat", "pool_config", "start_pool_relay", "table_rows"]

ADMIN_KEY = "sk-admin-status-0123456789abcdef"
RELAY_KEY = "sk-relay-alice-status-0123456789"


def _digest(key: str) -> bytes:
    return bytes.fromhex(hash_key(key)[7:])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def pool_config(emulator: RunningEmulator, accounts: tuple[str, ...] = ("a", "b"), *, mode: str = "pool",
                admin: bool = True, **key_fields: Any) -> OperatorConfig:
    """Accounts signed in at ``emulator`` (``<name>@example.com``), key ``alice``, the admin key."""
    specs = tuple(AccountSpec(name, cookies=Secret(emulator.state.create_login(f"{name}@example.com").cookie))
                  for name in accounts)
    return OperatorConfig(mode=mode, keys=(KeySpec(name="alice", digest=_digest(RELAY_KEY), **key_fields),),
                          accounts=specs, admin_keys=(_digest(ADMIN_KEY),) if admin else ())


async def start_pool_relay(relay_factory: RelayFactory, emulator: RunningEmulator, where: Path,
                           operator: OperatorConfig | None = None, **overrides: Any) -> str:
    """A relay speaking qwen-v2 to ``emulator``, refreshing there, risk control resting a credential 60 s."""
    overrides.setdefault("challenge_cooldown_s", 60.0)
    return await relay_factory(operator=operator or pool_config(emulator), dialect="qwen-v2",
                               auth_origin=emulator.url, state_dir=str(where / "state"), **overrides)


async def chat(session: aiohttp.ClientSession, relay: str, *, key: str = RELAY_KEY, reply: str = "fine",
               model: str = MODEL, stream: bool = False, **fields: Any) -> int:
    """One chat completion as ``key``; its HTTP status (the body is read to the end)."""
    body = chat_body(stream=stream, model=model, text=directive(reply=reply, **fields))
    async with session.post(relay + "/v1/chat/completions", json=body, headers=bearer(key)) as response:
        await response.read()
        return response.status


class _Tables(HTMLParser):
    def __init__(self, table_id: str) -> None:
        super().__init__()
        self._id = table_id
        self._depth = 0
        self._cell: list[str] | None = None
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self._depth or dict(attrs).get("id") == self._id):
            self._depth += 1
        elif self._depth and tag == "tr":
            self.rows.append([])
        elif self._depth and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._depth:
            self._depth -= 1
        elif self._depth and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cells' text of each row of the table ``id=table_id`` (header row first); [] when absent."""
    parser = _Tables(table_id)
    parser.feed(html)
    return parser.rows
