"""Shared state for limits, the token pool and the models cache: ``--state memory|redis://…``."""

from __future__ import annotations

from .base import WINDOW_S, Admission, Lease, MemoryState, RpmWindow, StateBackend, TokenFlags

__all__ = ["WINDOW_S", "Admission", "Lease", "MemoryState", "RpmWindow", "StateBackend", "TokenFlags",
           "open_state"]


def open_state(url: str, timeout_s: float, lease_s: float) -> StateBackend:
    """The backend named by ``--state``: ``memory``, or a ``redis://`` / ``rediss://`` / ``unix://`` URL."""
    if url == "memory":
        return MemoryState()
    from .redis_state import RedisState  # the redis package is only needed when it is used

    return RedisState(url, timeout_s=timeout_s, lease_s=lease_s)
