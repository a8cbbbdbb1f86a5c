"""Where an input image comes from: bytes in a ``data:`` URI, a URL to fetch, or Qwen's own URL.

Pure: no I/O. A chat request's ``image_url`` part names its image one of three
ways, and each takes a different road to Qwen Chat (QWEN_IMAGES.md §1.6, §5):

- ``data:image/…;base64,…``: decoded here, then uploaded (always);
- an ``http(s)`` URL on one of Qwen's own hosts (§5: ``cdn.qwenlm.ai``,
  ``*.qwenlm.ai``, the ``qwen-webui-prod`` / ``qwen-chat`` buckets, and the
  configured ``--upstream``): referenced as it is, never fetched;
- any other ``http(s)`` URL: fetched (``fetch.py``) only under
  ``--fetch-image-urls``, then uploaded like a data URI.

The type of an image is read from its first bytes, not from what the client
declared: ``image/jpg`` and friends are common, and a PDF labelled
``image/png`` must not reach the vision model as a picture.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from ..errors import ImageTooLarge, ImageUrlNotAllowed, UnsupportedImage

__all__ = [
    "IMAGE_PART_TYPES",
    "MAX_IMAGE_BYTES",
    "ImageBytes",
    "ImageUrl",
    "QwenImageUrl",
    "decode_data_uri",
    "extension_of",
    "image_source",
    "is_qwen_host",
    "is_same_origin",
    "sniff_image_type",
]

#: Qwen Chat's own limit per file (QWEN_IMAGES.md §1.7: 5 images × 20 MB per turn).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: the content-part types that carry an image, in the three client APIs.
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
#: magic bytes → MIME type: the formats a browser uploads and the vision models read.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after "RIFF" and a 4-byte size
    (b"BM", 0, "image/bmp"),
)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
               "image/bmp": "bmp"}
_TYPES_BY_EXTENSION = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
                       "webp": "image/webp", "bmp": "image/bmp"}
#: hosts under these suffixes are Qwen's (§5, A's known-host list); an exact name is listed too.
_QWEN_SUFFIXES = (".qwenlm.ai",)
_QWEN_HOSTS = frozenset({"qwenlm.ai", "cdn.qwenlm.ai"})
#: ``qwen-webui-prod.oss-accelerate.aliyuncs.com``, ``qwen-chat.oss-ap-southeast-1.aliyuncs.com``…
_QWEN_BUCKET_HOST = re.compile(r"^(qwen-webui-prod|qwen-chat)\.oss-[a-z0-9-]+\.aliyuncs\.com$")
#: whitespace a wrapped base64 payload may hold; ``bytes.translate`` drops it at memory speed (a
#: regular expression took 0.5 s over a 20 MB image's 27 MB of base64, on the event loop).
_WHITESPACE = b" \t\r\n\f\v"


@dataclass(frozen=True, slots=True)
class ImageBytes:
    """An image in hand: its bytes and the type they were read as."""

    data: bytes
    mime: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.mime, "png")


@dataclass(frozen=True, slots=True)
class ImageUrl:
    """A third-party ``http(s)`` URL: fetched only under ``--fetch-image-urls``."""

    url: str


@dataclass(frozen=True, slots=True)
class QwenImageUrl:
    """An image already on Qwen's hosts: referenced in ``files[]`` as it is (§1.5, minimal shape)."""

    url: str

    @property
    def mime(self) -> str:
        return _TYPES_BY_EXTENSION.get(extension_of(self.url), "image/png")

    @property
    def name(self) -> str:
        tail = urlsplit(self.url).path.rsplit("/", 1)[-1]
        return tail or "image.png"


ImageSource = ImageBytes | ImageUrl | QwenImageUrl


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type the first bytes of ``data`` show, or None when it is no image we accept."""
    for signature, offset, mime in _SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            if mime == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return mime
    return None


def extension_of(url: str) -> str:
    """The lower-case extension of a URL's last path segment ("" when it has none)."""
    tail = urlsplit(url).path.rsplit("/", 1)[-1]
    return tail.rsplit(".", 1)[-1].lower() if "." in tail else ""


def is_qwen_host(host: str) -> bool:
    """True for Qwen's own image hosts (§5): its CDN, ``*.qwenlm.ai``, and its OSS buckets."""
    host = host.lower().rstrip(".")
    return host in _QWEN_HOSTS or host.endswith(_QWEN_SUFFIXES) or _QWEN_BUCKET_HOST.match(host) is not None


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    return scheme, host, port or (443 if scheme == "https" else 80)


def is_same_origin(url: str, origin: str | None) -> bool:
    """True when ``url`` is on ``origin`` (scheme, host and port alike): the ``--upstream`` origin."""
    if origin is None:
        return False
    mine = _origin_of(url)
    return mine is not None and mine == _origin_of(origin)


def image_bytes(data: bytes, where: str) -> ImageBytes:
    """Check size and type of bytes in hand (decoded, fetched or uploaded in a form)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"The image in {where} is {len(data)} bytes; Qwen Chat takes at most "
                            f"{MAX_IMAGE_BYTES} bytes (20 MB) per image.", param=where)
    if not data:
        raise UnsupportedImage(f"The image in {where} is empty.", param=where)
    mime = sniff_image_type(data)
    if mime is None:
        raise UnsupportedImage(f"The data in {where} is not a PNG, JPEG, GIF, WebP or BMP image.", param=where)
    return ImageBytes(data, mime)


def decode_data_uri(uri: str, where: str) -> ImageBytes:
    """The image of a ``data:`` URI; 400 ``image_too_large`` before decoding an oversized one."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.lower().startswith("data:"):
        raise UnsupportedImage(f"The data URI in {where} is malformed (expected data:image/…;base64,…).",
                               param=where)
    params = [part.strip().lower() for part in header[5:].split(";")]
    declared = params[0] or "text/plain"
    if not declared.startswith("image/"):
        raise UnsupportedImage(f"The data URI in {where} declares {declared[:60]!r}, not an image.", param=where)
    if "base64" in params[1:]:
        raw = payload.encode("ascii", "replace").translate(None, _WHITESPACE)  # line-wrapped base64 too
        if len(raw) // 4 * 3 > MAX_IMAGE_BYTES + 3:  # refused before the decode allocates it
            raise ImageTooLarge(f"The image in {where} is about {len(raw) // 4 * 3} bytes; Qwen Chat takes at "
                                f"most {MAX_IMAGE_BYTES} bytes (20 MB) per image.", param=where)
        try:
            data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UnsupportedImage(f"The base64 data of the image in {where} is not valid base64.",
                                   param=where) from exc
    else:
        data = unquote_to_bytes(payload)
    return image_bytes(data, where)


def image_url_of(part: dict[str, Any]) -> Any:
    """The URL an image part carries, in the OpenAI chat (``image_url.url``) or Responses shape."""
    value = part.get("image_url")
    if isinstance(value, dict):
        return value.get("url")
    return value


def image_source(part: dict[str, Any], where: str, upstream_origin: str | None) -> ImageSource:
    """What an image part names, checked: 400 for what can never be used.

    Parts of Anthropic's own shape (``type: "image"``) should have been
    converted to ``image_url`` by their surface; one that was not is refused
    plainly rather than dropped.
    """
    url = image_url_of(part)
    if not isinstance(url, str) or not url.strip():
        raise UnsupportedImage(f"The {part.get('type')!s} part at {where} has no image URL "
                               "(expected image_url.url: a data: URI or an http(s) URL).", param=where)
    url = url.strip()
    if url[:5].lower() == "data:":
        return decode_data_uri(url, where)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not host:
        raise ImageUrlNotAllowed(f"The image URL at {where} is neither a data: URI nor an http(s) URL.",
                                 param=where)
    if is_qwen_host(host) or is_same_origin(url, upstream_origin):
        return QwenImageUrl(url)
    return ImageUrl(url)
