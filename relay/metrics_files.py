"""The run directory of ``--workers``: each worker's metrics files, and the reading of all of them.

The files are prometheus_client's multiprocess format (``prometheus_client.mmap_dict``:
one file per worker and kind, each key naming the family, sample and labels), so
the library's ``MultiProcessCollector`` reads and combines them: counters and
histograms summed over every file, gauges over the live workers' files as the
file name's mode says (``gauge_livesum_<pid>.db``, ``livemax``, ``livemin``).

What differs from the library's own writers (``PROMETHEUS_MULTIPROC_DIR``, which
it reads when it is imported, long before the relay knows about ``--workers``):
a worker writes whole snapshots (``Metrics.publish``), not every increment, and
its directory is passed explicitly (``Config.metrics_dir``).

* Counters and histograms: one file each per worker, values rewritten in place
  (only the ones that changed). The files outlive their worker, so its counts
  stay in the sums; the names carry a random tag beside the pid, so a later
  worker given the same pid starts files of its own.
* Gauges: rewritten whole at each publish into a temporary name, then renamed
  over the real one: a reader never sees half a file, and a series that went
  away (an account removed by a reload) leaves the answer too. The supervisor
  removes a dead worker's gauge files (``forget_worker``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import CollectorRegistry

from .metrics_families import Family

__all__ = ["GAUGE_MODES", "WorkerFiles", "add_reader", "forget_worker", "make_run_directory", "remove_run_directory"]

_MODES = ("sum", "max", "min")
#: the run directories' names: this prefix, the supervisor's pid, a random part.
_PREFIX = "qwen-relay-metrics-"
#: how ``--workers`` combine each gauge over the live workers: "sum", "max" or "min" (unlisted: "sum").
GAUGE_MODES: dict[str, str] = {
    "qwen_relay_in_flight": "sum",
    "qwen_relay_max_concurrency": "sum",  # the process tree's capacity: N x --max-concurrency
    "qwen_relay_draining": "max",
    "qwen_relay_streams_open": "sum",
    "qwen_relay_key_in_flight": "sum",
    "qwen_relay_token_in_flight": "sum",
    "qwen_relay_account_in_flight": "sum",
    # 1 where any worker sees the credential in that state (each worker keeps its own pool).
    "qwen_relay_token_state": "max",
    "qwen_relay_account_state": "max",
    # the worker whose access token expires first decides.
    "qwen_relay_account_token_expires_in_seconds": "min",
    "qwen_relay_translation_cache_items": "sum",  # the memory cache is per worker
    "qwen_relay_translation_cache_bytes": "sum",
    "qwen_relay_state_up": "min",
}


def make_run_directory() -> str:
    """A fresh directory for this run's metrics files (mode 0700: mkdtemp's), named after this process.

    A supervisor killed outright (SIGKILL, the OOM killer) cannot remove its
    directory; the next one to start removes those whose process is gone.
    """
    _remove_orphans(tempfile.gettempdir())
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")


def _remove_orphans(parent: str) -> None:
    with os.scandir(parent) as entries:
        for entry in entries:
            pid = entry.name.removeprefix(_PREFIX).partition("-")[0]
            if (entry.name.startswith(_PREFIX) and pid.isdigit() and not _is_running(int(pid))
                    and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid()):
                shutil.rmtree(entry.path, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_run_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def forget_worker(path: str, pid: int) -> None:
    """Drop a dead worker's gauges (its counters stay: they are part of the sums)."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def add_reader(registry: CollectorRegistry, path: str) -> None:
    """Have ``registry`` collect every worker's files in ``path`` at each scrape."""
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]


class WorkerFiles:
    """This worker's files in the run directory; opened at the first ``write``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._files: dict[str, MmapedDict] = {}
        #: key → value last written to the counter and histogram files.
        self._written: dict[str, float] = {}
        #: mode → the gauge file's content last written.
        self._gauges: dict[str, list[tuple[str, float]]] = {}
        self._keys: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}

    def write(self, families: Iterable[Family]) -> None:
        gauges: dict[str, list[tuple[str, float]]] = {mode: [] for mode in _MODES}
        for family in families:
            names = family.labelnames
            if family.kind == "gauge":
                entries = gauges[GAUGE_MODES.get(family.name, "sum")]
                for labels, value in family.values.items():
                    entries.append((self._key(family, family.name, names, labels), value))
            elif family.kind == "counter":
                for labels, value in family.values.items():
                    self._set("counter", self._key(family, family.name + "_total", names, labels), value)
            else:
                bucket_names = (*names, "le")
                for labels, histogram in family.histograms.items():
                    for le, count in histogram.buckets():  # per bucket: the reader accumulates them
                        key = self._key(family, family.name + "_bucket", bucket_names, (*labels, le))
                        self._set("histogram", key, count)
                    self._set("histogram", self._key(family, family.name + "_sum", names, labels), histogram.total)
        for mode, entries in gauges.items():
            self._replace_gauges(mode, entries)

    def close(self) -> None:
        for file in self._files.values():
            file.close()  # type: ignore[no-untyped-call]
        self._files.clear()

    def _key(self, family: Family, sample: str, names: tuple[str, ...], labels: tuple[str, ...]) -> str:
        """The file key of one sample (JSON, so cached: a publish makes one per series)."""
        cache_key = (family.name, sample, names, labels)
        key = self._keys.get(cache_key)
        if key is None:
            key = self._keys[cache_key] = mmap_key(family.name, sample, list(names), list(labels), family.help)
        return key

    def _set(self, kind: str, key: str, value: float) -> None:
        if self._written.get(key) == value:
            return
        file = self._files.get(kind)
        if file is None:
            tag = f"{os.getpid()}-{secrets.token_hex(4)}"
            file = self._files[kind] = MmapedDict(os.path.join(self.directory, f"{kind}_{tag}.db"))  # type: ignore[no-untyped-call]
        file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        self._written[key] = value

    def _replace_gauges(self, mode: str, entries: list[tuple[str, float]]) -> None:
        if entries == self._gauges.get(mode, []):
            return
        path = os.path.join(self.directory, f"gauge_live{mode}_{os.getpid()}.db")
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            temporary = path + ".new"  # not *.db: the reader never opens it
            if os.path.exists(temporary):
                os.unlink(temporary)  # a publish cut short (the disk was full)
            file = MmapedDict(temporary)  # type: ignore[no-untyped-call]
            try:
                for key, value in entries:
                    file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
            finally:
                file.close()  # type: ignore[no-untyped-call]
            os.replace(temporary, path)
        self._gauges[mode] = entries
