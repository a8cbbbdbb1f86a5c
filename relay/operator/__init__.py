"""Operator mode: relay API keys in front of a server-side pool of Qwen tokens (issue 9).

``config`` parses the ``[operator]`` tables, ``keys`` checks callers and their
limits, ``pool`` chooses Qwen tokens, ``auth`` ties them to a request and
``runtime`` holds the live state that SIGHUP swaps.
"""

from __future__ import annotations

from .config import MODES, OperatorConfig, Reload, Secret, hash_key
from .keys import KeyRing, RelayKey
from .pool import TokenPool
from .runtime import Operator

__all__ = ["MODES", "KeyRing", "Operator", "OperatorConfig", "RelayKey", "Reload", "Secret", "TokenPool", "hash_key"]
