"""The 2026 service's checks on qwen-v2 writes (§7.1-§7.3, §7.5), as pure rules.

Strategy: each rule reads plain data (lower-cased headers, cookies, the decoded
body) and returns the short name of the first rule broken, or None. The server
decides what a name is answered with, so the order below *is* the order of the
live service as far as the notes know it, and a test can break one rule at a time:

1. no ``token`` cookie (a Bearer alone is not enough, §7.1 [S, controlled]);
2. ``x-request-id`` missing, not a uuid4, or seen before (§7.2);
3. missing browser headers (``sec-fetch-*``, ``sec-ch-ua*``, ``Origin``,
   ``timezone``), a ``timezone`` not in ``Date().toString()`` form, a
   ``User-Agent`` whose Chrome major disagrees with ``sec-ch-ua``, or a ``Referer``
   that is not the page the web app calls from (§7.2);
4. completions only: ``Accept`` with ``text/event-stream``, or no
   ``x-accel-buffering: no`` (§7.2 [S×2]);
5. completions only: a body over 128,000 bytes (§7.3 [C]).

The upload calls (``getstsToken`` on both API versions, ``files/parse`` and its
status, write kind ``"file"``) are bx-signed writes of the web app
(QWEN_IMAGES.md §1.2): rules 1-3 apply, with a Referer of any ``/c/…`` page.

Rules 1-5 get the risk-control JSON (§7.5). Then, in the handlers: a bad token
(200 + 401 ``Unauthorized``), no ``version`` header (200 + 400 ``Bad_Request``,
§7.2 [S, controlled]) and the body shape of :func:`body_problem` (200 + 422
``RequestValidationError``, §7.3, §7.5).

[I] choices where the notes are silent: a DELETE accepts any Referer (or none);
the Referer's path is compared, not its origin; the stop call takes its chat id
from the query, else the body (a call naming no chat accepts any ``/c/…`` page); a reused request id counts whatever path it was
first seen on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "MAX_COMPLETION_BODY_BYTES",
    "SAMPLING_FIELDS",
    "BodyProblem",
    "WriteKind",
    "body_problem",
    "risk_rule",
    "target_chat_id",
    "write_kind",
]

WriteKind = Literal["new", "completions", "stop", "delete", "file"]

# §7.3 [C]: ~117 KB of encoded JSON passed, ~129 KB got the risk-control answer.
MAX_COMPLETION_BODY_BYTES = 128_000
# OpenAI request fields no web client sends (§7.3 [I]): a relay must not forward them.
SAMPLING_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "n",
        "stop",
        "user",
        "response_format",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream_options",
        "enable_thinking",
        "chat_template_kwargs",
    }
)
_POST_KINDS: dict[str, WriteKind] = {
    "/api/v2/chats/new": "new",
    "/api/v2/chat/completions": "completions",
    "/api/v2/chat/completions/stop": "stop",
    "/api/v2/files/getstsToken": "file",
    "/api/v1/files/getstsToken": "file",
    "/api/v2/files/parse": "file",
    "/api/v2/files/parse/status": "file",
}
_SEC_FETCH = ("sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site")
_SEC_CH_UA = ("sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform")
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE)
# JS Date().toString(): "Thu Dec 03 2026 15:04:05 GMT+0800 (China Standard Time)".
_TIMEZONE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{2} \d{4} \d{2}:\d{2}:\d{2} GMT[+-]\d{4}( \(.+\))?$"
)
_UA_CHROME = re.compile(r"Chrome/(\d+)")
_CH_UA_CHROME = re.compile(r'"(?:Google Chrome|Chromium)";\s*v="(\d+)"')


@dataclass(frozen=True, slots=True)
class BodyProblem:
    """A body the 2026 service refuses: the rule's name, the field, and the details text."""

    rule: str
    field: str
    details: str


def write_kind(method: str, path: str) -> WriteKind | None:
    """Name the v2 write a request is, or None (reads, v1 paths: not checked)."""
    if method == "POST":
        return _POST_KINDS.get(path)
    if method == "DELETE" and path.startswith("/api/v2/chats/"):
        return "delete"
    return None


def target_chat_id(query_chat_id: str | None, body: Any) -> str:
    """The chat a completion or stop is about: the query's, else the body's ("" if none)."""
    if query_chat_id:
        return query_chat_id
    if isinstance(body, dict):
        for name in ("chat_id", "chatId"):
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
    return ""


def risk_rule(
    kind: WriteKind,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    *,
    chat_id: str,
    body_bytes: int,
    is_fresh_request_id: bool,
) -> str | None:
    """Return the first of rules 1-5 the request breaks (``headers`` lower-cased), or None."""
    if not cookies.get("token"):
        return "no_token_cookie"
    request_id = headers.get("x-request-id")
    if not request_id:
        return "no_request_id"
    if not _UUID4.match(request_id):
        return "bad_request_id"
    if not is_fresh_request_id:
        return "request_id_reused"
    rule = _browser_rule(kind, headers, chat_id)
    if rule is not None or kind != "completions":
        return rule
    if "text/event-stream" in headers.get("accept", ""):
        return "accept_event_stream"
    if headers.get("x-accel-buffering") != "no":
        return "no_accel_buffering"
    if body_bytes > MAX_COMPLETION_BODY_BYTES:
        return "body_too_large"
    return None


def _browser_rule(kind: WriteKind, headers: Mapping[str, str], chat_id: str) -> str | None:
    """Rule 3: the headers a Chrome tab on chat.qwen.ai always sends (§7.2)."""
    if not all(headers.get(name) for name in _SEC_FETCH):
        return "missing_sec_fetch"
    if not all(headers.get(name) for name in _SEC_CH_UA):
        return "missing_sec_ch_ua"
    if not headers.get("origin"):
        return "missing_origin"
    timezone = headers.get("timezone")
    if not timezone:
        return "missing_timezone"
    if not _TIMEZONE.match(timezone):
        return "bad_timezone"
    ua_major = _UA_CHROME.search(headers.get("user-agent", ""))
    if ua_major is None or ua_major.group(1) not in _CH_UA_CHROME.findall(headers["sec-ch-ua"]):
        return "ua_mismatch"
    if kind == "delete":
        return None
    path = urlsplit(headers.get("referer", "")).path
    if kind == "new":
        is_page = path == "/c/new-chat"
    else:  # without a chat id (refused later) any chat page will do
        is_page = path == f"/c/{chat_id}" if chat_id else path.startswith("/c/")
    return None if is_page else "bad_referer"


def body_problem(kind: WriteKind, body: dict[str, Any], query_chat_id: str | None) -> BodyProblem | None:
    """Check a ``chats/new`` or completion body against the 2026 shape (§7.3); None = fine."""
    if kind == "new":
        return _new_chat_problem(body)
    if kind != "completions":
        return None
    for name in body:
        if name in SAMPLING_FIELDS:
            return BodyProblem("sampling_field", name, f"body.{name}: extra fields not permitted")
    if not query_chat_id:
        return _shape("chat_id", "query parameter chat_id is required")
    for name in ("chat_id", "chatId"):
        if body.get(name) != query_chat_id:
            return _shape(name, "must be the chat_id of the query")
    if body.get("parentId") != "":
        return _shape("parentId", 'must be ""')
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _shape("model", "field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        return _shape("messages", "exactly one message is required")
    return _message_problem(messages[0])


def _message_problem(message: dict[str, Any]) -> BodyProblem | None:
    if not isinstance(message.get("fid"), str):
        return _shape("messages.0.fid", "field required")
    children = message.get("childrenIds")
    if not isinstance(children, list) or len(children) != 1 or not _is_uuid(children[0]):
        return _shape("messages.0.childrenIds", "must list one uuid")
    if message.get("role") != "user":
        return _shape("messages.0.role", 'must be "user"')
    return None


def _new_chat_problem(body: dict[str, Any]) -> BodyProblem | None:
    for name in ("chatId", "project_id"):
        if body.get(name) != "":
            return _shape(name, 'must be ""')
    models = body.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        return _shape("models", "must be a non-empty list of model ids")
    return None


def _shape(field: str, message: str) -> BodyProblem:
    return BodyProblem("body_shape", field, f"body.{field}: {message}")


def _is_uuid(value: Any) -> bool:
    return isinstance(value, str) and _UUID4.match(value) is not None
