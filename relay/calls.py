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
from .dialects import Dialect, UpstreamCall
from .upstream import UpstreamClient
from .upstream.client import BackgroundRequest, Exchange

__all__ = ["Calls", "Sender"]


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

    def sender(self, credential: Credential) -> Sender:
        """``send_json`` with the credential bound: what a dialect's ``prepare`` gets."""
        return Sender(self, credential)

    def send_in_background(self, credential: Credential, *calls: tuple[UpstreamCall | None, str]) -> None:
        """Fire ``(call, event)`` pairs in order without waiting (a stop, then a delete); None calls skipped."""
        self.client.send_in_background([
            BackgroundRequest(call.method, call.path, partial(self._headers.for_call, call, credential), call.body, event,
                              proxy=credential.proxy, on_cookies=credential.take_cookies)
            for call, event in calls if call is not None])


class Sender:
    """A ``SendJson`` bound to one credential, which it also names.

    A dialect's ``prepare`` sends through it; qwen-v2 also needs the credential
    itself to upload a request's images (its egress, and the account an upload
    is cached for: ``relay/images``).
    """

    __slots__ = ("_calls", "credential")

    def __init__(self, calls: Calls, credential: Credential) -> None:
        self._calls = calls
        self.credential = credential

    async def __call__(self, call: UpstreamCall) -> Any:
        return await self._calls.send_json(call, self.credential)
