"""The model list the emulator serves: ``GET /api/models`` (§2.1) and ``/api/v2/models/`` (§4.4).

Both paths serve the same entries; v2 wraps them in its ``success`` envelope. Each
entry carries the later capability keys (``info.meta.chat_type`` and
``info.meta.abilities.thinking``) so a relay can decide which models get thinking or
search variants, and at least one model lacks each capability.

[I] ``abilities.thinking`` is 0 for "cannot think" and 1/2/3 for the kinds of
thinking the web app distinguishes; what 1, 2 and 3 mean is not in the notes, so
relays should treat any non-zero value as "can think". The capability table is
invented from the public model descriptions, not captured.

``info.meta.think_skip.enable`` (§7.3 [S]) is on every model that can think:
``true`` where thinking can be switched off, ``false`` for the qwen3.8 line, which
answers ``thinking_enabled: false`` with an in-stream ``invalid_input``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelCaps", "capabilities", "models_payload", "v2_models_payload"]


@dataclass(frozen=True, slots=True)
class ModelCaps:
    """What one model can do, as its catalogue entry says."""

    name: str
    chat_types: tuple[str, ...]
    thinking: int
    vision: bool
    max_context_length: int
    # think_skip.enable: False for models that always think (§7.3).
    can_skip_thinking: bool = True

    @property
    def can_think(self) -> bool:
        return self.thinking > 0

    @property
    def can_search(self) -> bool:
        return "search" in self.chat_types


_T2T_SEARCH = ("t2t", "search")
_FULL = ("t2t", "search", "t2i", "t2v", "artifacts")
_CAPS = {
    "qwen-max-latest": ModelCaps("Qwen2.5-Max", _T2T_SEARCH, 1, True, 131_072),
    "qwen-plus-latest": ModelCaps("Qwen2.5-Plus", ("t2t", "search", "t2i"), 1, True, 131_072),
    "qwen-turbo-latest": ModelCaps("Qwen2.5-Turbo", _T2T_SEARCH, 0, False, 1_000_000),
    "qwq-32b": ModelCaps("QwQ-32B", _T2T_SEARCH, 2, False, 131_072),
    "qwen2.5-coder-32b-instruct": ModelCaps("Qwen2.5-Coder-32B-Instruct", ("t2t",), 0, False, 131_072),
    "qwen3-235b-a22b": ModelCaps("Qwen3-235B-A22B-2507", ("t2t", "search", "t2i"), 1, True, 131_072),
    "qwen3-coder-plus": ModelCaps("Qwen3-Coder", ("t2t", "search", "artifacts"), 0, False, 1_000_000),
    "qwen3-max": ModelCaps("Qwen3-Max", _FULL, 3, True, 262_144),
    "qwen3.8-plus": ModelCaps("Qwen3.8-Plus", _T2T_SEARCH, 1, True, 1_000_000, can_skip_thinking=False),
}


def capabilities(model_id: str) -> ModelCaps:
    """Look a model up; ids outside the table get capabilities guessed from the id."""
    known = _CAPS.get(model_id)
    if known is not None:
        return known
    thinks = model_id.startswith(("qwq", "qvq", "qwen3"))
    vision = model_id.startswith(("qwen-max", "qwen-plus", "qvq")) or "-vl-" in model_id
    return ModelCaps(model_id, _T2T_SEARCH, 1 if thinks else 0, vision, 131_072)


def _entry(model_id: str) -> dict[str, Any]:
    caps = capabilities(model_id)
    meta: dict[str, Any] = {
        "short_description": f"{caps.name} (emulated)",
        "capabilities": {"vision": caps.vision},
        "max_context_length": caps.max_context_length,
        "chat_type": list(caps.chat_types),
        "abilities": {"thinking": caps.thinking},
    }
    if caps.can_think:
        meta["think_skip"] = {"enable": caps.can_skip_thinking}
    return {
        "id": model_id,
        "name": caps.name,
        "object": "model",
        "owned_by": "qwen",
        "info": {"meta": meta},
        "preset": True,
    }


def models_payload(model_ids: Iterable[str]) -> dict[str, Any]:
    """Build the v1 shape ``{"data": [...]}`` (§2.1 [C]; keys beyond ``data`` unverified)."""
    return {"data": [_entry(model_id) for model_id in model_ids]}


def v2_models_payload(model_ids: Iterable[str]) -> dict[str, Any]:
    """Build the v2 shape ``{"success", "request_id", "data": {"data": [...]}}`` (§4.4 [S])."""
    return {"success": True, "request_id": str(uuid.uuid4()), "data": models_payload(model_ids)}
