"""Dialect ``qwen-v2``: create a chat, then complete it with one user message (§4).

``POST /api/v2/chats/new`` gives a ``chat_id``; ``POST /api/v2/chat/completions
?chat_id=…`` takes exactly one user message, so the OpenAI history is folded
into it (``common.fold_messages``). The upstream always streams (``stream:false``
is not honoured, §4.2): non-stream clients get the aggregated answer. When the
client leaves mid-answer, ``stop_call`` asks the upstream to stop generating.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ..errors import UpstreamProtocolError
from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats
from . import ChatOptions, Completion, PostJson, UpstreamCall
from .common import fold_messages, model_entries, raise_for_unsuccessful
from .phased import phase_frames
from .qwen_v1 import RELAY_ONLY_FIELDS

__all__ = ["DEFAULT_THINKING_BUDGET", "QwenV2"]

#: the web app's budget since late 2025 [C]; a request's ``thinking_budget`` replaces it.
DEFAULT_THINKING_BUDGET = 81920
#: fields of the v2 body the relay sets itself (the client's are not forwarded).
_V2_FIELDS = frozenset({"model", "messages", "stream", "chat_id", "chat_mode", "parent_id", "timestamp",
                        "version", "incremental_output"})


def _thinking_mode(thinking: bool | None) -> str:
    return "Auto" if thinking is None else ("Thinking" if thinking else "Fast")


class QwenV2:
    name = "qwen-v2"
    models_path = "/api/models"
    new_chat_path = "/api/v2/chats/new"
    chat_path = "/api/v2/chat/completions"
    stop_path = "/api/v2/chat/completions/stop"

    async def prepare(self, request: ChatRequest, options: ChatOptions, post_json: PostJson) -> UpstreamCall:
        chat_type = "search" if options.search else "t2t"
        created = await post_json(self.new_chat_path, {
            "title": "New Chat", "models": [options.upstream_model], "chat_mode": "normal",
            "chat_type": chat_type, "timestamp": int(time.time() * 1000),
        })
        raise_for_unsuccessful(created)
        data = created.get("data") if isinstance(created, dict) else None
        chat_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            raise UpstreamProtocolError("Qwen Chat created no chat (no data.id in its answer).")
        now = int(time.time())
        message = {
            "fid": str(uuid.uuid4()), "parentId": None, "childrenIds": [], "role": "user",
            "content": fold_messages(request.messages), "user_action": "chat", "files": [],
            "timestamp": now, "models": [options.upstream_model], "chat_type": chat_type,
            "sub_chat_type": chat_type, "extra": {"meta": {"subChatType": chat_type}},
            "feature_config": {
                "thinking_enabled": bool(options.thinking),
                "output_schema": "phase",
                "thinking_budget": options.thinking_budget or DEFAULT_THINKING_BUDGET,
                "research_mode": "normal",
                "auto_thinking": options.thinking is None,
                "thinking_mode": _thinking_mode(options.thinking),
                "thinking_format": "summary",
                "auto_search": options.search,
            },
        }
        passthrough = {k: v for k, v in request.body.items()
                       if k not in RELAY_ONLY_FIELDS and k not in _V2_FIELDS}
        body = {
            **passthrough,
            "stream": True, "version": "2.1", "incremental_output": True, "chat_id": chat_id,
            "chat_mode": "normal", "model": options.upstream_model, "parent_id": None,
            "timestamp": now, "messages": [message],
        }
        return UpstreamCall(f"{self.chat_path}?chat_id={chat_id}", body, stream=True, chat_id=chat_id)

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        return phase_frames(payloads, stats)

    def completion(self, payload: Any) -> Completion:
        raise_for_unsuccessful(payload)
        raise UpstreamProtocolError("Qwen Chat answered one JSON body where a stream was expected.")

    def models(self, payload: Any) -> list[dict[str, Any]]:
        return model_entries(payload)

    def stop_call(self, call: UpstreamCall, response_id: str) -> UpstreamCall | None:
        return UpstreamCall(self.stop_path, {"chat_id": call.chat_id, "response_id": response_id}, stream=False)
