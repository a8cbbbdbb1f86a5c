"""Counters, gauges and histograms for ``GET /metrics``, exposed by prometheus_client.

Strategy. The hot path stays plain Python: a request adds to ints and dicts of
this process (``metrics.challenges += 1``, ``count_request``), no lock, no
syscall. ``snapshot()`` turns them, the callbacks in ``gauges`` and
``counters``, and the ``collectors``' Prometheus text into metric families
(``relay.metrics_families``); prometheus_client renders the exposition.

* One process (the default): the snapshot is taken when /metrics is asked for,
  so the answer is exact.
* ``--workers N``: every worker publishes its snapshot into the run's directory
  (``relay.metrics_files``, prometheus_client's multiprocess files) every
  ``PUBLISH_INTERVAL_S`` and just before it answers a scrape, and the worker
  that answers reads all of them: /metrics covers the process tree whichever
  worker answers, the other workers' numbers at most a second old. Counters
  and histograms are summed over every worker that ever ran (a replaced
  worker's counts stay, so no sum goes down; one killed outright loses at most
  its last second); each gauge is combined over the live workers as
  ``GAUGE_MODES`` says.

Why not prometheus_client's ``Counter`` objects on the hot path: in multiprocess
mode each increment writes an mmap under a lock, 3-4 µs measured here (6 µs a
histogram observation), and a chat completion makes about a dozen of them.

Counters never go down: a counter read from an owner that may start over (a
relay key dropped by a reload and added back) is followed by its growth.

Label values are bounded sets chosen by the relay (route templates, methods,
status codes, retry reasons and error codes, each family capped at
``MAX_SERIES`` series) or by the operator's config (relay key and account names,
8-digit token fingerprints); no token, key or prompt ever becomes a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .metrics_families import Family, Histogram, LabelValues, parse_families, to_metric
from .metrics_files import GAUGE_MODES, WorkerFiles, add_reader

__all__ = ["CONTENT_TYPE", "GAUGE_MODES", "MAX_SERIES", "PUBLISH_INTERVAL_S", "Family", "Histogram",
           "Metrics"]

#: the text format prometheus_client's ``generate_latest`` writes (what Prometheus 2.x asks for).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: how often a worker publishes: the most a scrape can lag behind another worker (scrapes are ~15 s apart).
PUBLISH_INTERVAL_S = 1.0
#: series a family with relay-chosen labels (retry reasons, error codes) may hold; later ones count as "other".
MAX_SERIES = 200

_log = logging.getLogger("relay.error")

K = TypeVar("K", str, tuple[str, str])
#: a value read when a snapshot is taken, with its help text.
Reading = tuple[str, Callable[[], float]]

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BOUNDS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_REQUEST_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: ``Metrics`` attributes that are plain counters: attribute, family, help.
_SCALARS = (
    ("upstream_attempts", "qwen_relay_upstream_attempts_total", "Upstream HTTP attempts, retries included."),
    ("bytes_out", "qwen_relay_bytes_relayed_total", "Response body bytes sent to clients."),
    ("divergences", "qwen_relay_deaccumulate_divergences_total",
     "Cumulative upstream frames that rewrote earlier text."),
    ("foreign_frames", "qwen_relay_upstream_foreign_frames_total", "Frames of a second candidate response, dropped."),
    ("dropped_phase_frames", "qwen_relay_upstream_dropped_phase_frames_total",
     "Frames of unknown or non-answer phases, dropped."),
    ("challenges", "qwen_relay_upstream_challenges_total",
     "Risk-control answers from the upstream (the credential then rests)."),
    ("garbage_events", "qwen_relay_upstream_garbage_events_total", "Upstream SSE events skipped as garbage."),
    ("client_disconnects", "qwen_relay_client_disconnects_total", "Clients that left before the answer ended."),
    ("translated_texts", "qwen_relay_translated_texts_total", "Texts the translation endpoints were asked for."),
    ("translation_calls", "qwen_relay_translation_upstream_calls_total",
     "Upstream completions made by the translation endpoints (batches and texts asked again)."),
    ("translation_reasked", "qwen_relay_translation_reasked_total",
     "Texts asked again alone because a batch answer left them out, merged or doubled them."),
)


class Metrics:
    """Everything ``GET /metrics`` reports, owned by one app (one worker).

    ``directory``: the run directory of ``--workers`` (None: this process alone).
    """

    def __init__(self, directory: str | None = None) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.request_duration: dict[str, Histogram] = {}
        self.first_byte: dict[str, Histogram] = {}
        self.upstream_retries: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        #: tokens by relay key name (the operator's config names them), as the answers' usage said.
        self.key_prompt_tokens: dict[str, int] = {}
        self.key_completion_tokens: dict[str, int] = {}
        self.upstream_first_byte = Histogram(_LATENCY_BOUNDS_S)
        self.stream_duration = Histogram(_DURATION_BOUNDS_S)
        self.upstream_attempts = 0
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
        #: SSE answers whose head went out and whose end has not yet.
        self.streams_open = 0
        #: read at each snapshot: the live gate and drain state (name → help, read).
        self.gauges: dict[str, Reading] = {}
        #: read at each snapshot: counts other objects keep (name → help, read).
        self.counters: dict[str, Reading] = {}
        #: more families, each collector returning Prometheus text lines (operator keys and tokens, caches).
        self.collectors: list[Callable[[], list[str]]] = []
        #: family → label values → [the owner's last value, the total reported]: counters never go down.
        self._totals: dict[str, dict[LabelValues, list[float]]] = {}
        self._files = WorkerFiles(directory) if directory is not None else None
        self._registry = CollectorRegistry(auto_describe=False)
        if directory is None:
            self._registry.register(_Snapshot(self))
        else:
            add_reader(self._registry, directory)

    # -- the hot path ------------------------------------------------------------------

    def count_request(self, method: str, route: str, status: int) -> None:
        if method not in _METHODS:
            method = "other"  # aiohttp takes any token as a method: a client must not mint labels
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def time_request(self, route: str, duration_s: float, first_byte_s: float) -> None:
        """A finished request: how long it took, and how long until its answer began."""
        durations = self.request_duration.get(route)
        if durations is None:
            durations = self.request_duration[route] = Histogram(_REQUEST_BOUNDS_S)
            self.first_byte[route] = Histogram(_LATENCY_BOUNDS_S)
        durations.observe(duration_s)
        self.first_byte[route].observe(first_byte_s)

    def count_error(self, route: str, code: str) -> None:
        """An answer that failed (a status of 400 or more, or an error event after the head)."""
        _add(self.errors, (route, code), (route, "other"))

    def count_retry(self, reason: str) -> None:
        _add(self.upstream_retries, reason, "other")

    def count_upstream_error(self, code: str) -> None:
        _add(self.upstream_errors, code, "other")

    def count_usage(self, key: str, prompt_tokens: int, completion_tokens: int) -> None:
        """An answer's tokens, for the relay key (by name) that asked."""
        _add(self.key_prompt_tokens, key, "other", prompt_tokens)
        _add(self.key_completion_tokens, key, "other", completion_tokens)

    # -- the way out -------------------------------------------------------------------

    def render(self) -> bytes:
        """The exposition: this process's numbers, or (``--workers``) every worker's."""
        if self._files is not None:
            self.publish()  # this worker's numbers are current; the others' at most PUBLISH_INTERVAL_S old
        return generate_latest(self._registry)

    def publish(self) -> None:
        """Write this worker's snapshot to the run directory (nothing to do for a single process)."""
        if self._files is None:
            return
        try:
            self._files.write(self.snapshot())
        except OSError as exc:  # a full disk must not take the relay down; the next publish tries again
            _log.warning("metrics_publish_failed", extra={"fields": {"error": str(exc)}})

    @contextlib.asynccontextmanager
    async def publishing(self) -> AsyncIterator[None]:
        """While open (a worker's life): publish every ``PUBLISH_INTERVAL_S``, and once more at the end."""
        if self._files is None:
            yield
            return
        task = asyncio.get_running_loop().create_task(self._publish_every(PUBLISH_INTERVAL_S))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.publish()  # the last requests' counts outlive the worker
            self._files.close()

    async def _publish_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.publish()

    def snapshot(self) -> list[Family]:
        """Every family as of now; counters as totals that never went down."""
        families = [*self._own_families(), *self._read_families(), *self._collected_families()]
        for family in families:
            if family.kind == "counter":
                self._monotonic(family)
        return families

    def _own_families(self) -> Iterator[Family]:
        yield Family.counter("qwen_relay_requests_total", "HTTP requests by method, route and status.",
                             ("method", "route", "status"),
                             {(method, route, str(status)): value
                              for (method, route, status), value in self.requests.items()})
        yield Family.counter("qwen_relay_errors_total",
                             "Error answers by route and error code (the envelope's code, else http_<status>).",
                             ("route", "code"), {key: value for key, value in self.errors.items()})
        yield _histograms("qwen_relay_request_duration_seconds",
                          "Time from a request's arrival to the end of its answer, by route.", self.request_duration)
        yield _histograms("qwen_relay_time_to_first_byte_seconds",
                          "Time from a request's arrival until its answer began (a stream's head; "
                          "a whole answer when it was ready), by route.", self.first_byte)
        yield Family("qwen_relay_streams_open", "gauge", "SSE answers being sent.",
                     values={(): self.streams_open})
        yield Family.counter("qwen_relay_upstream_retries_total", "Upstream retries by reason.", ("reason",),
                             _by_one_label(self.upstream_retries))
        yield Family.counter("qwen_relay_upstream_errors_total", "Requests failed by the upstream, by error code.",
                             ("code",), _by_one_label(self.upstream_errors))
        yield Family("qwen_relay_upstream_first_byte_seconds", "histogram",
                     "Time from sending a request upstream to its response headers.",
                     histograms={(): self.upstream_first_byte})
        yield Family("qwen_relay_stream_duration_seconds", "histogram", "Duration of relayed streams.",
                     histograms={(): self.stream_duration})
        yield Family.counter("qwen_relay_key_prompt_tokens_total",
                             "Prompt tokens of the answers per relay key name (the upstream's count, "
                             "else the relay's estimate).", ("key",), _by_one_label(self.key_prompt_tokens))
        yield Family.counter("qwen_relay_key_completion_tokens_total",
                             "Completion tokens of the answers per relay key name.", ("key",),
                             _by_one_label(self.key_completion_tokens))
        for attribute, name, help_text in _SCALARS:
            yield Family.counter(name, help_text, values={(): getattr(self, attribute)})

    def _read_families(self) -> Iterator[Family]:
        for name, (help_text, read) in self.gauges.items():
            yield Family(name, "gauge", help_text, values={(): read()})
        for name, (help_text, read) in self.counters.items():
            yield Family.counter(name, help_text, values={(): read()})

    def _collected_families(self) -> Iterator[Family]:
        for collect in self.collectors:
            lines = collect()
            if lines:
                yield from parse_families("\n".join(lines) + "\n")

    def _monotonic(self, family: Family) -> None:
        """Replace the owners' values by totals of their growth; keep series that went away."""
        totals = self._totals.setdefault(family.name, {})
        for labels, value in family.values.items():
            seen = totals.get(labels)
            if seen is None:
                totals[labels] = [value, value]
                continue
            growth = value - seen[0] if value >= seen[0] else value  # the owner started over from 0
            seen[0] = value
            seen[1] += growth
        family.values = {labels: total for labels, (_, total) in totals.items()}


class _Snapshot(Collector):
    """The one-process way out: a fresh snapshot at every scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family in self._metrics.snapshot():
            yield to_metric(family)


def _histograms(name: str, help_text: str, by_route: dict[str, Histogram]) -> Family:
    return Family(name, "histogram", help_text, ("route",),
                  histograms={(route, ): histogram for route, histogram in by_route.items()})


def _by_one_label(table: dict[str, int]) -> dict[LabelValues, float]:
    return {(label,): value for label, value in table.items()}


def _add(table: dict[K, int], key: K, other: K, amount: int = 1) -> None:
    """Add to ``table[key]``; a new key once ``table`` holds ``MAX_SERIES`` adds to ``other`` instead."""
    if key not in table and len(table) >= MAX_SERIES:
        key = other
    table[key] = table.get(key, 0) + amount
