"""Where rotated jars are kept, so a restart resumes every login (``--state-dir`` or Redis).

A refresh token is spent by use: after a refresh only the new one works, so the
jar that holds it must outlive the process. With ``--state redis://…`` it lives
in Redis (shared by the fleet, which also shares the refresh lock); otherwise in
``--state-dir`` as one JSON file per account, mode 0600, written atomically
(a temporary file, fsync, rename), so a crash never leaves half a jar.

The store also gives the fleet-wide refresh lock of a login: Redis's when jars
live there; otherwise an ``flock`` on a file beside the jar, which every worker
of ``--workers N`` (and ``qwen-relay doctor``) sharing the directory respects.

Each record remembers which pasted jar it grew from (a digest of the account's
``cookies`` in the config): when the operator pastes a new login, the config
wins over the stale record.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..state import StateBackend
from .credential import CookieJar

__all__ = ["AccountStore", "default_state_dir", "source_digest", "write_private"]

_log = logging.getLogger("relay.error")


def default_state_dir(environ: dict[str, str] | None = None) -> str:
    """``$STATE_DIRECTORY`` when systemd sets it (``StateDirectory=``), else ``~/.local/state/qwen-relay``."""
    environ = dict(os.environ) if environ is None else environ
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    return str(Path(environ.get("HOME") or Path.home()) / ".local" / "state" / "qwen-relay")


def source_digest(cookies: str) -> str:
    """Which pasted jar a record grew from (the pasted secret itself is never stored twice)."""
    return hashlib.sha256(cookies.encode("utf-8")).hexdigest()[:16]


class AccountStore:
    """Load and save account jars: in the state backend when it keeps them, else in files."""

    def __init__(self, state: StateBackend, state_dir: str) -> None:
        self._state = state
        self._dir = Path(state_dir) / "accounts"
        self._held: dict[str, int] = {}

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        """The refresh lock of ``name`` across processes: a token, or None while another holds it."""
        if self._state.keeps_accounts:
            return await self._state.acquire_lock("refresh:" + name, ttl_s)
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return "unlocked"  # no state dir to share: this process's own lock is the single flight
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self._held[name] = fd
        return "flock"

    async def release_lock(self, name: str, token: str) -> None:
        if self._state.keeps_accounts:
            await self._state.release_lock("refresh:" + name, token)
            return
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    async def load(self, name: str, source: str) -> CookieJar | None:
        """The persisted jar of ``name`` if it grew from the same pasted jar, else None."""
        if self._state.keeps_accounts:
            raw = await self._state.load_account(name)
        else:
            try:
                raw = (self._dir / f"{name}.json").read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                _log.warning("account_state_unreadable", extra={"fields": {"account": name,
                                                                           "error": type(exc).__name__}})
                return None
        record = _decode(raw)
        if record is None or record.get("source") != source or not isinstance(record.get("cookies"), dict):
            return None
        return CookieJar({str(k): str(v) for k, v in record["cookies"].items()})

    async def save(self, name: str, source: str, jar: CookieJar) -> None:
        payload = json.dumps({"source": source, "cookies": jar.as_dict(), "saved_at": time.time()},
                             separators=(",", ":")).encode()
        if self._state.keeps_accounts:
            await self._state.store_account(name, payload)
            return
        try:
            write_private(self._dir / f"{name}.json", payload)
        except OSError as exc:
            _log.error("account_state_not_saved", extra={"fields": {"account": name, "error": type(exc).__name__,
                                                                    "dir": str(self._dir)}})


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def write_private(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file, fsync, rename), readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
