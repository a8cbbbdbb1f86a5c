"""Dialect ``qwen-v2``: create a chat, then complete it with one user message (docs/qwen-protocol.md §4, §7).

``POST /api/v2/chats/new`` gives a ``chat_id``; ``POST /api/v2/chat/completions
?chat_id=…`` takes exactly one user message, so the OpenAI history is folded
into it (``common.fold_messages``). The upstream always streams (``stream:false``
is not honoured, §4.2): non-stream clients get the aggregated answer. When the
client leaves mid-answer, ``stop_call`` asks the upstream to stop generating;
after the answer ``delete_call`` removes the chat, so the account does not fill up.

Bodies are the 2026 web app's, field for field (§7.3); no client field is
forwarded: sampling knobs the web app never sends are what a validator rejects.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import quote

from ..config import DEFAULT_MAX_UPSTREAM_BODY_BYTES, Config
from ..errors import InvalidRequest, UpstreamProtocolError
from ..jsonio import dumps
from ..openai_wire import ChatRequest
from ..pipeline.frames import Frame, StreamStats
from . import ChatOptions, Completion, SendJson, UpstreamCall
from .common import fold_messages, model_entries
from .phased import phase_frames
from .v2_errors import payload_error, refusal
from .web_headers import WebHeaders

__all__ = ["QwenV2", "feature_config"]

#: the encoded body is measured before the chat exists, with an id of a uuid's length.
_PLACEHOLDER_CHAT_ID = "00000000-0000-0000-0000-000000000000"
#: the thinking gears as the 2026 front end sends them (§7.3 [S, corroborated]).
_AUTO = {"thinking_enabled": True, "auto_thinking": True, "thinking_mode": "Auto", "thinking_format": "summary"}
_THINKING = {"thinking_enabled": True, "auto_thinking": False, "thinking_mode": "Thinking",
             "thinking_format": "summary"}
_FAST = {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}


def feature_config(options: ChatOptions) -> dict[str, Any]:
    """The message's ``feature_config``: the gear the client's switch selects.

    No switch → Auto (the web app's default); thinking on → Thinking; off → Fast,
    except for a model that cannot skip thinking, which answers Fast with
    ``invalid_input``: it is asked in Auto, and the handler keeps its thinking
    from the client. ``thinking_budget`` only when the client gave one: the 2026
    web app sends none.
    """
    thinking = options.thinking
    if thinking is False and not options.can_skip_thinking:
        thinking = None
    gear = _AUTO if thinking is None else (_THINKING if thinking else _FAST)
    config: dict[str, Any] = {**gear, "output_schema": "phase", "research_mode": "normal",
                              "auto_search": options.search}
    if options.thinking_budget is not None:
        config["thinking_budget"] = options.thinking_budget
    return config


class QwenV2:
    name = "qwen-v2"
    models_path = "/api/models"
    new_chat_path = "/api/v2/chats/new"
    chat_path = "/api/v2/chat/completions"
    stop_path = "/api/v2/chat/completions/stop"
    chats_path = "/api/v2/chats/"
    refusal = staticmethod(refusal)

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_UPSTREAM_BODY_BYTES) -> None:
        self._max_body_bytes = max_body_bytes

    def header_set(self, origin: str, config: Config) -> WebHeaders:
        return WebHeaders(origin, config)

    def models_call(self) -> UpstreamCall:
        return UpstreamCall(self.models_path, None, method="GET", kind="models")

    async def prepare(self, request: ChatRequest, options: ChatOptions, send_json: SendJson) -> UpstreamCall:
        """Create the chat and build its completion, refusing (400) a body the service would punish."""
        model = options.upstream_model
        chat_type = "search" if options.search else "t2t"
        now = int(time.time())
        message = {
            "id": None, "fid": str(uuid.uuid4()), "parentId": None, "childrenIds": [str(uuid.uuid4())],
            "role": "user", "content": fold_messages(request.messages), "user_action": "chat", "files": [],
            "timestamp": now, "models": [model], "model": model, "chat_type": chat_type,
            "sub_chat_type": chat_type, "extra": {"meta": {"subChatType": chat_type}},
            "feature_config": feature_config(options),
        }
        body: dict[str, Any] = {
            "stream": True, "version": "2.1", "incremental_output": True, "chat_id": _PLACEHOLDER_CHAT_ID,
            "chatId": _PLACEHOLDER_CHAT_ID, "parentId": "", "parent_id": None, "chat_mode": "normal",
            "model": model, "timestamp": now, "messages": [message],
        }
        size = len(dumps(body))
        if size > self._max_body_bytes:
            raise InvalidRequest(
                f"This conversation is {size} bytes as Qwen Chat would receive it; the limit is "
                f"{self._max_body_bytes} bytes (--max-upstream-body-bytes): above about 128 KB Qwen Chat "
                "answers with risk control. Shorten or condense the conversation.",
                param="messages", code="context_length_exceeded")
        created = await send_json(UpstreamCall(self.new_chat_path, {
            "chatId": "", "models": [model], "project_id": "", "timestamp": int(time.time() * 1000),
            "chat_type": chat_type, "chat_mode": "normal",
        }, kind="new_chat"))
        _raise_for_error(created)
        data = created.get("data") if isinstance(created, dict) else None
        chat_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            raise UpstreamProtocolError("Qwen Chat created no chat (no data.id in its answer).")
        body["chat_id"] = body["chatId"] = chat_id
        return UpstreamCall(f"{self.chat_path}?chat_id={quote(chat_id, safe='')}", body, stream=True,
                            chat_id=chat_id)

    def stream_frames(self, payloads: AsyncIterable[dict[str, Any]],
                      stats: StreamStats) -> AsyncIterator[Frame]:
        return phase_frames(payloads, stats)

    def completion(self, payload: Any) -> Completion:
        _raise_for_error(payload)
        raise UpstreamProtocolError("Qwen Chat answered one JSON body where a stream was expected.")

    def models(self, payload: Any) -> list[dict[str, Any]]:
        _raise_for_error(payload)
        return model_entries(payload)

    def stop_call(self, call: UpstreamCall, response_id: str) -> UpstreamCall | None:
        """``POST …/stop?chat_id=`` with both ids in the body too (§7.3 [S×2])."""
        chat_id = call.chat_id or ""
        return UpstreamCall(f"{self.stop_path}?chat_id={quote(chat_id, safe='')}",
                            {"chat_id": chat_id, "response_id": response_id}, chat_id=chat_id, kind="stop")

    def delete_call(self, call: UpstreamCall) -> UpstreamCall | None:
        if not call.chat_id:
            return None
        return UpstreamCall(self.chats_path + quote(call.chat_id, safe=""), None, method="DELETE",
                            chat_id=call.chat_id, kind="delete")


def _raise_for_error(payload: Any) -> None:
    """A JSON answer with HTTP 200 may still be an error: risk control comes so (§7.5)."""
    error = payload_error(payload)
    if error is not None:
        raise error
