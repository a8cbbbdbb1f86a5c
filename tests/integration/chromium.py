"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol.

Only what the status-page tests need: open a URL (with extra request headers,
e.g. ``Authorization: Bearer``, or Basic credentials in the URL, which Chromium
answers a ``WWW-Authenticate: Basic`` challenge with), wait for the load event,
and return what a user would see: the document's statuses, the DOM after
rendering, whether any script ran, and every URL the page made the browser
request. The protocol goes over aiohttp's websocket client; every wait has a
deadline, every loop a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

__all__ = ["Browser", "PageView", "chromium"]

#: a launch, a navigation, one protocol answer: generous bounds for a loaded CI machine.
_START_S = 60.0
_LOAD_S = 30.0
_POLL_S = 0.05
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


@dataclass
class PageView:
    """One page as the browser showed it."""

    #: the HTTP status of each document response, in order (a Basic challenge: 401, then 200).
    statuses: list[int]
    #: ``document.documentElement.outerHTML`` after the load event.
    html: str
    #: the rendered text (``document.body.innerText``).
    text: str
    #: ``document.scripts.length``.
    scripts: int
    #: every URL the browser requested for the page.
    requested: list[str] = field(default_factory=list)


class Browser:
    """One Chromium process and one websocket to it; a fresh tab per ``open``."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        #: protocol messages not yet consumed, in arrival order.
        self._events: list[dict[str, Any]] = []

    async def _send(self, method: str, params: dict[str, Any] | None = None,
                    session: str | None = None) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send_str(json.dumps(message))
        async with asyncio.timeout(_LOAD_S):
            while True:  # bounded by the deadline: answers come within it or the test fails
                reply = await self._receive()
                if reply.get("id") == message_id:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                self._events.append(reply)

    async def _receive(self) -> dict[str, Any]:
        message = await self._socket.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"the DevTools socket closed: {message.type}")
        reply: dict[str, Any] = json.loads(message.data)
        return reply

    async def open(self, url: str, headers: dict[str, str] | None = None) -> PageView:
        """Load ``url`` in a new tab (sending ``headers`` with every request) and read the page."""
        target = (await self._send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await self._send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        try:
            for method in ("Page.enable", "Network.enable"):
                await self._send(method, session=session)
            if headers:
                await self._send("Network.setExtraHTTPHeaders", {"headers": headers}, session)
            self._events.clear()
            await self._send("Page.navigate", {"url": url}, session)
            await self._wait_for(session, "Page.loadEventFired")
            statuses = [event["params"]["response"]["status"] for event in self._events
                        if event.get("method") == "Network.responseReceived" and event.get("sessionId") == session
                        and event["params"].get("type") == "Document"]
            requested = [event["params"]["request"]["url"] for event in self._events
                         if event.get("method") == "Network.requestWillBeSent" and event.get("sessionId") == session]
            values = []
            for expression in ("document.documentElement.outerHTML", "document.body ? document.body.innerText : ''",
                               "document.scripts.length"):
                answer = await self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                          session)
                values.append(answer["result"].get("value"))
            return PageView(statuses, str(values[0]), str(values[1]), int(values[2]), requested)
        finally:
            await self._send("Target.closeTarget", {"targetId": target})

    async def close(self) -> None:
        """Ask Chromium to exit (its answer may not come: the socket closes with it)."""
        await self._socket.send_str(json.dumps({"id": next(self._ids), "method": "Browser.close"}))

    async def _wait_for(self, session: str, method: str) -> None:
        async with asyncio.timeout(_LOAD_S):
            for index in itertools.count():  # bounded by the deadline
                if index == len(self._events):
                    self._events.append(await self._receive())
                event = self._events[index]
                if event.get("method") == method and event.get("sessionId") == session:
                    return


def _executable() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does this)")
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Start headless Chromium with a throw-away profile; yield it, connected; kill it at the end."""
    with tempfile.TemporaryDirectory() as profile:
        log = Path(profile) / "stderr.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                _executable(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                f"--user-data-dir={profile}/data", "--remote-debugging-port=0", "about:blank",
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            url = None
            for _ in range(int(_START_S / _POLL_S)):
                found = _LISTENING.search(log.read_text(errors="replace"))
                if found is not None:
                    url = found.group(1)
                    break
                if process.returncode is not None:
                    break
                await asyncio.sleep(_POLL_S)  # between two looks at another process's log
            if url is None:
                raise AssertionError(f"chromium did not start: {log.read_text(errors='replace')[-2000:]}")
            async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as socket:
                browser = Browser(socket)
                try:
                    yield browser
                finally:
                    with contextlib.suppress(AssertionError, TimeoutError, aiohttp.ClientError):
                        await browser.close()
        finally:
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Wait for Chromium to exit (``Browser.close`` asked it to), else kill its whole process group.

    The group, not the process: its zygote and renderers outlive a killed parent
    for a moment, still writing into the profile directory being removed.
    """
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    async with asyncio.timeout(_START_S):
        await process.wait()
        for _ in range(int(_START_S / _POLL_S)):  # the rest of the group
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(_POLL_S)  # between two looks at processes being reaped by the kernel
