"""A dialect's upstream calls, sent with its headers over the shared transport.

The dialect decides what to call (``UpstreamCall``) and with which headers
(its ``header_set``); the transport (``upstream.UpstreamClient``) only sends
bytes and maps socket faults. This joins the two for the handlers, so no
handler builds a header or knows a path.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .config import Config
from .dialects import Dialect, SendJson, UpstreamCall
from .upstream import UpstreamClient
from .upstream.client import BackgroundRequest, Exchange

__all__ = ["Calls"]


class Calls:
    """Every upstream call of one app: ``open`` for answers read as they come, the rest whole."""

    __slots__ = ("_headers", "client", "dialect")

    def __init__(self, client: UpstreamClient, dialect: Dialect, config: Config) -> None:
        self.client = client
        self.dialect = dialect
        self._headers = dialect.header_set(client.origin, config)

    def open(self, call: UpstreamCall, token: str) -> Exchange:
        """``async with calls.open(call, token) as response``: retried before the first byte."""
        return self.client.open(call.method, call.path, headers=self._headers.for_call(call, token),
                                json_body=call.body)

    async def send_json(self, call: UpstreamCall, token: str) -> Any:
        """Send ``call`` and return its decoded JSON answer."""
        return await self.client.send_json(call.method, call.path, self._headers.for_call(call, token), call.body)

    def sender(self, token: str) -> SendJson:
        """``send_json`` with the token bound: what a dialect's ``prepare`` gets."""
        return partial(self._send_with, token)

    async def _send_with(self, token: str, call: UpstreamCall) -> Any:
        return await self.send_json(call, token)

    def send_in_background(self, token: str, *calls: tuple[UpstreamCall | None, str]) -> None:
        """Fire ``(call, event)`` pairs in order without waiting (a stop, then a delete); None calls skipped."""
        self.client.send_in_background([
            BackgroundRequest(call.method, call.path, self._headers.for_call(call, token), call.body, event)
            for call, event in calls if call is not None])
