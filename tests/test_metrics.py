"""``relay.metrics`` and ``relay.metrics_files`` on plain data (issue 21 §1).

The exposition is read back with prometheus_client's own parser, as Prometheus
would read it. The workers' files are written by real forked processes, one
per worker, and read by a third, as ``--workers`` does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.app import make_app
from relay.config import Config
from relay.keys import METRICS
from relay.metrics import GAUGE_MODES, MAX_SERIES, Metrics
from relay.metrics_files import forget_worker, make_run_directory, remove_run_directory
from relay.operator.config import AccountSpec, KeySpec, OperatorConfig, Secret, hash_key


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition: (name, labels) → value."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def counter_text(name: str, count: int) -> Callable[[], list[str]]:
    return lambda: [f"# HELP {name} A count its owner keeps.", f"# TYPE {name} counter", f"{name} {count}"]


def test_a_counter_whose_owner_starts_over_keeps_growing() -> None:
    """A relay key removed by a reload and added back counts from 0 again: /metrics adds, never drops."""
    metrics = Metrics()
    for owner_value, reported in ((5, 5), (2, 7), (4, 9), (4, 9)):
        metrics.collectors[:] = [counter_text("qwen_relay_key_requests_total", owner_value)]
        assert value(metrics, "qwen_relay_key_requests_total") == reported


def test_rejections_of_a_full_relay_are_a_counter_not_a_gauge() -> None:
    """``qwen_relay_rejected_total`` (issue 21 review): TYPE counter, as its name promises."""
    app = make_app(Config())
    families = {family.name: family.type for family in
                text_string_to_metric_families(app[METRICS].render().decode())}
    assert families["qwen_relay_rejected"] == "counter"
    assert not [name for name, kind in families.items() if kind == "gauge" and name.endswith("_total")]


def test_relay_chosen_labels_are_capped_and_the_rest_is_counted_as_other() -> None:
    """An upstream inventing a new error code per request cannot grow /metrics without bound."""
    metrics = Metrics()
    for number in range(MAX_SERIES + 300):
        metrics.count_retry(f"reason_{number}")
        metrics.count_error("/v1/chat/completions", f"code_{number}")
    found = samples(metrics)
    retries = {labels: count for (name, labels), count in found.items() if name == "qwen_relay_upstream_retries_total"}
    assert len(retries) == MAX_SERIES + 1
    assert retries[frozenset({("reason", "other")})] == 300
    assert sum(retries.values()) == MAX_SERIES + 300
    errors = [labels for (name, labels) in found if name == "qwen_relay_errors_total"]
    assert len(errors) == MAX_SERIES + 1


def test_a_made_up_http_method_is_counted_as_other() -> None:
    metrics = Metrics()
    metrics.count_request("BREW", "unmatched", 405)
    metrics.count_request("POST", "/v1/chat/completions", 200)
    assert value(metrics, "qwen_relay_requests_total", method="other", route="unmatched", status="405") == 1
    assert value(metrics, "qwen_relay_requests_total", method="POST", route="/v1/chat/completions",
                 status="200") == 1


def test_latency_first_byte_usage_and_streams_are_exported() -> None:
    metrics = Metrics()
    metrics.time_request("/v1/chat/completions", 2.0, 0.2)
    metrics.count_usage("alice", 12, 34)
    metrics.streams_open += 1
    assert value(metrics, "qwen_relay_request_duration_seconds_bucket", route="/v1/chat/completions",
                 le="1.0") == 0
    assert value(metrics, "qwen_relay_request_duration_seconds_bucket", route="/v1/chat/completions",
                 le="2.5") == 1
    assert value(metrics, "qwen_relay_time_to_first_byte_seconds_bucket", route="/v1/chat/completions",
                 le="0.25") == 1
    assert value(metrics, "qwen_relay_time_to_first_byte_seconds_count", route="/v1/chat/completions") == 1
    assert value(metrics, "qwen_relay_key_prompt_tokens_total", key="alice") == 12
    assert value(metrics, "qwen_relay_key_completion_tokens_total", key="alice") == 34
    assert value(metrics, "qwen_relay_streams_open") == 1


def test_every_gauge_a_full_app_exports_says_how_workers_combine_it() -> None:
    """A new gauge must choose sum, max or min for --workers; unlisted ones would be summed silently."""
    operator = OperatorConfig(
        mode="both", keys=(KeySpec("alice", bytes.fromhex(hash_key("sk-alice").removeprefix("sha256:"))),),
        tokens=(Secret("pool-token-0123456789"),),
        accounts=(AccountSpec("acc", Secret("token=header.payload.signature; refresh_token=r")),))
    app = make_app(Config(operator=operator, translation_cache="memory"))
    gauges = {family.name for family in text_string_to_metric_families(app[METRICS].render().decode())
              if family.type == "gauge"}
    assert {"qwen_relay_in_flight", "qwen_relay_streams_open", "qwen_relay_account_state",
            "qwen_relay_token_state", "qwen_relay_translation_cache_items"} <= gauges
    assert gauges - set(GAUGE_MODES) == set()
    assert set(GAUGE_MODES.values()) <= {"sum", "max", "min"}


def _worker(directory: str, requests: int, in_flight: int, active: int, expires_in_s: float) -> int:
    """Fork a process that publishes like a worker of --workers, then exits; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        metrics = Metrics(directory)
        for _ in range(requests):
            metrics.count_request("POST", "/v1/chat/completions", 200)
        metrics.time_request("/v1/chat/completions", 0.5, 0.1)
        metrics.gauges["qwen_relay_in_flight"] = ("In flight.", lambda: in_flight)
        metrics.collectors.append(lambda: [
            "# HELP qwen_relay_account_state State.", "# TYPE qwen_relay_account_state gauge",
            f'qwen_relay_account_state{{account="a",state="active"}} {active}',
            "# HELP qwen_relay_account_token_expires_in_seconds Left.",
            "# TYPE qwen_relay_account_token_expires_in_seconds gauge",
            f'qwen_relay_account_token_expires_in_seconds{{account="a"}} {expires_in_s}'])
        metrics.publish()
        code = 0
    finally:
        os._exit(code)  # never back into pytest in the child


def test_workers_counters_are_summed_gauges_combined_and_a_dead_workers_gauges_dropped() -> None:
    directory = make_run_directory()
    try:
        first = _worker(directory, requests=3, in_flight=2, active=0, expires_in_s=900)
        second = _worker(directory, requests=4, in_flight=5, active=1, expires_in_s=40)
        for pid in (first, second):
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        reader = Metrics(directory)  # as the worker answering /metrics
        assert value(reader, "qwen_relay_requests_total", method="POST", route="/v1/chat/completions",
                     status="200") == 7
        assert value(reader, "qwen_relay_request_duration_seconds_count", route="/v1/chat/completions") == 2
        assert value(reader, "qwen_relay_in_flight") == 7  # sum
        assert value(reader, "qwen_relay_account_state", account="a", state="active") == 1  # max
        assert value(reader, "qwen_relay_account_token_expires_in_seconds", account="a") == 40  # min
        forget_worker(directory, second)  # the supervisor reaped it
        assert value(reader, "qwen_relay_requests_total", method="POST", route="/v1/chat/completions",
                     status="200") == 7  # its counts stay: sums never go down
        assert value(reader, "qwen_relay_in_flight") == 2
        assert value(reader, "qwen_relay_account_state", account="a", state="active") == 0
        assert value(reader, "qwen_relay_account_token_expires_in_seconds", account="a") == 900
    finally:
        remove_run_directory(directory)


def test_a_worker_republishing_replaces_its_gauges_so_a_removed_series_goes() -> None:
    """An account removed by a reload leaves the answer (gauge files are rewritten whole)."""
    directory = make_run_directory()
    try:
        metrics = Metrics(directory)
        lines = ["# HELP qwen_relay_account_in_flight In flight.", "# TYPE qwen_relay_account_in_flight gauge",
                 'qwen_relay_account_in_flight{account="a"} 1', 'qwen_relay_account_in_flight{account="b"} 2']
        metrics.collectors.append(lambda: lines)
        assert value(metrics, "qwen_relay_account_in_flight", account="b") == 2
        del lines[-1]
        assert value(metrics, "qwen_relay_account_in_flight", account="b") is None
        assert value(metrics, "qwen_relay_account_in_flight", account="a") == 1
    finally:
        remove_run_directory(directory)


def test_the_directory_of_a_supervisor_killed_outright_is_removed_by_the_next_one() -> None:
    """SIGKILL leaves a run directory behind; the next supervisor removes it, not a living one's."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # reaped: ``pid`` names no process now
    parent = tempfile.gettempdir()
    orphan = tempfile.mkdtemp(prefix=f"qwen-relay-metrics-{pid}-", dir=parent)
    living = tempfile.mkdtemp(prefix=f"qwen-relay-metrics-{os.getpid()}-", dir=parent)
    Path(orphan, "counter_1-ab.db").write_bytes(b"")
    fresh = make_run_directory()
    try:
        assert not os.path.exists(orphan)
        assert os.path.isdir(living) and os.path.isdir(fresh)
        assert os.path.basename(fresh).startswith(f"qwen-relay-metrics-{os.getpid()}-")
    finally:
        for path in (orphan, living, fresh):
            remove_run_directory(path)
