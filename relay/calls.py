"""A dialect's upstream calls, sent with its headers over the shared transport.

The dialect decides what to call (``UpstreamCall``) and with which headers
(its ``header_set``); the transport (``upstream.UpstreamClient``) only sends
bytes and maps socket faults. This joins the two for the handlers, so no
handler builds a header or knows a path.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .accounts.credential import Credential
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

    def open(self, call: UpstreamCall, credential: Credential) -> Exchange:
        """``async with calls.open(call, credential) as response``: retried before the first byte.

        Through the credential's own egress; its ``Set-Cookie`` answers go to its jar only.
        """
        return self.client.open(call.method, call.path, headers=self._headers.for_call(call, credential),
                                json_body=call.body, proxy=credential.proxy, on_cookies=credential.take_cookies)

    async def send_json(self, call: UpstreamCall, credential: Credential) -> Any:
        """Send ``call`` and return its decoded JSON answer."""
        return await self.client.send_json(call.method, call.path, self._headers.for_call(call, credential),
                                           call.body, proxy=credential.proxy, on_cookies=credential.take_cookies)

    def sender(self, credential: Credential) -> SendJson:
        """``send_json`` with the credential bound: what a dialect's ``prepare`` gets."""
        return partial(self._send_with, credential)

    async def _send_with(self, credential: Credential, call: UpstreamCall) -> Any:
        return await self.send_json(call, credential)

    def send_in_background(self, credential: Credential, *calls: tuple[UpstreamCall | None, str]) -> None:
        """Fire ``(call, event)`` pairs in order without waiting (a stop, then a delete); None calls skipped."""
        self.client.send_in_background([
            BackgroundRequest(call.method, call.path, self._headers.for_call(call, credential), call.body, event,
                              proxy=credential.proxy, on_cookies=credential.take_cookies)
            for call, event in calls if call is not None])
