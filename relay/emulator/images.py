"""Completions that carry files, and the t2i / image_edit streams (QWEN_IMAGES.md §1.5, §2.1, §2.2, §6.1).

**Files.** Every item of the user message's ``files[]`` must name a file issued to
the *same user* (``files.account_user``) whose bytes were PUT: by ``id`` (or
``file.id``; both given must agree) through its STS grant, or, without an id, by a
``url`` on the emulator's own hosts (an OSS object, a ``/cdn/`` link or a
generated ``/output/`` image; A's minimal shape for images already on Qwen). A
failing item ends the stream after ``response.created`` with
``{"error": {"code": "invalid_input", "details": "输入或附件无效。请检查后重试。"}}``;
a URL on any other host with ``{"error": "Internal error!"}`` (A's observed forms).
Knob ``content_array: "accept"`` also reads v1-style ``{"type": "image", "image": url}``
content parts as url items (ignored by default, as v2 does per §4.8).

A t2t answer then starts with one line per file, in order, as the first answer piece::

    [FILE sha256=<64 hex> type=<Content-Type of the PUT> size=<bytes>]\\n

followed by the usual answer (the echo, or the directive's ``reply``).

**Images.** ``chat_type`` ``t2i`` or ``image_edit`` (the body's, else the message's)
answers, with one ``response_id``: ``response.created``; ``image_gen_think``
"Planning the image." + its finished frame; an ``answer`` caption (directive
``reply``, else ``"Image for: <prompt>"``) + finished; (image_edit with directive
``echo_input``: a frame whose content is the first input's URL as sent); the
image frame(s) ``{"role": "assistant", "content": <url>, "phase": "image_gen",
"status": "typing", "extra": {"output_image_hw": [[h, w]]}}`` (``image_edit``
phase for edits); the phase's finished frame. The URL is
``<chat origin>/output/<user_id>/<t2i|image_edit>/<chat_id>/<uuid>.png?key=<JWT>``,
a real PNG of ``w``×``h`` (``routes_images.py``). ``h, w`` follow the ratio in the
top-level ``size`` (else ``extra.meta.size``): 1:1 → 1328×1328, 16:9 → 1536×2688
(§2.1, measured); [I] 9:16 → 2688×1536, 4:3 → 1152×1536, 3:4 → 1536×1152, any
other or none → 1:1. An image_edit without files is refused as ``invalid_input``.
Directive knobs: ``images``, ``image_hw``, ``output_image_hw``, ``echo_input``,
``image_phase`` (``directive.py``); errors are the usual ``stream_error`` forms.

Each image chat turn (and each turn with files) is kept for ``GET /api/v2/chats/<id>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from aiohttp import web

from relay.emulator.files import account_user
from relay.emulator.framing import Frame, to_json
from relay.emulator.handling import EMULATOR_STATE
from relay.emulator.phase import Reply
from relay.emulator.png import solid_png
from relay.emulator.request import V2Request
from relay.emulator.resource_keys import mint_resource_key
from relay.emulator.uploads import BUCKET, ChatTurn, FileBook, GeneratedImage
from relay.emulator.v2 import V2Stream, v2_refusal

__all__ = ["IMAGE_CHAT_TYPES", "INVALID_INPUT_DETAILS", "RATIO_HW", "MediaPlan", "file_line", "plan_media"]

IMAGE_CHAT_TYPES = ("t2i", "image_edit")
# A's observed in-stream refusal of an unusable attachment (§6.1.3).
INVALID_INPUT_DETAILS = "输入或附件无效。请检查后重试。"
EXTERNAL_URL_ERROR = "Internal error!"
# (height, width) per ratio: 1:1 and 16:9 measured (KT, §2.1); [I] the others.
RATIO_HW: dict[str, tuple[int, int]] = {
    "1:1": (1328, 1328),
    "16:9": (1536, 2688),
    "9:16": (2688, 1536),
    "4:3": (1152, 1536),
    "3:4": (1536, 1152),
}
THINK_TEXT = "Planning the image."


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file a completion referenced and the emulator holds: what the answer line names."""

    url: str | None
    sha256: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class MediaPlan:
    """How the files and chat type change a v2 answer.

    ``frames``: a whole stream replacing the text one (an image stream, or a refusal
    when ``rejected`` names the rule); else ``spec`` is the text stream to play.
    """

    spec: V2Stream
    frames: list[Frame] | None = None
    rejected: str | None = None


class _Refused(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def file_line(attachment: Attachment) -> str:
    """The answer line proving the bytes arrived (see the module docstring)."""
    return f"[FILE sha256={attachment.sha256} type={attachment.content_type} size={attachment.size}]"


def plan_media(request: web.Request, body: dict[str, Any], v2: V2Request, spec: V2Stream) -> MediaPlan:
    """Check the attachments and pick the stream: text with file lines, an image stream, or a refusal."""
    book = request.app[EMULATOR_STATE].files
    message = _user_message(body)
    is_image_chat = v2.features.chat_type in IMAGE_CHAT_TYPES
    try:
        items = _references(message, book)
        if not items and not is_image_chat:
            return MediaPlan(spec)  # the plain chat: nothing to check, no user to look up
        user_id = account_user(request)
        attachments = [_resolve(book, user_id, item) for item in items]
        if v2.features.chat_type == "image_edit" and not attachments:
            raise _Refused("attachment_missing")
    except _Refused as refused:
        if refused.rule == "attachment_url":
            return MediaPlan(spec, [_created(spec), Frame(to_json({"error": EXTERNAL_URL_ERROR}))], refused.rule)
        return MediaPlan(spec, v2_refusal(spec, "invalid_input", INVALID_INPUT_DETAILS), refused.rule)
    if is_image_chat:
        origin = f"{request.scheme}://{request.host}"
        return MediaPlan(spec, _image_frames(book, user_id, origin, body, message, v2, spec, attachments))
    if not attachments:  # files: [] with content_array images ignored
        return MediaPlan(spec)
    lines = "".join(file_line(attachment) + "\n" for attachment in attachments)
    reply = Reply(spec.reply.think, (lines, *spec.reply.answer))
    _remember(book, spec, message, v2, "answer", (), None, reply.answer_text)
    return MediaPlan(dataclasses.replace(spec, reply=reply))


def _user_message(body: dict[str, Any]) -> dict[str, Any]:
    """The one user message (``parse_v2_request`` already checked there is exactly one)."""
    messages = body.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    return users[0] if users else {}


def _references(message: dict[str, Any], book: FileBook) -> list[Any]:
    files = message.get("files")
    if files is None:
        items: list[Any] = []
    elif isinstance(files, list):
        items = list(files)
    else:
        raise _Refused("attachment_invalid")
    content = message.get("content")
    if book.knobs.content_array == "accept" and isinstance(content, list):
        items += [{"url": part["image"]} for part in content
                  if isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str)]
    return items


def _resolve(book: FileBook, user_id: str, item: Any) -> Attachment:
    """The attachment an item names, owned by ``user_id`` and stored; else :class:`_Refused`."""
    if not isinstance(item, dict):
        raise _Refused("attachment_invalid")
    url = item.get("url") if isinstance(item.get("url"), str) else None
    inner = item.get("file")
    ids = {value for value in (item.get("id"), inner.get("id") if isinstance(inner, dict) else None) if value}
    if len(ids) > 1:
        raise _Refused("attachment_invalid")
    if ids:
        grant, stored = book.object_of_file(str(ids.pop()))
        if grant is None or stored is None or grant.user_id != user_id:
            raise _Refused("attachment_invalid")
        return Attachment(url, stored.sha256, stored.content_type, stored.size)
    if url is None:
        raise _Refused("attachment_invalid")
    found = _by_url(book, url)
    if found is None:
        raise _Refused("attachment_url")
    if found[0] != user_id:
        raise _Refused("attachment_invalid")
    return Attachment(url, *found[1:])


def _by_url(book: FileBook, url: str) -> tuple[str, str, str, int] | None:
    """(user_id, sha256, type, size) of a URL on the emulator's hosts, or None for any other URL."""
    parts = urlsplit(url)
    image = book.generated.get(parts.path)
    if image is not None:
        png = solid_png(image.width, image.height, image.rgb)
        return image.user_id, hashlib.sha256(png).hexdigest(), "image/png", len(png)
    path = unquote(parts.path)
    host = parts.hostname or ""
    if path.startswith("/cdn/"):
        key = path.removeprefix("/cdn/")
    elif host.startswith(BUCKET + "."):
        key = path.removeprefix("/")
    elif path.startswith(f"/{BUCKET}/"):
        key = path.removeprefix(f"/{BUCKET}/")
    else:
        return None
    stored = book.objects.get((BUCKET, key))
    return None if stored is None else (stored.user_id, stored.sha256, stored.content_type, stored.size)


def _image_hw(body: dict[str, Any], message: dict[str, Any], v2: V2Request) -> tuple[int, int]:
    if v2.directive.image_hw is not None:
        return v2.directive.image_hw
    ratio = body.get("size")
    if not isinstance(ratio, str):
        extra = message.get("extra")
        meta = extra.get("meta") if isinstance(extra, dict) else None
        ratio = meta.get("size") if isinstance(meta, dict) else None
    return RATIO_HW.get(ratio if isinstance(ratio, str) else "1:1", RATIO_HW["1:1"])


def _image_frames(book: FileBook, user_id: str, origin: str, body: dict[str, Any], message: dict[str, Any],
                  v2: V2Request, spec: V2Stream, attachments: Sequence[Attachment]) -> list[Frame]:
    """Every frame of one t2i / image_edit stream (see the module docstring)."""
    directive, kind = v2.directive, str(v2.features.chat_type)
    height, width = _image_hw(body, message, v2)
    phase = directive.image_phase or ("image_edit" if kind == "image_edit" else "image_gen")
    urls = [_generate(book, user_id, origin, spec.chat_id, kind, height, width)
            for _ in range(max(1, directive.images))]
    rid = spec.response_id
    extra = {"output_image_hw": [[height, width]]} if directive.output_image_hw else None

    def frame(content: str, frame_phase: str, status: str = "typing", with_extra: bool = False) -> Frame:
        delta: dict[str, Any] = {"role": "assistant", "content": content, "phase": frame_phase, "status": status}
        if with_extra and extra is not None:
            delta["extra"] = extra
        return Frame(to_json({"choices": [{"delta": delta}], "response_id": rid}), is_content=status == "typing")

    caption = directive.reply if directive.reply is not None else f"Image for: {v2.user_text}"
    frames = [_created(spec), frame(THINK_TEXT, "image_gen_think"), frame("", "image_gen_think", "finished"),
              frame(caption, "answer"), frame("", "answer", "finished")]
    echoed = next((a.url for a in attachments if a.url), None) if directive.echo_input else None
    if echoed is not None:
        frames.append(frame(echoed, phase, with_extra=True))
    frames += [frame(url, phase, with_extra=True) for url in urls[:directive.images]]
    frames.append(frame("", phase, "finished"))
    if spec.done:
        frames.append(Frame("[DONE]"))
    _remember(book, spec, message, v2, phase, tuple(urls), (height, width), caption)
    return frames


def _created(spec: V2Stream) -> Frame:
    created = {"chat_id": spec.chat_id, "parent_id": spec.parent_id, "response_id": spec.response_id,
               "response_index": "0"}
    return Frame(to_json({"response.created": created}), trailing_space=True)


def _generate(book: FileBook, user_id: str, origin: str, chat_id: str, kind: str, height: int, width: int) -> str:
    """Make an image the stream links and return its URL, ``?key=`` included."""
    image_id = str(uuid.uuid4())
    path = f"/output/{user_id}/{kind}/{chat_id}/{image_id}.png"
    digest = hashlib.sha256(image_id.encode()).digest()
    book.remember_image(GeneratedImage(path, image_id, user_id, chat_id, height, width,
                                       (digest[0], digest[1], digest[2])))
    key = mint_resource_key(book.secret, user_id=user_id, resource_id=image_id, chat_id=chat_id, now=time.time(),
                            ttl_s=book.knobs.output_ttl_s)
    return f"{origin}{path}?{urlencode({'key': key})}"


def _remember(book: FileBook, spec: V2Stream, message: dict[str, Any], v2: V2Request, phase: str,
              urls: tuple[str, ...], hw: tuple[int, int] | None, answer: str) -> None:
    files = message.get("files")
    turn = ChatTurn(str(message.get("fid") or spec.parent_id), v2.user_message,
                    tuple(files) if isinstance(files, list) else (), spec.response_id, phase, urls, hw, answer)
    book.remember_turn(spec.chat_id, turn)
