"""``--workers N``: one listening socket, N worker processes, kept running.

Strategy. The supervisor binds the socket once (TCP with ``SO_REUSEADDR``, or
the ``--unix`` path), then ``os.fork()``s each worker; a worker serves the
inherited socket with aiohttp's ``SockSite``, so the kernel hands each new
connection to whichever worker accepts first, from one accept queue.

Why fork, not the "spawn" context: the supervisor never runs an event loop or a
thread (its loop is a ``selectors`` wait on a signal wake-up pipe and the
workers' ready pipes), so forking it is safe, and a child starts with the
parsed Config and the socket already in hand: nothing to pickle or re-import,
and a worker (or its replacement) listens in a fraction of a second.
``SO_REUSEPORT`` (a socket per worker) was not taken: the kernel hashes
connections to a listener, so a busy or dead worker's queue is not drained by
the others, and a ``--unix`` socket cannot be shared that way at all.

Lifecycle, as seen by systemd (``Type=notify``, ``NotifyAccess=main``):
  * only the supervisor talks to ``$NOTIFY_SOCKET`` (workers drop it): each
    worker writes one byte to its ready pipe once it listens, and ``READY=1``
    goes out when every worker has;
  * SIGTERM / SIGINT: ``STOPPING=1``, the supervisor closes its copy of the
    socket and sends SIGTERM to every worker, which drains as a single relay
    does (a second signal is forwarded too: it cuts the drains short); the
    supervisor exits 0 once all workers have exited. Workers ignore SIGINT, so
    a Ctrl-C that reaches the whole process group counts once, not twice; the
    unit uses ``KillMode=mixed`` for the same reason;
  * SIGHUP is forwarded: every worker re-reads ``[operator]`` itself;
  * a supervisor killed outright (SIGKILL, OOM) takes its workers along: the
    kernel sends each one SIGTERM (``PR_SET_PDEATHSIG``, Linux), so they drain
    and exit instead of serving on as orphans;
  * a worker that dies is replaced after a backoff (0.5 s doubling to 10 s,
    reset once a worker has lived 30 s); more than ``max(10, 2 N)`` restarts
    in a minute means something is wrong with every worker, so the supervisor
    stops the rest and exits 1, leaving the next move to systemd's ``Restart=``.

``/metrics`` covers every worker, whichever answers: the supervisor makes a
directory for the run where each worker publishes its numbers, forgets a dead
worker's gauges there, and removes it at exit (the next supervisor does, if
this one was killed outright); see ``relay/metrics.py``.

``--max-concurrency`` (the gate) and the in-memory state stay per worker: N
workers admit up to N x ``--max-concurrency`` streams, and per-key limits hold
across workers only with ``--state redis://…``.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from types import FrameType

from .config import Config
from .logs import setup_logging
from .metrics_files import forget_worker, make_run_directory, remove_run_directory
from .operator import Reload
from .systemd import notify

__all__ = ["supervise"]

_log = logging.getLogger("relay.error")
#: starts, stops, restarts and reloads: what the supervisor did, not what went wrong.
_lifecycle = logging.getLogger("relay.lifecycle")

_BACKLOG = 1024
_UNIX_SOCKET_MODE = 0o666
_RESTART_MIN_S = 0.5
_RESTART_MAX_S = 10.0
#: a worker that lived this long was healthy: its slot's backoff starts over.
_HEALTHY_AFTER_S = 30.0
_RESTART_WINDOW_S = 60.0
#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class _Worker:
    slot: int
    pid: int
    started_at: float
    #: read end of the ready pipe; None once the byte arrived (or the pipe closed).
    ready_fd: int | None
    ready: bool = False


def listen(config: Config) -> socket.socket:
    """The one listening socket every worker inherits."""
    if config.unix:
        path = config.unix
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket of a previous run, as asyncio removes it too
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, _UNIX_SOCKET_MODE)
    else:
        family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
    sock.listen(_BACKLOG)
    return sock


class _Supervisor:
    def __init__(self, config: Config, reload: Reload | None, sock: socket.socket) -> None:
        self.config = config
        self.reload = reload
        self.sock: socket.socket | None = sock
        self.workers: dict[int, _Worker] = {}
        self.selector = selectors.DefaultSelector()
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.gave_up = False
        self.announced = False
        self.backoff_s = dict.fromkeys(range(config.workers), _RESTART_MIN_S)
        self.restarts: collections.deque[float] = collections.deque()
        self.pid = os.getpid()
        #: slot → monotonic time its replacement is due.
        self.due: dict[int, float] = {}

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        self.selector.register(wake_r, selectors.EVENT_READ)
        try:
            for slot in range(self.config.workers):
                self._spawn(slot)
            while self.workers or (self.due and not self.stopping):
                self._wait(wake_r)
                self._handle_signals()
                self._reap()
                self._restart_due()
                if not self.announced and not self.stopping and self._all_ready():
                    self.announced = True
                    notify(f"READY=1\nSTATUS={self.config.workers} workers serving on {self._where()}")
                    _lifecycle.info("workers_ready", extra={"fields": {"workers": self.config.workers}})
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self._close_socket()
        _lifecycle.info("supervisor_exit", extra={"fields": {"gave_up": self.gave_up}})
        return 1 if self.gave_up else 0

    # -- events ----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)  # handled in the loop, never inside the handler

    def _wait(self, wake_r: int) -> None:
        timeout = None
        if self.due and not self.stopping:
            timeout = max(0.0, min(self.due.values()) - time.monotonic())
        for key, _ in self.selector.select(timeout):
            fd = int(key.fd)
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                continue
            worker = key.data
            try:
                data = os.read(fd, 16)
            except OSError:
                data = b""
            self.selector.unregister(fd)
            os.close(fd)
            worker.ready_fd = None
            worker.ready = bool(data)

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                ready = [w for w in self.workers.values() if w.ready]
                _lifecycle.info("reload_forwarded", extra={"fields": {"workers": len(ready)}})
                self._send(signal.SIGHUP, ready)

    def _stop(self, reason: str) -> None:
        """First call: drain every worker; a second one cuts their drains short."""
        if not self.stopping:
            self.stopping = True
            self.due.clear()
            notify("STOPPING=1\nSTATUS=draining")
            _lifecycle.info("supervisor_stopping", extra={"fields": {"signal": reason, "workers": len(self.workers)}})
            self._close_socket()  # the workers hold their own copies until their drains close them
        self._send(signal.SIGTERM, list(self.workers.values()))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd is not None:
                self.selector.unregister(worker.ready_fd)
                os.close(worker.ready_fd)
            code = os.waitstatus_to_exitcode(status)
            if self.config.metrics_dir is not None:
                forget_worker(self.config.metrics_dir, pid)  # its gauges go; its counts stay in the sums
            if self.stopping:
                _lifecycle.info("worker_exited", extra={"fields": {"worker_pid": pid, "code": code}})
                continue
            self._schedule_restart(worker, code)

    def _schedule_restart(self, worker: _Worker, code: int) -> None:
        now = time.monotonic()
        if now - worker.started_at >= _HEALTHY_AFTER_S:
            self.backoff_s[worker.slot] = _RESTART_MIN_S
        delay = self.backoff_s[worker.slot]
        self.backoff_s[worker.slot] = min(delay * 2, _RESTART_MAX_S)
        while self.restarts and self.restarts[0] < now - _RESTART_WINDOW_S:
            self.restarts.popleft()
        self.restarts.append(now)
        limit = max(10, 2 * self.config.workers)
        _log.error("worker_died", extra={"fields": {"worker_pid": worker.pid, "code": code,
                                                    "restart_in_s": delay, "restarts_last_minute": len(self.restarts)}})
        if len(self.restarts) > limit:
            _log.error("workers_keep_dying", extra={"fields": {"restarts_last_minute": len(self.restarts)}})
            self.gave_up = True
            self._stop("restart_limit")
            return
        self.due[worker.slot] = now + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.due.items()):
            if at <= now and not self.stopping:
                del self.due[slot]
                self._spawn(slot)

    # -- workers ---------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        assert self.sock is not None
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(ready_r)
            _worker_main(self.config, self.reload, self.sock, ready_w, self.selector, self.pid)
        os.close(ready_w)
        worker = _Worker(slot=slot, pid=pid, started_at=time.monotonic(), ready_fd=ready_r)
        self.workers[pid] = worker
        self.selector.register(ready_r, selectors.EVENT_READ, worker)
        _lifecycle.info("worker_started", extra={"fields": {"worker_pid": pid, "slot": slot}})

    def _send(self, signum: signal.Signals, workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass  # exited already; _reap will see it

    def _all_ready(self) -> bool:
        return len(self.workers) == self.config.workers and all(w.ready for w in self.workers.values())

    def _where(self) -> str:
        return f"unix:{self.config.unix}" if self.config.unix else f"{self.config.host}:{self.config.port}"

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _worker_main(config: Config, reload: Reload | None, sock: socket.socket, ready_w: int,
                 selector: selectors.BaseSelector, supervisor_pid: int) -> None:
    """The forked child: reset what belongs to the supervisor, serve, ``_exit``."""
    code = 1
    try:
        _die_with_supervisor(supervisor_pid)
        selector.close()  # the supervisor's pipes are not ours to read
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards it as SIGTERM
        os.environ.pop("NOTIFY_SOCKET", None)  # only the main PID may notify (NotifyAccess=main)
        from .server import run

        def on_ready(_where: str) -> None:
            os.write(ready_w, b"1")
            os.close(ready_w)

        code = run(config, reload, sock=sock, on_ready=on_ready)
    except SystemExit as exc:  # e.g. --loop uvloop without uvloop
        _log.error("worker_failed", extra={"fields": {"error": str(exc)}})
    except Exception:  # noqa: BLE001 (a forked child must reach os._exit, never the supervisor's code)
        _log.exception("worker_failed")
    finally:
        os._exit(code)


def _die_with_supervisor(supervisor_pid: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when the supervisor dies.

    Why: a supervisor killed outright (SIGKILL, the OOM killer) cannot forward
    anything, and its orphaned workers would keep serving, holding the port and
    the log pipe open, outside any service manager's view. ``PR_SET_PDEATHSIG``
    is Linux's; elsewhere the workers outlive it as before. A supervisor that
    died before the call is caught by the parent-pid check.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        _log.warning("pdeathsig_failed", extra={"fields": {"errno": ctypes.get_errno()}})
    if os.getppid() != supervisor_pid:
        os._exit(0)


def supervise(config: Config, reload: Reload | None = None) -> int:
    """Blocking entry point for ``--workers`` > 1; returns the exit code."""
    setup_logging(config.log_level)
    try:
        sock = listen(config)
    except OSError as exc:
        _log.error("cannot_listen", extra={"fields": {"error": str(exc)}})
        return 1
    where = f"unix:{config.unix}" if config.unix else f"{config.host}:{sock.getsockname()[1]}"
    _lifecycle.info("supervisor_listening", extra={"fields": {"url": where, "workers": config.workers}})
    # The run's metrics directory: every worker publishes there, and the one answering /metrics reads all.
    metrics_dir = make_run_directory()
    try:
        return _Supervisor(dataclasses.replace(config, metrics_dir=metrics_dir), reload, sock).run()
    finally:
        remove_run_directory(metrics_dir)
        if config.unix:
            try:
                os.unlink(config.unix)
            except FileNotFoundError:
                pass
