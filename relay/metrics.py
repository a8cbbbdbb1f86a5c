"""Counters, gauges and histograms, rendered in Prometheus' text format.

Hand-written rather than ``prometheus-client``: the relay updates a handful of
series on every request from one event loop, so plain dict increments (no locks)
keep the cost negligible next to the request itself. Label values are bounded
sets chosen by the relay (route templates, status codes, reason codes) or by the
operator's config (relay key names, 8-digit token fingerprints); no token, key
or prompt ever becomes a label.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[str, ...]


class Histogram:
    """Cumulative-bucket histogram; ``observe`` is one bisect and three adds."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


_LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BOUNDS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """Everything ``GET /metrics`` reports, owned by one app."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.upstream_attempts = 0
        self.upstream_retries: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.upstream_first_byte = Histogram(_LATENCY_BOUNDS_S)
        self.stream_duration = Histogram(_DURATION_BOUNDS_S)
        self.bytes_out = 0
        self.divergences = 0
        #: frames dropped by the phased dialects (§7.4): a second candidate's, and unknown phases'.
        self.foreign_frames = 0
        self.dropped_phase_frames = 0
        #: risk-control answers (``ret`` JSON or a WAF page), whichever call met them.
        self.challenges = 0
        self.client_disconnects = 0
        self.garbage_events = 0
        #: the translation endpoints: texts asked for, upstream calls made, texts asked again alone.
        self.translated_texts = 0
        self.translation_calls = 0
        self.translation_reasked = 0
        #: read at render time: the live gate and drain state.
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        #: more families rendered at the end, each as ready lines (operator keys and tokens).
        self.collectors: list[Callable[[], list[str]]] = []

    def count_request(self, method: str, route: str, status: int) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def count_retry(self, reason: str) -> None:
        self.upstream_retries[reason] = self.upstream_retries.get(reason, 0) + 1

    def count_upstream_error(self, code: str) -> None:
        self.upstream_errors[code] = self.upstream_errors.get(code, 0) + 1

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("qwen_relay_requests_total", "counter", "HTTP requests by method, route and status.")
        for (method, route, status), value in sorted(self.requests.items()):
            out.append(f'qwen_relay_requests_total{{method="{method}",route="{_escape(route)}",'
                       f'status="{status}"}} {value}')
        for name, (help_text, read) in sorted(self.gauges.items()):
            family(name, "gauge", help_text)
            out.append(f"{name} {read():g}")
        family("qwen_relay_upstream_attempts_total", "counter", "Upstream HTTP attempts, retries included.")
        out.append(f"qwen_relay_upstream_attempts_total {self.upstream_attempts}")
        family("qwen_relay_upstream_retries_total", "counter", "Upstream retries by reason.")
        for reason, value in sorted(self.upstream_retries.items()):
            out.append(f'qwen_relay_upstream_retries_total{{reason="{_escape(reason)}"}} {value}')
        family("qwen_relay_upstream_errors_total", "counter", "Requests failed by the upstream, by error code.")
        for code, value in sorted(self.upstream_errors.items()):
            out.append(f'qwen_relay_upstream_errors_total{{code="{_escape(code)}"}} {value}')
        family("qwen_relay_upstream_first_byte_seconds", "histogram",
               "Time from sending a request upstream to its response headers.")
        out.extend(self.upstream_first_byte.render("qwen_relay_upstream_first_byte_seconds"))
        family("qwen_relay_stream_duration_seconds", "histogram", "Duration of relayed streams.")
        out.extend(self.stream_duration.render("qwen_relay_stream_duration_seconds"))
        family("qwen_relay_bytes_relayed_total", "counter", "Response body bytes sent to clients.")
        out.append(f"qwen_relay_bytes_relayed_total {self.bytes_out}")
        family("qwen_relay_deaccumulate_divergences_total", "counter",
               "Cumulative upstream frames that rewrote earlier text.")
        out.append(f"qwen_relay_deaccumulate_divergences_total {self.divergences}")
        family("qwen_relay_upstream_foreign_frames_total", "counter",
               "Frames of a second candidate response, dropped.")
        out.append(f"qwen_relay_upstream_foreign_frames_total {self.foreign_frames}")
        family("qwen_relay_upstream_dropped_phase_frames_total", "counter",
               "Frames of unknown or non-answer phases, dropped.")
        out.append(f"qwen_relay_upstream_dropped_phase_frames_total {self.dropped_phase_frames}")
        family("qwen_relay_upstream_challenges_total", "counter",
               "Risk-control answers from the upstream (the credential then rests).")
        out.append(f"qwen_relay_upstream_challenges_total {self.challenges}")
        family("qwen_relay_upstream_garbage_events_total", "counter", "Upstream SSE events skipped as garbage.")
        out.append(f"qwen_relay_upstream_garbage_events_total {self.garbage_events}")
        family("qwen_relay_client_disconnects_total", "counter", "Clients that left before the answer ended.")
        out.append(f"qwen_relay_client_disconnects_total {self.client_disconnects}")
        family("qwen_relay_translated_texts_total", "counter", "Texts the translation endpoints were asked for.")
        out.append(f"qwen_relay_translated_texts_total {self.translated_texts}")
        family("qwen_relay_translation_upstream_calls_total", "counter",
               "Upstream completions made by the translation endpoints (batches and texts asked again).")
        out.append(f"qwen_relay_translation_upstream_calls_total {self.translation_calls}")
        family("qwen_relay_translation_reasked_total", "counter",
               "Texts asked again alone because a batch answer left them out, merged or doubled them.")
        out.append(f"qwen_relay_translation_reasked_total {self.translation_reasked}")
        for collect in self.collectors:
            out.extend(collect())
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
