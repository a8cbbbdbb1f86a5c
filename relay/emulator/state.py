"""What the emulator has seen, shared with in-process tests.

Tests synchronise on these events and counters instead of sleeping (STYLE.md §6):
"the n-th request arrived", "a first event was written", "the peer closed", "no
stream is open any more", "the stop endpoint was called". Waiters use a pulse:
every change sets the current event and swaps in a fresh one, so notifying never
needs to await a lock.

qwen-v2 adds server-side conversation state (§4.1): chats must be created before
they are completed, and a response can be stopped by id (§4.2) or its chat deleted
(§7.3). All of it lives here so relay tests can assert on it in-process.

The auth host's logins (§7.1) live in ``EmulatorState.logins`` (``logins.py``);
:meth:`EmulatorState.create_login` makes one without a sign-in and
``EmulatorState.refreshes`` lists every refresh attempt.

The 2026 service refuses a reused ``x-request-id`` (§7.2); the ids seen are kept
across :meth:`EmulatorState.reset` (the service does not forget between tests),
bounded so a long benchmark cannot grow them without limit.

The request log, the stop calls and the deleted chats are rings (``Recent``) of the
latest ``EmulatorConfig.log_size`` records: an emulator under load for days (the
relay's ``--upstream emulator``) keeps a bounded memory, and a test, which reads a few
dozen records, reads them as it would a list.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, TypeVar, overload

from relay.emulator.config import DEFAULT_LOG_SIZE
from relay.emulator.faults import build_gateway_directive
from relay.emulator.logins import LoginBook, LoginSeed, RefreshRecord
from relay.emulator.uploads import FileBook

__all__ = [
    "ArmedDirective",
    "ChatRecord",
    "EmulatorState",
    "LiveResponse",
    "Recent",
    "RequestRecord",
    "fingerprint",
    "is_auth_path",
]

# [I] Far more than any replay window a relay bug could produce; ~100 bytes each.
MAX_SEEN_REQUEST_IDS = 100_000

T = TypeVar("T")


class Recent(deque[T]):
    """The latest records, at most ``maxlen`` of them, the oldest dropped first.

    A deque, so that appending stays O(1) when full, which also slices and compares
    equal to a list of the same records, as the lists it replaced did.
    """

    def __init__(self, records: Iterable[T] = (), *, maxlen: int = DEFAULT_LOG_SIZE) -> None:
        super().__init__(records, maxlen)

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self)[index]
        return super().__getitem__(index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return list(self) == other
        return super().__eq__(other)


def is_auth_path(path: str) -> bool:
    """Whether ``path`` belongs to the auth host (auth.qwen.ai, §7.1) rather than the chat host."""
    return path.startswith(("/api/v2/auths", "/api/v1/auths"))


def fingerprint(token: str) -> str:
    """Identify a token in logs without storing it: sha256 hex, first 12 digits."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(slots=True)
class RequestRecord:
    """One request as the emulator saw and answered it; updated while it runs."""

    number: int
    method: str
    path: str
    token_fingerprint: str | None
    model: str | None = None
    stream: bool | None = None
    directive: dict[str, Any] | None = None
    # 1-based count of requests sharing this directive's fail-times counter.
    attempt: int = 1
    fault: str | None = None
    status: int | None = None
    events_sent: int = 0
    client_disconnected: bool = False
    finished: bool = False
    # "v1" (cumulative), "phase" (incremental and/or phase tags) or "v2"; None for
    # requests that are not completions.
    dialect: str | None = None
    # feature_config of the last message, and chat_type (body, else last message).
    feature_config: dict[str, Any] | None = None
    chat_type: str | None = None
    # v2 only: the chat, the one user message's text (to check history folding),
    # the body's parent_id and the response id the stream announced.
    chat_id: str | None = None
    user_message: str | None = None
    parent_id: str | None = None
    response_id: str | None = None
    # The stream was ended by POST /api/v2/chat/completions/stop.
    stopped: bool = False
    # Request headers (names lower-cased) and cookies, tokens as "sha256:<fingerprint>"
    # (capture.py), and the decoded JSON body (None: none, or not JSON).
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    body: Any = None
    # The strict rule that refused the request (strict.py), e.g. "no_token_cookie".
    rejected: str | None = None
    # DELETE /api/v2/chats/<id> removed that chat.
    chat_deleted: bool = False
    # The login of an emulator JWT the request carried (logins.py), and the jar
    # cookies it presented with an outdated value (recorded, never refused).
    login_id: str | None = None
    stale_cookies: list[str] = field(default_factory=list)
    # A request to the OSS stand-in (oss.py): bucket, key, size, sha256, content_type,
    # signature_version and result ("stored" or the OSS error code); never a secret.
    upload: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/log``."""
        return {
            "number": self.number,
            "method": self.method,
            "path": self.path,
            "token_fingerprint": self.token_fingerprint,
            "model": self.model,
            "stream": self.stream,
            "directive": self.directive,
            "attempt": self.attempt,
            "fault": self.fault,
            "status": self.status,
            "events_sent": self.events_sent,
            "client_disconnected": self.client_disconnected,
            "finished": self.finished,
            "dialect": self.dialect,
            "feature_config": self.feature_config,
            "chat_type": self.chat_type,
            "chat_id": self.chat_id,
            "user_message": self.user_message,
            "parent_id": self.parent_id,
            "response_id": self.response_id,
            "stopped": self.stopped,
            "headers": dict(self.headers),
            "cookies": dict(self.cookies),
            "body": self.body,
            "rejected": self.rejected,
            "chat_deleted": self.chat_deleted,
            "login_id": self.login_id,
            "stale_cookies": list(self.stale_cookies),
            "upload": self.upload,
        }


@dataclass(slots=True)
class ChatRecord:
    """A chat created by ``POST /api/v2/chats/new`` (§4.1)."""

    id: str
    model: str
    title: str
    chat_type: str
    chat_mode: str
    # Server clock (epoch seconds) at creation; the client's own ms timestamp apart.
    created_at: float
    client_timestamp_ms: int | None = None
    # Completion calls accepted for this chat (after validation, faults included).
    completions: int = 0
    # Response ids announced by response.created, oldest first.
    responses: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/chats``."""
        return {
            "id": self.id,
            "model": self.model,
            "title": self.title,
            "chat_type": self.chat_type,
            "chat_mode": self.chat_mode,
            "created_at": self.created_at,
            "client_timestamp_ms": self.client_timestamp_ms,
            "completions": self.completions,
            "responses": list(self.responses),
        }


@dataclass(slots=True)
class ArmedDirective:
    """A gateway fault waiting for requests whose path starts with ``path``."""

    path: str
    directive: Mapping[str, Any]
    # Requests it still applies to; None = until reset.
    times: int | None


@dataclass(slots=True)
class LiveResponse:
    """A v2 response still streaming, and the event that stops it."""

    chat_id: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class EmulatorState:
    """Request log, counters and events of one emulator app.

    ``streams_started == streams_completed + streams_aborted + streams_reset +
    streams_stopped + open_streams`` holds at every await point.
    """

    log: Recent[RequestRecord] = field(default_factory=Recent)
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    # The client went away mid-stream (or the emulator shut down under it).
    streams_aborted: int = 0
    # The emulator dropped the connection on purpose (fault reset_mid).
    streams_reset: int = 0
    # Streams ended early by the v2 stop endpoint.
    streams_stopped: int = 0
    open_streams: int = 0
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    fail_counters: dict[str, int] = field(default_factory=dict)
    chats: dict[str, ChatRecord] = field(default_factory=dict)
    # (chat_id, response_id) of every stop call, "" where the call left one out.
    stop_calls: Recent[tuple[str, str]] = field(default_factory=Recent)
    stop_called: asyncio.Event = field(default_factory=asyncio.Event)
    # Ids of chats removed by DELETE /api/v2/chats/<id>, oldest first.
    deleted_chats: Recent[str] = field(default_factory=Recent)
    # x-request-id values seen on any request (insertion-ordered, bounded).
    seen_request_ids: dict[str, None] = field(default_factory=dict)
    armed: list[ArmedDirective] = field(default_factory=list)
    live_responses: dict[str, LiveResponse] = field(default_factory=dict)
    # The auth host's logins, tokens and switches (logins.py, auth.py).
    logins: LoginBook = field(default_factory=LoginBook)
    # STS grants, uploaded objects and generated images (uploads.py, QWEN_IMAGES.md §6).
    files: FileBook = field(default_factory=FileBook)
    _pulse: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @classmethod
    def keeping(cls, records: int, **fields: Any) -> EmulatorState:
        """A state whose log, stop calls and deleted chats keep the latest ``records`` each."""
        return cls(log=Recent(maxlen=records), stop_calls=Recent(maxlen=records),
                   deleted_chats=Recent(maxlen=records), **fields)

    def reset(self) -> None:
        """Forget history between tests; streams still open stay counted."""
        self.log.clear()
        self.requests = 0
        self.streams_started = self.open_streams
        self.streams_completed = 0
        self.streams_aborted = 0
        self.streams_reset = 0
        self.streams_stopped = 0
        self.first_chunk_sent.clear()
        self.peer_closed.clear()
        self.fail_counters.clear()
        self.chats.clear()
        self.stop_calls.clear()
        self.stop_called.clear()
        self.deleted_chats.clear()
        self.armed.clear()
        self.logins.reset()
        self.files.reset()
        self.notify()

    def create_login(self, email: str) -> LoginSeed:
        """Make a signed-in login of ``email`` without a sign-in: tokens and the whole jar."""
        seed = self.logins.create_login(email)
        self.notify()
        return seed

    @property
    def refreshes(self) -> list[RefreshRecord]:
        """Every refresh attempt since the last reset, oldest first."""
        return self.logins.refreshes

    def notify(self) -> None:
        """Wake every waiter so it re-checks its condition."""
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; callers bound it with asyncio.timeout()."""
        while not predicate():
            await self._pulse.wait()

    async def wait_for_request(self, n: int) -> None:
        """Return once the n-th request (1-based, since the last reset) has arrived."""
        await self.wait_until(lambda: self.requests >= n)  # not len(log): a full ring stays full

    async def wait_for_idle(self) -> None:
        """Return once no stream is open: the check that a relay closed its upstream."""
        await self.wait_until(lambda: self.open_streams == 0)

    def begin(self, method: str, path: str, token: str | None) -> RequestRecord:
        """Log a request the moment it arrives, before anything can fail."""
        self.requests += 1
        record = RequestRecord(
            number=self.requests,
            method=method,
            path=path,
            token_fingerprint=fingerprint(token) if token else None,
        )
        self.log.append(record)
        self.notify()
        return record

    def note_request_id(self, request_id: str | None) -> bool:
        """Remember an ``x-request-id``; return False if it was seen before (§7.2)."""
        if not request_id:
            return True
        if request_id in self.seen_request_ids:
            return False
        self.seen_request_ids[request_id] = None
        if len(self.seen_request_ids) > MAX_SEEN_REQUEST_IDS:
            del self.seen_request_ids[next(iter(self.seen_request_ids))]
        return True

    def count_attempt(self, key: str | None) -> int:
        """Bump and return the fail-times counter for ``key`` (1 without a key)."""
        if key is None:
            return 1
        attempt = self.fail_counters.get(key, 0) + 1
        self.fail_counters[key] = attempt
        return attempt

    def stream_opened(self) -> None:
        self.streams_started += 1
        self.open_streams += 1
        self.notify()

    def stream_closed(self, record: RequestRecord, outcome: str) -> None:
        """Count how a stream ended: "completed", "aborted" (client gone), "reset" or "stopped"."""
        self.open_streams -= 1
        if outcome == "completed":
            self.streams_completed += 1
        elif outcome == "aborted":
            self.streams_aborted += 1
        elif outcome == "stopped":
            self.streams_stopped += 1
            record.stopped = True
        else:
            self.streams_reset += 1
        record.finished = True
        self.notify()

    def client_gone(self, record: RequestRecord) -> None:
        """Note a disconnect on the record and wake ``peer_closed`` waiters."""
        record.client_disconnected = True
        self.peer_closed.set()
        self.notify()

    def arm(self, directive: Any, *, path: str = "/", times: int | None = 1) -> None:
        """Answer the next ``times`` requests under ``path`` with a gateway fault.

        For paths that carry no message to hold a directive (``GET /api/models``,
        ``POST /api/v2/chats/new``, the stop call). Only HTTP faults, ``stall_before``
        and ``ttfb_ms`` are allowed (DirectiveError otherwise); an armed directive
        is applied before the token is checked, as a gateway in front would.
        """
        build_gateway_directive(directive)
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for until reset)")
        self.armed.append(ArmedDirective(path, dict(directive), times))

    def take_armed(self, path: str) -> Mapping[str, Any] | None:
        """Return (and use up one application of) the first directive armed for ``path``."""
        for index, armed in enumerate(self.armed):
            # [I] The auth host is another host (§7.1): only a fault armed for an
            # auth path reaches it, not one armed for "/" in front of the chat host.
            if path.startswith(armed.path) and (is_auth_path(armed.path) or not is_auth_path(path)):
                if armed.times is not None:
                    armed.times -= 1
                    if armed.times == 0:
                        del self.armed[index]
                return armed.directive
        return None

    def create_chat(
        self, chat_id: str, model: str, *, title: str, chat_type: str, chat_mode: str, timestamp_ms: int | None
    ) -> ChatRecord:
        """Remember a chat made by ``POST /api/v2/chats/new``."""
        chat = ChatRecord(chat_id, model, title, chat_type, chat_mode, time.time(), timestamp_ms)
        self.chats[chat_id] = chat
        self.notify()
        return chat

    def delete_chat(self, chat_id: str) -> bool:
        """Remove a chat (``DELETE /api/v2/chats/<id>``); False if there was none."""
        if self.chats.pop(chat_id, None) is None:
            return False
        self.deleted_chats.append(chat_id)
        self.notify()
        return True

    def record_stop(self, chat_id: str, response_id: str) -> int:
        """Log a stop call, end the matching live streams and return how many.

        With a response id only that response stops; with just a chat id, every
        live response of that chat does ([I]: the notes do not say which is required).
        """
        self.stop_calls.append((chat_id, response_id))
        stopped = 0
        for live_id, live in self.live_responses.items():
            if live_id == response_id or (not response_id and chat_id and live.chat_id == chat_id):
                live.stop.set()
                stopped += 1
        self.stop_called.set()
        self.notify()
        return stopped
