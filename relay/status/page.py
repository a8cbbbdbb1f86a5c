"""The status page: the report as plain HTML tables, styled inline, without a script.

It works where the relay does: no font, stylesheet or script from anywhere
else (the Content-Security-Policy sent with it forbids them), no JavaScript at
all; it refreshes itself with ``<meta http-equiv="refresh">``. Every value is
escaped: names come from the operator's config, codes from the upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from .report import KeyLimits, Report

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH_S", "render_error", "render_page"]

#: the page reloads itself this often: fresh enough to watch an account cool down.
REFRESH_S = 15
#: only the page's own inline styles; nothing is loaded, framed, submitted or scripted.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2433;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40%}
th,td{border:1px solid #d5dae1;padding:.3em .7em;text-align:left}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.active{color:#116329;font-weight:600}.cooling{color:#9a6700;font-weight:600}
.disabled{color:#cf222e;font-weight:600}.muted{color:#667085}
@media (prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}table{background:#161b22}
th{background:#21262d}th,td{border-color:#30363d}.muted{color:#8b949e}}
"""


def render_page(report: Report) -> str:
    """The whole page for ``report``."""
    upstream = report["upstream"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f"<title>qwen-relay status</title><style>{_STYLE}</style></head><body>",
        "<h1>qwen-relay status</h1>",
        (f'<p class="muted">version <span id="version">{escape(report["version"])}</span> · up '
         f'<span id="uptime">{_duration(report["uptime_s"])}</span> · "today" is the current UTC day · '
         f'reloads every {REFRESH_S} s · <a href="status.json">status.json</a> · '
         '<a href="status/usage?days=7">usage, last 7 days</a></p>'),
        "<h2>Accounts</h2>",
    ]
    accounts = report["accounts"]
    if accounts:
        parts.append(_table("accounts", ("account", "state", "cooling", "token expires in", "last refresh",
                                         "requests today", "challenges today"), (
            (_text(a["name"]), f'<span class="{escape(a["state"])}">{escape(a["state"])}</span>',
             _seconds(a["cooling_s"]) if a["cooling_s"] else "", _seconds(a["token_expires_in_s"]),
             _text(a["last_refresh"] or "never"), _number(a["requests_today"]), _number(a["challenges_today"]))
            for a in accounts)))
    else:
        parts.append('<p class="muted">No pool: callers use their own Qwen tokens (passthrough mode).</p>')
    parts.append("<h2>Relay keys</h2>")
    keys = report["keys"]
    if keys:
        parts.append(_table("keys", ("key", "requests today", "prompt tokens today", "completion tokens today",
                                     "rejections today", "limits"), (
            (_text(k["name"]), _number(k["requests_today"]), _number(k["prompt_tokens_today"]),
             _number(k["completion_tokens_today"]), _number(k["rejections_today"]), _text(_limits(k["limits"])))
            for k in keys)))
    else:
        parts.append('<p class="muted">No relay keys are configured.</p>')
    parts.append("<h2>Upstream, last hour</h2>")
    parts.append(f'<p>retry rate <span id="retry-rate">{upstream["retry_rate"] * 100:.1f} %</span> '
                 '<span class="muted">(retries per upstream attempt)</span></p>')
    errors = upstream["errors_by_code"]
    if errors:
        parts.append(_table("upstream-errors", ("error code", "count"),
                            ((_text(code), _number(count)) for code, count in errors.items())))
    else:
        parts.append('<p class="muted" id="upstream-errors">No upstream errors.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_error(status: int, title: str, message: str) -> str:
    """A small page for a refusal (401, 403), so a browser shows words rather than JSON."""
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{status} {escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{status} {escape(title)}</h1>"
            f"<p>{escape(message)}</p></body></html>\n")


def _table(table_id: str, headings: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of ready (escaped) cells; numeric cells carry class ``n``."""
    head = "".join(f"<th>{escape(heading)}</th>" for heading in headings)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _text(value: str) -> str:
    return escape(value)


def _number(value: int) -> str:
    return f'<td class="n">{value:,}</td>'


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else _duration(value)


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 2 h`` (negative: ``expired``)."""
    if seconds < 0:
        return "expired"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _limits(limits: KeyLimits) -> str:
    parts = []
    if limits["rpm"] is not None:
        parts.append(f"{limits['rpm']} rpm")
    if limits["max_concurrent"] is not None:
        parts.append(f"{limits['max_concurrent']} in flight")
    if limits["models"] is not None:
        parts.append("models: " + ", ".join(limits["models"]))
    return "; ".join(parts) or "none"
