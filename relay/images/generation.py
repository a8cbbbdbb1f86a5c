"""Read a ``t2i`` / ``image_edit`` answer: the image URLs, their sizes, the caption (QWEN_IMAGES.md §2.1, §2.2).

Pure over decoded payloads (the handler reads the stream). The answer comes as
phase-tagged SSE like a chat's: ``response.created``, maybe ``image_gen_think``
text and an ``answer`` caption, then an image phase (``image_gen``, or
``image_edit`` for edits) whose ``delta.content`` is the image's URL, with
``extra.output_image_hw: [[height, width]]``. As in a chat (§7.4), only the
first response of the stream is followed; another ``response_id``'s frames are
dropped. Every error shape of the chat path raises what it means there
(``v2_errors.payload_error``); an edit's stream may echo the input image, so
URLs equal to an input's are left out (compared whole, not by host).

When a stream ends without a URL the image may still be in the stored chat:
``images_in_chat`` reads ``GET /api/v2/chats/<id>`` the way the web app shows
the chat (the assistant's ``content_list`` entries of an image phase).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..dialects.common import describe_error
from ..dialects.v2_errors import payload_error
from ..errors import RelayError, UpstreamInterrupted

__all__ = ["IMAGE_PHASES", "GeneratedImage", "Generation", "collect_generation", "images_in_chat"]

#: the phases whose content is an image URL (the web bundle's IMAGE_GEN and IMAGE_EDIT, §2.1).
IMAGE_PHASES = frozenset({"image_gen", "image_edit", "t2i", "image"})
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((https?://[^)\s]+)\)")
#: a caption is a sentence or two; a runaway one is cut rather than kept whole.
_MAX_CAPTION_CHARS = 4000


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    url: str
    #: from ``output_image_hw`` (``[h, w]``, §2.1 KT measured), when the upstream said.
    height: int | None = None
    width: int | None = None


@dataclass(slots=True)
class Generation:
    """What one image chat answered."""

    images: list[GeneratedImage] = field(default_factory=list)
    #: the ``answer`` phase's text: OpenAI's ``revised_prompt`` is the closest field.
    caption: str = ""
    response_id: str | None = None


def _image_error(payload: Any) -> RelayError | None:
    """The chat path's error of a payload, except ``Bad_Request`` "internal error": another try (§2.1: R, G)."""
    error = payload_error(payload)
    if error is None or error.instance_code != "upstream_bad_request":
        return error
    details = payload.get("data") if payload.get("success") is False else payload.get("error")
    if "internal error" in describe_error(details)[1].lower():
        return UpstreamInterrupted("Qwen Chat's image chat failed with Bad_Request \"internal error\".",
                                   code="upstream_internal_error")
    return error


def _image_url(content: Any) -> str | None:
    """An image phase's URL: the content itself, or the first Markdown image in it."""
    if not isinstance(content, str):
        return None
    text = content.strip()
    if text.startswith(("https://", "http://")) and not any(ch.isspace() for ch in text):
        return text
    match = _MARKDOWN_IMAGE.search(text)
    return match.group(1) if match else None


def _size(extra: Any) -> tuple[int | None, int | None]:
    """``(height, width)`` of ``extra.output_image_hw = [[h, w]]``; Nones when absent or malformed."""
    hw = extra.get("output_image_hw") if isinstance(extra, dict) else None
    if isinstance(hw, list) and hw and isinstance(hw[0], list):
        hw = hw[0]
    if isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                      for v in hw):
        return hw[0], hw[1]
    return None, None


def _add(generation: Generation, url: str | None, extra: Any, exclude: Collection[str]) -> None:
    if url is None or url in exclude:
        return
    height, width = _size(extra)
    for index, seen in enumerate(generation.images):
        if seen.url == url:  # the finished frame repeats the typing one's URL
            if seen.height is None and height is not None:
                generation.images[index] = GeneratedImage(url, height, width)
            return
    generation.images.append(GeneratedImage(url, height, width))


async def collect_generation(payloads: AsyncIterable[dict[str, Any]],
                             exclude: Collection[str] = ()) -> Generation:
    """Read the whole answer; raise the error it carries, if any."""
    generation = Generation()
    async for payload in payloads:
        error = _image_error(payload)
        if error is not None:
            raise error
        created = payload.get("response.created")
        if isinstance(created, dict):
            if generation.response_id is None and isinstance(created.get("response_id"), str):
                generation.response_id = created["response_id"]
            continue
        response_id = payload.get("response_id")
        if isinstance(response_id, str):
            if generation.response_id is None:
                generation.response_id = response_id
            elif response_id != generation.response_id:
                continue  # a second candidate's frame (§7.4)
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        delta = choice.get("delta") if choice is not None else None
        if not isinstance(delta, dict):
            continue
        phase = delta.get("phase")
        if phase in IMAGE_PHASES:
            _add(generation, _image_url(delta.get("content")), delta.get("extra"), exclude)
        elif phase == "answer" and isinstance(delta.get("content"), str) and \
                len(generation.caption) < _MAX_CAPTION_CHARS:
            generation.caption = (generation.caption + delta["content"])[:_MAX_CAPTION_CHARS]
    return generation


def images_in_chat(payload: Any, exclude: Collection[str] = ()) -> list[GeneratedImage]:
    """The generated images of a stored chat (``GET /api/v2/chats/<id>``, §2.1 fallback)."""
    error = payload_error(payload)
    if error is not None:
        raise error
    data = payload.get("data") if isinstance(payload, dict) else None
    chat = data.get("chat") if isinstance(data, dict) else None
    history = chat.get("history") if isinstance(chat, dict) else None
    messages = history.get("messages") if isinstance(history, dict) else None
    found = Generation()
    for message in (messages.values() if isinstance(messages, dict) else messages or []):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        for entry in message.get("content_list") or []:
            if isinstance(entry, dict) and entry.get("phase") in IMAGE_PHASES:
                _add(found, _image_url(entry.get("content")), entry.get("extra"), exclude)
    return found.images
