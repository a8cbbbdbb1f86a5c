"""The model list the emulator serves at ``GET /api/models`` (§2.1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["models_payload"]

# Display names as the web app showed them; unknown ids are shown as themselves.
_NAMES = {
    "qwen-max-latest": "Qwen2.5-Max",
    "qwen-plus-latest": "Qwen2.5-Plus",
    "qwen-turbo-latest": "Qwen2.5-Turbo",
    "qwq-32b": "QwQ-32B",
    "qwen2.5-coder-32b-instruct": "Qwen2.5-Coder-32B-Instruct",
}


def _is_vision(model_id: str) -> bool:
    return model_id.startswith(("qwen-max", "qwen-plus", "qvq")) or "-vl-" in model_id


def _is_thinking(model_id: str) -> bool:
    return model_id.startswith(("qwq", "qvq", "qwen3"))


def models_payload(model_ids: Iterable[str]) -> dict[str, Any]:
    """Build the v1 shape, including the later ``chat_type`` and ``abilities`` keys.

    Those keys appeared only in later captures; serving them lets relay tests check
    that extra metadata is tolerated rather than required.
    """
    data = [
        {
            "id": model_id,
            "name": _NAMES.get(model_id, model_id),
            "object": "model",
            "owned_by": "qwen",
            "info": {
                "meta": {
                    "short_description": f"{_NAMES.get(model_id, model_id)} (emulated)",
                    "capabilities": {"vision": _is_vision(model_id)},
                    "chat_type": ["t2t", "search"],
                    "abilities": {"thinking": _is_thinking(model_id)},
                }
            },
        }
        for model_id in model_ids
    ]
    return {"data": data}
