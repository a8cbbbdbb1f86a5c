"""A snapshot's metric families: the shape between the relay's counts and prometheus_client.

``Family`` is what ``Metrics.snapshot`` makes and both ways out take: one process
turns each into prometheus_client's ``*MetricFamily`` at a scrape (``to_metric``),
``--workers`` write them to the run directory (``relay.metrics_files``). The
collectors' Prometheus text becomes families too (``parse_families``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

__all__ = ["Family", "Histogram", "LabelValues", "parse_families", "to_metric"]

LabelValues = tuple[str, ...]


class Histogram:
    """Histogram of one series; ``observe`` is one bisect and three adds (``counts`` per bucket, not cumulative)."""

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

    def buckets(self) -> Iterator[tuple[str, int]]:
        """``(le, observations in this bucket)``, +Inf last, as prometheus_client spells the bounds."""
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            yield floatToGoString(bound), count  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class Family:
    """One metric family of a snapshot, in the shape both ways out take (this process, the run directory)."""

    #: as prometheus_client names it: a counter without its ``_total``.
    name: str
    #: "counter", "gauge" or "histogram".
    kind: str
    help: str
    labelnames: tuple[str, ...] = ()
    #: counters and gauges: label values → value.
    values: dict[LabelValues, float] = field(default_factory=dict)
    #: histograms: label values → histogram.
    histograms: dict[LabelValues, Histogram] = field(default_factory=dict)

    @classmethod
    def counter(cls, name: str, help_text: str, labelnames: tuple[str, ...] = (),
                values: dict[LabelValues, float] | None = None) -> Family:
        return cls(name.removesuffix("_total"), "counter", help_text, labelnames, values or {})


def to_metric(family: Family) -> Metric:
    """``family`` as prometheus_client's family of its kind (histogram buckets made cumulative)."""
    labelnames = list(family.labelnames)
    if family.kind == "histogram":
        histograms = HistogramMetricFamily(family.name, family.help, labels=labelnames)
        for values, histogram in family.histograms.items():
            running, buckets = 0, []
            for le, count in histogram.buckets():
                running += count
                buckets.append((le, float(running)))
            histograms.add_metric(list(values), buckets, histogram.total)
        return histograms
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=labelnames)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=labelnames)
    for values, value in family.values.items():
        metric.add_metric(list(values), value)
    return metric


def parse_families(text: str) -> Iterator[Family]:
    """A collector's Prometheus text as families (counters and gauges; the collectors make no other kind)."""
    for parsed in text_string_to_metric_families(text):
        if parsed.type not in ("counter", "gauge"):
            continue
        sample_name = parsed.name + "_total" if parsed.type == "counter" else parsed.name
        samples = [sample for sample in parsed.samples if sample.name == sample_name]
        labelnames = tuple(samples[0].labels) if samples else ()
        values = {tuple(sample.labels.get(name, "") for name in labelnames): sample.value for sample in samples}
        yield Family(parsed.name, parsed.type, parsed.documentation, labelnames, values)
