"""Take the images out of an OpenAI conversation, leaving text markers where they stood.

Pure (the uploads happen afterwards, in ``uploads.py``). qwen-v2 sends one user
message per call, so the whole conversation is folded into its ``content`` and
its images go to ``files[]`` (QWEN_IMAGES.md §1.5): here each ``image_url`` part
becomes an ``ImageSource``, in conversation order, and its place in the text
becomes ``[image N]`` (N: its position in ``files[]``), so the model can tell
which picture a sentence is about. One lone user message with one image needs
no marker: it is what the web app itself sends.

Qwen Chat takes at most ``MAX_IMAGES_PER_MESSAGE`` images per message (§1.7):
with more, the most recent ones are sent and each earlier one is replaced by a
text saying it was left out, so neither the client nor the model is misled
(an agent's old screenshots are the ones that matter least). Images left out
are not decoded nor fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .sources import IMAGE_PART_TYPES, ImageSource, image_source

__all__ = ["MAX_IMAGES_PER_MESSAGE", "OMITTED_IMAGE_TEXT", "ImageInput", "has_image_parts", "split_images"]

#: Qwen Chat's own limit of images per message (``/api/v2/configs/``, §1.7).
MAX_IMAGES_PER_MESSAGE = 5
OMITTED_IMAGE_TEXT = (f"[an earlier image, not attached: Qwen Chat takes {MAX_IMAGES_PER_MESSAGE} images per "
                      "message and the most recent ones were sent]")


class ImageInput(Protocol):
    """What a dialect needs to attach images: ``uploads.Uploads`` is one."""

    #: the ``--upstream`` origin, whose image URLs count as Qwen's own.
    upstream_origin: str | None

    async def files_for(self, sources: Sequence[ImageSource], sender: Any) -> list[dict[str, Any]]:
        """The ``files[]`` items of ``sources``, uploaded with ``sender``'s credential."""


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES


def has_image_parts(messages: list[dict[str, Any]]) -> bool:
    """Whether any message carries an image part (a cheap scan before the real work)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(_is_image_part(part) for part in content):
            return True
    return False


def split_images(messages: list[dict[str, Any]],
                 upstream_origin: str | None) -> tuple[list[dict[str, Any]], list[ImageSource]]:
    """``messages`` with image parts replaced by text markers, and the images to attach, in order.

    The client's message objects are left as they are (a retry prepares the
    request again); only the messages that held images are copied.
    """
    places = [(m, p) for m, message in enumerate(messages) if isinstance(message.get("content"), list)
              for p, part in enumerate(message["content"]) if _is_image_part(part)]
    if not places:
        return messages, []
    kept = places[-MAX_IMAGES_PER_MESSAGE:]
    first_kept = len(places) - len(kept)
    lone = len(messages) == 1 and len(kept) == 1
    sources: list[ImageSource] = []
    replacements: dict[tuple[int, int], dict[str, str] | None] = {}
    for index, (m, p) in enumerate(places):
        if index < first_kept:
            replacements[(m, p)] = {"type": "text", "text": OMITTED_IMAGE_TEXT}
            continue
        where = f"messages[{m}].content[{p}]"
        sources.append(image_source(messages[m]["content"][p], where, upstream_origin))
        replacements[(m, p)] = None if lone else {"type": "text", "text": f"[image {len(sources)}]"}
    result = list(messages)
    for m in sorted({m for m, _ in places}):
        content = []
        for p, part in enumerate(messages[m]["content"]):
            if (m, p) not in replacements:
                content.append(part)
            elif (replacement := replacements[(m, p)]) is not None:
                content.append(replacement)
        result[m] = {**messages[m], "content": content}
    return result, sources
