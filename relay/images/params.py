"""The parameters of ``/v1/images/generations`` and ``/v1/images/edits``, checked (issue 20).

Pure. OpenAI's sizes map to the aspect ratios Qwen Chat's image chats take
(QWEN_IMAGES.md §2.1, §2.5: the mapping every relay uses); a ratio may also be
given as it is. Anything else is refused, not approximated: a client asking
for 512x512 should learn that it gets no 512x512 image.

``response_format`` defaults to ``b64_json``, unlike OpenAI's ``url``: Qwen's
image URL carries the account's user id (and expires), so by default the
relay downloads the image and the client never sees it. ``model`` defaults to
``--image-model``; OpenAI's own image model names (``dall-e-*``,
``gpt-image-*``), which clients send by default, mean the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Images
from ..errors import InvalidRequest

__all__ = ["RATIOS", "SIZES", "ImageJob", "parse_image_job"]

#: OpenAI's sizes → Qwen's ratios (§2.5, R/G's map; 1536x1024 is 3:2, the nearest offered is 4:3).
SIZES = {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16", "1536x1024": "4:3", "1024x1536": "3:4"}
#: the ratios the web app offers (§2.1: the UI enum).
RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")
RESPONSE_FORMATS = ("b64_json", "url")
_OPENAI_IMAGE_MODELS = ("dall-e-", "gpt-image-", "chatgpt-image")


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One images request, validated: what each of its ``n`` image chats is asked."""

    prompt: str
    #: the aspect ratio asked of Qwen (``16:9``); None: the web app's default.
    ratio: str | None
    n: int
    response_format: str
    #: the model id as the caller's list names it (checked against it by the handler).
    model: str


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    return value.strip()


def _count(fields: Mapping[str, Any], max_n: int) -> int:
    value = fields.get("n")
    if value is None or value == "":
        return 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("'n' must be an integer.", param="n", code="invalid_type")
    if not 1 <= value <= max_n:
        raise InvalidRequest(f"'n' must be between 1 and {max_n} (--images-max-n): each image is a "
                             "generation of its own on the Qwen Chat account.", param="n", code="invalid_value")
    return value


def parse_image_job(fields: Mapping[str, Any], settings: Images) -> ImageJob:
    """Validate a generations JSON body or an edits form's text fields (400 naming the field)."""
    prompt = _text(fields, "prompt")
    if not prompt:
        raise InvalidRequest("'prompt' is required: describe the image.", param="prompt",
                             code="missing_required_parameter")
    if fields.get("stream") in (True, "true"):
        raise InvalidRequest("Streaming image generation is not supported; omit 'stream'.", param="stream",
                             code="unsupported_value")
    size = _text(fields, "size")
    ratio = None
    if size:
        ratio = SIZES.get(size.lower(), size if size in RATIOS else None)
        if ratio is None:
            raise InvalidRequest(f"'size' {size[:40]!r} is not offered; use one of {', '.join(SIZES)} or a ratio "
                                 f"{', '.join(RATIOS)}.", param="size", code="invalid_value")
    response_format = _text(fields, "response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest("'response_format' must be 'b64_json' or 'url'.", param="response_format",
                             code="invalid_value")
    model = _text(fields, "model") or settings.model
    if model.lower().startswith(_OPENAI_IMAGE_MODELS):
        model = settings.model
    return ImageJob(prompt, ratio, _count(fields, settings.max_n), response_format, model)
