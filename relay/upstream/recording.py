"""``--record DIR``: every upstream exchange as one JSON file, secrets replaced first.

Strategy: the client hands each attempt a ``Capture`` (``Recorder.open``). It
keeps what is cheap to keep on the event loop: the request as sent, the
response head as received, and references to the body chunks as they are read
(at most ``MAX_BODY_BYTES``; past that only ``truncated`` is noted). When the
exchange closes (read to the end, refused, failed, or left early by the
client: then ``complete: false``), the rest runs in the default executor:
``redact_exchange`` (``redaction.py``: JSON parsing and regexes over up to
16 MiB do not belong on the loop), JSON encoding, and the 0600 file write.
Recording never fails an exchange: a failed write is logged once, as a warning.

Bodies are kept after aiohttp's decoding of ``Content-Encoding`` (that is what
the relay reads); the header itself is recorded as received. Files are named
``<counter>-<METHOD>-<slug of the redacted path>.json``, the counter in the
order the exchanges started, going on after the files already in the directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable

import aiohttp

from .redaction import RawExchange, redact_exchange, slug

__all__ = ["MAX_BODY_BYTES", "Capture", "Recorder"]

_log = logging.getLogger("relay.upstream")

#: body bytes kept per exchange: a long stream is a few hundred KiB; a base64 image may be MiBs.
MAX_BODY_BYTES = 16 * 1024 * 1024
_COUNTER_DIGITS = 6


class Capture:
    """One exchange being recorded; the client calls ``head``, ``feed``, then ``close`` once."""

    __slots__ = ("_raw", "_recorder")

    def __init__(self, recorder: Recorder, raw: RawExchange) -> None:
        self._recorder = recorder
        self._raw: RawExchange | None = raw

    def head(self, response: aiohttp.ClientResponse) -> None:
        """The response head as received, and the request headers as aiohttp sent them."""
        raw = self._raw
        if raw is None:
            return
        raw.status = response.status
        raw.response_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        raw.request_headers = list(response.request_info.headers.items())
        raw.redirects = [(answer.status, answer.headers.get("Location", "")) for answer in response.history]

    def feed(self, chunk: bytes) -> None:
        """A body chunk as it is read: kept by reference, up to ``MAX_BODY_BYTES``."""
        raw = self._raw
        if raw is None or raw.truncated:
            return
        room = MAX_BODY_BYTES - raw.size
        if len(chunk) > room:
            chunk, raw.truncated = chunk[:room], True
        raw.chunks.append(chunk)
        raw.size += len(chunk)

    def close(self, *, complete: bool = False, error: BaseException | None = None) -> None:
        """End the exchange (idempotent): the file is written off the loop."""
        raw, self._raw = self._raw, None
        if raw is None:
            return
        raw.complete = complete and not raw.truncated
        raw.error = type(error).__name__ if error is not None else None
        raw.duration_ms = (time.monotonic() - raw.started) * 1000
        self._recorder.submit(raw)


class Recorder:
    """Numbers exchanges in the order they start and writes each to ``directory`` when it closes."""

    def __init__(self, directory: str) -> None:
        """Create ``directory`` (0700) if needed; numbering goes on after the files already there."""
        self._directory = directory
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask; parents are not ours
        self._seq = _last_seq(directory)
        self._pending: set[asyncio.Future[None]] = set()
        self._warned = False

    @property
    def directory(self) -> str:
        return self._directory

    def open(self, origin: str, method: str, path: str, headers: Iterable[tuple[str, str]],
             body: bytes | None) -> Capture:
        """Start recording one exchange (one attempt of a call)."""
        self._seq += 1
        raw = RawExchange(self._seq, origin, method, path, list(headers), body, time.time(), time.monotonic())
        return Capture(self, raw)

    def submit(self, raw: RawExchange) -> None:
        """Redact and write ``raw`` in the default executor (at once without a running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(raw)
            return
        future = loop.run_in_executor(None, self._write, raw)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Wait for the files still being written."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _write(self, raw: RawExchange) -> None:
        """Runs in a worker thread; never raises (a recording must not fail the relay)."""
        try:
            record = redact_exchange(raw)
            data = json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8", "surrogateescape") + b"\n"
            name = (f"{raw.seq:0{_COUNTER_DIGITS}d}-{raw.method.upper()}-"
                    f"{slug(record['request']['path'])}.json")
            _write_private(os.path.join(self._directory, name), data)
        except Exception as exc:  # noqa: BLE001 (recording is best effort; logged once)
            self._warn_once(exc)

    def _warn_once(self, exc: BaseException) -> None:
        if self._warned:
            return
        self._warned = True
        _log.warning("upstream_record_failed", extra={"fields": {
            "error": type(exc).__name__, "directory": self._directory}})


def _write_private(path: str, data: bytes) -> None:
    """Write a new file readable by its owner only (created 0600, never widened by the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _last_seq(directory: str) -> int:
    """The highest counter among the files already in ``directory`` (0 if none)."""
    highest = 0
    for name in os.listdir(directory):
        prefix = name.partition("-")[0]
        if name.endswith(".json") and prefix.isdigit():
            highest = max(highest, int(prefix))
    return highest
