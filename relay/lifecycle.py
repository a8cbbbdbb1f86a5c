"""Whether the relay is serving or draining, shared by health, middleware and server."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lifecycle"]


@dataclass(slots=True)
class Lifecycle:
    #: set on SIGTERM/SIGINT: /healthz says 503 and new requests are refused.
    draining: bool = False
