"""One upstream answer being read: its body as it arrives, or whole as JSON.

``UpstreamClient.open`` hands it out once the head passed the refusal check; the
handler reads it (``iter_bytes`` for streams, ``read_json`` for whole bodies) and
the client closes it. Socket faults while reading become ``Upstream*`` errors
here, always chained with ``raise … from``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import hdrs

from ..errors import (
    RelayError,
    StreamLimitExceeded,
    UpstreamInterrupted,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..jsonio import loads
from ..pipeline._util import stage
from ..pipeline.frames import SILENT_CHUNK
from .recording import Capture

__all__ = ["UpstreamResponse", "content_type_of"]


def content_type_of(response: aiohttp.ClientResponse) -> str:
    """The media type, lower-cased, without parameters ("" when absent, not aiohttp's octet-stream)."""
    return response.headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0].strip().lower()



class UpstreamResponse:
    """A successful (2xx, not HTML) upstream response, owned by ``open``."""

    __slots__ = ("_abort_error", "_capture", "_response", "_timeout_s", "attempts")

    def __init__(self, response: aiohttp.ClientResponse, attempts: int, timeout_s: float,
                 capture: Capture | None = None) -> None:
        self._response = response
        self.attempts = attempts
        self._timeout_s = timeout_s
        self._abort_error: RelayError | None = None
        self._capture = capture  # [record] --record: the body is fed to it as it is read

    def abort(self, error: RelayError) -> None:
        """Close the connection now; the reader sees ``error`` instead of a broken pipe.

        Used by the drain at its deadline: each open stream's reader wakes up and
        the pipeline ends the stream with an error event and ``[DONE]``.
        """
        self._abort_error = error
        self._response.close()

    def close(self) -> None:
        """Back to the pool if received to the end, else dropped (the upstream stops generating)."""
        if self._capture is not None:  # [record]
            self._capture.close(complete=self._response.content.at_eof())
        if self._response.content.is_eof():
            self._response.release()  # aiohttp still drops a connection that must not be reused
        else:
            self._response.close()

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        return content_type_of(self._response)

    @stage
    async def iter_bytes(self, silence_s: float | None = None,
                         before_wait: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, with transport faults mapped to ``Upstream*``.

        ``before_wait`` is awaited whenever the next read would have to wait for
        the network: the handler flushes the client output it has coalesced, so
        events that arrived together leave in one write, and none waits longer.

        With ``silence_s``, each ``silence_s`` without upstream bytes yields
        ``SILENT_CHUNK``, which the chain carries down to the surface's encoder
        (a keep-alive). The read stays pending in a task of its own meanwhile,
        which ``asyncio.wait`` watches without cancelling it: no byte is lost.
        """
        content = self._response.content
        capture = self._capture
        try:
            while True:
                chunk = content.read_nowait()  # what is already buffered, without waiting
                if chunk:
                    if capture is not None:  # [record]
                        capture.feed(chunk)
                    yield chunk
                    continue
                if content.at_eof():
                    return
                if before_wait is not None:
                    await before_wait()
                if silence_s is None:
                    chunk = await content.readany()
                else:
                    read = asyncio.ensure_future(content.readany())
                    try:
                        while not (await asyncio.wait((read,), timeout=silence_s))[0]:
                            yield SILENT_CHUNK
                    finally:
                        if not read.done():  # the consumer left: nobody will take these bytes
                            read.cancel()
                    chunk = read.result()
                if not chunk:
                    return
                if capture is not None:  # [record]
                    capture.feed(chunk)
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._mapped(exc) from exc

    async def read_json(self, max_bytes: int) -> Any:
        """Read the whole body (at most ``max_bytes``) and decode it as JSON."""
        content = self._response.content
        chunks: list[bytes] = []
        size = 0
        try:
            # Usually the whole body came with the head: taken as it lies, without waiting.
            while chunk := content.read_nowait() or (b"" if content.at_eof() else await content.readany()):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise StreamLimitExceeded(f"The upstream answer is larger than {max_bytes} bytes "
                                              "(--max-line-bytes).")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._mapped(exc) from exc
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._capture is not None:  # [record]
            self._capture.feed(body)
        try:
            return loads(body)
        except (ValueError, RecursionError) as exc:
            raise UpstreamProtocolError("The upstream answer is not valid JSON.") from exc

    def _mapped(self, exc: BaseException) -> RelayError:
        """A transport fault while reading the body, as the ``Upstream*`` error it means."""
        if self._abort_error is not None:
            return self._abort_error
        if isinstance(exc, TimeoutError):  # aiohttp's sock_read: ServerTimeoutError is one
            return UpstreamTimeout(f"The upstream was silent for more than {self._timeout_s:g} s (--timeout).")
        return UpstreamInterrupted("The upstream connection broke in the middle of the answer.")
