"""Dialect ``qwen-v2``: create a chat, then complete it with one user message (docs/qwen-protocol.md §4, §7).

``POST /api/v2/chats/new`` gives a ``chat_id``; ``POST /api/v2/chat/completions
?chat_id=…`` takes exactly one user message, so the OpenAI history is folded
into it (``common.fold_messages``). The upstream always streams (``stream:false``
is not honoured, §4.2): non-stream clients get the aggregated answer. When the
client leaves mid-answer, ``stop_call`` asks the upstream to stop generating;
after the answer ``delete_call`` removes the chat, so the account does not fill up.

Bodies are the 2026 web app's, field for field (§7.3); no client field is
forwarded: sampling knobs the web app never sends are what a validator rejects.

Images (issue 20, QWEN_IMAGES.md): a request's ``image_url`` parts are uploaded
with its own credential and sent as ``files[]`` items beside the text
(``relay.images``); ``prepare_image`` builds the ``t2i`` / ``image_edit`` chats of
``/v1/images/*``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import quote

from ..config import DEFAULT_MAX_UPSTREAM_BODY_BYTES, Config
from ..errors import InvalidRequest, UnsupportedImage, UpstreamProtocolError
from ..images.sources import ImageSource
from ..images.vision import ImageInput, has_image_parts, split_images
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

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_UPSTREAM_BODY_BYTES,
                 images: ImageInput | None = None) -> None:
        self._max_body_bytes = max_body_bytes
        #: uploads a request's images (``relay.images.Uploads``); set by the app once its
        #: egress exists. None: a request with an image gets 400 ``unsupported_image``.
        self.images = images

    def header_set(self, origin: str, config: Config) -> WebHeaders:
        return WebHeaders(origin, config)

    def models_call(self) -> UpstreamCall:
        return UpstreamCall(self.models_path, None, method="GET", kind="models")

    async def prepare(self, request: ChatRequest, options: ChatOptions, send_json: SendJson) -> UpstreamCall:
        """Create the chat and build its completion, refusing (400) a body the service would punish.

        Images in the conversation are uploaded first, with the request's own
        credential (``send_json`` names it), and referenced in ``files[]``
        (QWEN_IMAGES.md §1.5): before the chat exists, so a refused upload leaves
        no chat behind.
        """
        model = options.upstream_model
        chat_type = "search" if options.search else "t2t"
        messages: list[dict[str, Any]] = request.messages
        sources: list[ImageSource] = []
        if has_image_parts(messages):
            messages, sources = split_images(messages, self.images.upstream_origin if self.images else None)
        body = self._completion_body(model, chat_type, fold_messages(messages), feature_config(options))
        self._check_size(body)
        if sources:
            if self.images is None:
                raise UnsupportedImage("This relay cannot upload images (no image uploader is set up).",
                                       param="messages")
            body["messages"][0]["files"] = await self.images.files_for(sources, send_json)
            self._check_size(body)
        chat_id = await self._new_chat(model, chat_type, send_json)
        return self._completion_call(body, chat_id)

    async def prepare_image(self, *, prompt: str, model: str, chat_type: str, ratio: str | None,
                            files: list[dict[str, Any]], send_json: SendJson) -> UpstreamCall:
        """Create a ``t2i`` or ``image_edit`` chat and build its completion (QWEN_IMAGES.md §2.1, §2.2).

        The chat's type is set at creation (the web app's "capability is a chat
        attribute"), and repeated in ``chat_type``, ``sub_chat_type`` and
        ``extra.meta.subChatType``; the aspect ratio goes in ``extra.meta.size``
        and the top-level ``size``. Thinking off: a picture gains nothing from it.
        """
        gear = {**_FAST, "output_schema": "phase", "research_mode": "normal", "auto_search": False}
        body = self._completion_body(model, chat_type, prompt, gear)
        message = body["messages"][0]
        message["files"] = files
        if ratio is not None:
            body["size"] = ratio
            message["extra"]["meta"]["size"] = ratio
        self._check_size(body)
        chat_id = await self._new_chat(model, chat_type, send_json)
        return self._completion_call(body, chat_id)

    def chat_call(self, chat_id: str) -> UpstreamCall:
        """``GET /api/v2/chats/<id>``: the chat as stored (where a generated image's URL also lands)."""
        return UpstreamCall(self.chats_path + quote(chat_id, safe=""), None, method="GET", chat_id=chat_id,
                            kind="chat")

    def _completion_body(self, model: str, chat_type: str, content: str,
                         features: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        message = {
            "id": None, "fid": str(uuid.uuid4()), "parentId": None, "childrenIds": [str(uuid.uuid4())],
            "role": "user", "content": content, "user_action": "chat", "files": [],
            "timestamp": now, "models": [model], "model": model, "chat_type": chat_type,
            "sub_chat_type": chat_type, "extra": {"meta": {"subChatType": chat_type}},
            "feature_config": features,
        }
        return {
            "stream": True, "version": "2.1", "incremental_output": True, "chat_id": _PLACEHOLDER_CHAT_ID,
            "chatId": _PLACEHOLDER_CHAT_ID, "parentId": "", "parent_id": None, "chat_mode": "normal",
            "model": model, "timestamp": now, "messages": [message],
        }

    def _check_size(self, body: dict[str, Any]) -> None:
        size = len(dumps(body))
        if size > self._max_body_bytes:
            raise InvalidRequest(
                f"This conversation is {size} bytes as Qwen Chat would receive it; the limit is "
                f"{self._max_body_bytes} bytes (--max-upstream-body-bytes): above about 128 KB Qwen Chat "
                "answers with risk control. Shorten or condense the conversation.",
                param="messages", code="context_length_exceeded")

    async def _new_chat(self, model: str, chat_type: str, send_json: SendJson) -> str:
        created = await send_json(UpstreamCall(self.new_chat_path, {
            "chatId": "", "models": [model], "project_id": "", "timestamp": int(time.time() * 1000),
            "chat_type": chat_type, "chat_mode": "normal",
        }, kind="new_chat"))
        _raise_for_error(created)
        data = created.get("data") if isinstance(created, dict) else None
        chat_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            raise UpstreamProtocolError("Qwen Chat created no chat (no data.id in its answer).")
        return chat_id

    def _completion_call(self, body: dict[str, Any], chat_id: str) -> UpstreamCall:
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
