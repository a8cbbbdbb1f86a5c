"""Per-request directives and the faults they can inject.

The relay forwards message text untouched, so a test steers the emulator by putting
one line ``#emulator {...json...}`` into any message. That keeps the relay unaware of
the emulator and lets the same test run against a relay in another process.

Parsing is strict: an unknown field or a wrong type is a 400 naming the field, so a
typo in a test shows up as a clear failure instead of a silently ignored fault.
Nothing here does I/O; ``server.py`` turns :class:`HttpFault` into a response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "DIRECTIVE_LINE",
    "FAULTS",
    "HTTP_FAULTS",
    "NO_DIRECTIVE",
    "STREAM_FAULTS",
    "UNAUTHORIZED_DETAIL",
    "Directive",
    "DirectiveError",
    "HttpFault",
    "http_fault",
    "parse_directive",
    "strip_directives",
]

DIRECTIVE_LINE = re.compile(r"^#emulator (\{.*\})\s*$")

UNAUTHORIZED_DETAIL = "Your session has expired or the token is invalid. Please sign in again."

# Faults answered instead of a completion, before any stream starts.
HTTP_FAULTS = frozenset(
    {
        "html_challenge",
        "http_500",
        "http_502",
        "http_503",
        "http_500_empty",
        "http_401",
        "http_403",
        "http_429",
    }
)
# Faults that shape an SSE stream (or delay a non-stream answer).
STREAM_FAULTS = frozenset(
    {
        "stall_headers",
        "stall_mid",
        "reset_mid",
        "oversized_line",
        "in_stream_error",
        "slow_dribble",
    }
)
FAULTS = HTTP_FAULTS | STREAM_FAULTS | {"stall_before"}

# 2 MiB: well past any sane per-line limit of a relay, yet quick to send in a test.
DEFAULT_OVERSIZED_LINE_BYTES = 2 * 1024 * 1024
# A cap so a typo cannot make the emulator allocate gigabytes.
MAX_OVERSIZED_LINE_BYTES = 64 * 1024 * 1024
# slow_dribble's gap: slow enough to notice, fast enough for an idle timeout test.
SLOW_DRIBBLE_DELAY_MS = 200.0

Split = Literal["event", "byte", "coalesce"]
Rewrite = Literal["change", "shrink"]


class DirectiveError(ValueError):
    """A directive line that cannot be honoured; answered 400 with its message."""


@dataclass(frozen=True, slots=True)
class Directive:
    """Everything one request asked for; defaults mean "behave like the real service"."""

    source: Mapping[str, Any]
    reply: str | None = None
    think: str | None = None
    chunks: int | None = None
    pieces: tuple[str, ...] | None = None
    delay_ms: float | None = None
    ttfb_ms: float = 0.0
    done: bool = True
    line_ending: str = "\n"
    split: Split = "event"
    keepalive: bool = False
    trailing_space: bool = False
    repeat_identical: bool = False
    rewrite: Rewrite | None = None
    garbage: bool = False
    usage: bool | None = None
    key: str | None = None
    fail_times: int | None = None
    fault: str | None = None
    retry_after: float | None = None
    stall_ms: float | None = None
    after: int = 1
    size: int = DEFAULT_OVERSIZED_LINE_BYTES

    @property
    def stall_s(self) -> float | None:
        """Length of an injected stall in seconds; None means until the client leaves."""
        return None if self.stall_ms is None else self.stall_ms / 1000

    def counter_key(self) -> str | None:
        """Name the fail-times counter this request shares with its retries.

        An explicit ``key`` wins. Without one, a directive that sets ``fail_times``
        is keyed on its own canonical JSON: a relay retry resends the same text.
        """
        if self.key is not None:
            return "key:" + self.key
        if self.fail_times is not None:
            return "directive:" + json.dumps(self.source, sort_keys=True)
        return None


# What a request without a directive gets: the service behaving normally.
NO_DIRECTIVE = Directive(source=MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class HttpFault:
    """A whole error response, as plain data."""

    status: int
    content_type: str | None
    body: bytes
    headers: Mapping[str, str]


def _html_page(status: int, reason: str) -> bytes:
    """Build the kind of bare HTML error page a gateway sends (§2.5: 5xx HTML)."""
    return (
        f"<html><head><title>{status} {reason}</title></head><body>"
        f"<center><h1>{status} {reason}</h1></center><hr><center>Tengine</center>"
        "</body></html>"
    ).encode()


_WAF_PAGE = (
    b"<!doctypehtml><html><head><meta charset=utf-8><title>aliyun_waf_aa</title>"
    b"<script>var _waf_=1;window.aliyun_waf_aa='FAIL_SYS_USER_VALIDATE';</script>"
    b"</head><body><div id=aliyun_waf_aa>Please slide to verify</div></body></html>"
)


def http_fault(name: str, retry_after: float | None = None) -> HttpFault:
    """Describe the response for one of :data:`HTTP_FAULTS` (§2.5, §6.8)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = _format_seconds(retry_after)
    html = "text/html; charset=utf-8"
    if name == "html_challenge":
        # The WAF answers 200: relays broke while parsing, not on the status.
        return HttpFault(200, html, _WAF_PAGE, headers)
    if name == "http_500_empty":
        return HttpFault(500, None, b"", headers)
    reasons = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    if name in ("http_500", "http_502", "http_503"):
        status = int(name[-3:])
        return HttpFault(status, html, _html_page(status, reasons[status]), headers)
    if name == "http_401":
        return HttpFault(401, "application/json", _detail(UNAUTHORIZED_DETAIL), headers)
    if name == "http_403":
        return HttpFault(403, html, _html_page(403, "Forbidden"), headers)
    if name == "http_429":
        return HttpFault(429, "application/json", _detail("Too many requests"), headers)
    raise ValueError(f"not an HTTP fault: {name!r}")


def _detail(message: str) -> bytes:
    return json.dumps({"detail": message}).encode()


def _format_seconds(value: float) -> str:
    """Render Retry-After as delta-seconds; RFC 9110 allows integers only."""
    return str(max(0, round(value)))


def parse_directive(texts: Iterable[str]) -> Directive | None:
    """Find the last ``#emulator {...}`` line in the given message texts.

    The last one wins so a later turn of a conversation can override an earlier one.
    """
    found: str | None = None
    for text in texts:
        for line in text.splitlines():
            match = DIRECTIVE_LINE.match(line)
            if match is not None:
                found = match.group(1)
    if found is None:
        return None
    try:
        raw = json.loads(found)
    except json.JSONDecodeError as exc:
        raise DirectiveError(f"emulator directive is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DirectiveError("emulator directive must be a JSON object")
    return _build(raw)


def strip_directives(text: str) -> str:
    """Drop directive lines so the default answer echoes only what a user typed."""
    return "\n".join(line for line in text.splitlines() if not DIRECTIVE_LINE.match(line))


def _build(raw: dict[str, Any]) -> Directive:
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise DirectiveError(f"unknown emulator directive field(s): {', '.join(unknown)}")
    values = {name: _FIELDS[name](name, value) for name, value in raw.items()}
    if "reply" in values and "pieces" in values:
        raise DirectiveError("give either reply or pieces, not both")
    if values.get("fault") not in (None, *FAULTS):
        raise DirectiveError(f"unknown fault {raw['fault']!r}; known: {', '.join(sorted(FAULTS))}")
    return Directive(source=dict(raw), **values)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DirectiveError(f"directive field {name} must be a string")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DirectiveError(f"directive field {name} must be true or false")
    return value


def _count(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DirectiveError(f"directive field {name} must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise DirectiveError(f"directive field {name} must be at most {maximum}")
        return value

    return check


def _millis(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DirectiveError(f"directive field {name} must be a number >= 0")
    return float(value)


def _pieces(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise DirectiveError(f"directive field {name} must be a non-empty list of strings")
    return tuple(value)


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise DirectiveError(f"directive field {name} must be one of {allowed!r}")
        return str(value)

    return check


def _rewrite(name: str, value: Any) -> str | None:
    """Accept true (= "change"), false, or the mode name."""
    if value is True:
        return "change"
    if value is False:
        return None
    return _choice("change", "shrink")(name, value)


_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "reply": _string,
    "think": _string,
    "chunks": _count(1),
    "pieces": _pieces,
    "delay_ms": _millis,
    "ttfb_ms": _millis,
    "done": _flag,
    "line_ending": _choice("\n", "\r\n", "\r"),
    "split": _choice("event", "byte", "coalesce"),
    "keepalive": _flag,
    "trailing_space": _flag,
    "repeat_identical": _flag,
    "rewrite": _rewrite,
    "garbage": _flag,
    "usage": _flag,
    "key": _string,
    "fail_times": _count(0),
    "fault": _string,
    "retry_after": _millis,
    "stall_ms": _millis,
    "after": _count(0),
    "size": _count(1, MAX_OVERSIZED_LINE_BYTES),
}
