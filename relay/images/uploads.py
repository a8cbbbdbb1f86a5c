"""Images into Qwen Chat ``files[]`` items: STS grant, OSS PUT, cached per account (QWEN_IMAGES.md §1, §5).

One upload is two calls made with the request's own credential: ``POST
/api/v2/files/getstsToken`` (with chat creation's headers, cookies and bx-*
bundle, through the dialect's sender, so a risk-control answer there is handled
as on any chat write: the credential rests, the pool moves on) and the signed
PUT (``oss.py``). The object's id then goes into the completion's
``messages[0].files[]`` in the web app's shape (§1.5); ``content`` stays text.

A URL on Qwen's own hosts is referenced in the minimal shape the web app uses
for such images, without fetching. Any other URL is fetched first
(``fetch.py``) when ``--fetch-image-urls`` allows it, else refused (400).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..accounts.credential import Credential
from ..dialects import UpstreamCall
from ..dialects.v2_errors import payload_error
from ..errors import ImageUrlNotAllowed, RelayError, UpstreamProtocolError
from .cache import UploadCache, account_key
from .counters import ImageCounters, count_request_images
from .fetch import ImageFetcher
from .oss import OssPut, StsGrant, oss_target
from .oss_signing import StsCredentials
from .sources import ImageBytes, ImageSource, ImageUrl, QwenImageUrl

__all__ = ["STS_PATH", "CredentialSender", "Upload", "Uploads", "file_item", "parse_grant", "qwen_url_item"]

_log = logging.getLogger("relay.upstream")
STS_PATH = "/api/v2/files/getstsToken"
_GRANT_FIELDS = ("access_key_id", "access_key_secret", "security_token", "bucketname", "file_path", "file_id")


class CredentialSender(Protocol):
    """A dialect's ``send_json`` that also names its credential (``relay.calls.Sender``)."""

    credential: Credential

    def __call__(self, call: UpstreamCall) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class Upload:
    """An image stored in Qwen Chat's bucket for one account: what its ``files[]`` item is made of."""

    file_id: str
    user_id: str
    url: str
    filename: str
    size: int
    mime: str


def parse_grant(payload: Any) -> StsGrant:
    """The grant of a ``getstsToken`` answer, wrapped (``{success, data}``) or flat (v1 until mid-2026, §4.4).

    An error answer raises what it means, as on chat writes: risk control →
    ``UpstreamChallenge``, ``RateLimited`` → 429, and so on (``v2_errors``).
    """
    error = payload_error(payload)
    if error is not None:
        raise error
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        data = payload if isinstance(payload, dict) else {}
    missing = [name for name in _GRANT_FIELDS if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise UpstreamProtocolError(f"Qwen Chat's upload grant (getstsToken) lacks {', '.join(missing)}.")
    endpoint, region, file_url = data.get("endpoint"), data.get("region"), data.get("file_url")
    return StsGrant(
        credentials=StsCredentials(data["access_key_id"], data["access_key_secret"], data["security_token"]),
        bucket=data["bucketname"],
        region=region if isinstance(region, str) and region else "oss-ap-southeast-1",
        endpoint=endpoint if isinstance(endpoint, str) and endpoint else None,
        file_path=data["file_path"].lstrip("/"),
        file_id=data["file_id"],
        file_url=file_url if isinstance(file_url, str) and file_url else None,
    )


def file_item(upload: Upload) -> dict[str, Any]:
    """The ``files[]`` item of an uploaded image, field for field the web app's (§1.5, I-04).

    ``itemId`` and ``uploadTaskId`` are the browser's per-attachment ids: fresh
    each time, also for a cached upload.
    """
    now_ms = int(time.time() * 1000)
    return {
        "type": "image",
        "file": {"created_at": now_ms, "data": {}, "filename": upload.filename, "hash": None, "id": upload.file_id,
                 "user_id": upload.user_id,
                 "meta": {"name": upload.filename, "size": upload.size, "content_type": upload.mime},
                 "update_at": now_ms},
        "id": upload.file_id, "url": upload.url, "name": upload.filename, "collection_name": "", "progress": 0,
        "status": "uploaded", "greenNet": "success", "size": upload.size, "error": "",
        "itemId": str(uuid.uuid4()), "file_type": upload.mime, "showType": "image", "file_class": "vision",
        "uploadTaskId": str(uuid.uuid4()),
    }


def qwen_url_item(image: QwenImageUrl) -> dict[str, Any]:
    """The minimal item the web app sends for an image already on Qwen's hosts (§1.5, measured)."""
    return {"type": "image", "name": image.name, "file_type": image.mime, "showType": "image",
            "status": "uploaded", "file_class": "vision", "url": image.url}


class Uploads:
    """The relay's image uploads: one cache, one fetcher, one OSS client, shared by every request."""

    def __init__(self, oss: OssPut, cache: UploadCache[Upload], fetcher: ImageFetcher, counters: ImageCounters,
                 *, fetch_urls: bool, upstream_origin: str | None) -> None:
        self._oss = oss
        self._cache = cache
        self._fetcher = fetcher
        self.counters = counters
        self._fetch_urls = fetch_urls
        #: the ``--upstream`` origin: its URLs count as Qwen's own (the emulator's, in tests).
        self.upstream_origin = upstream_origin

    async def close(self) -> None:
        await self._fetcher.close()

    async def files_for(self, sources: Sequence[ImageSource], sender: Any) -> list[dict[str, Any]]:
        """The ``files[]`` items of ``sources``, in order; every URL is checked before anything is sent."""
        credential_sender = _with_credential(sender)
        for index, source in enumerate(sources):
            if isinstance(source, ImageUrl) and not self._fetch_urls:
                host = urlsplit(source.url).hostname or "?"
                raise ImageUrlNotAllowed(
                    f"Image {index + 1} is a URL on {host}; this relay does not fetch image URLs "
                    "(--fetch-image-urls is off). Send the image as a data: URI instead.",
                    param="messages")
        count_request_images(inputs=len(sources))
        items = []
        for index, source in enumerate(sources):
            if isinstance(source, QwenImageUrl):
                self.counters.count_upload("referenced")
                items.append(qwen_url_item(source))
                continue
            image = source if isinstance(source, ImageBytes) else await self._fetcher.fetch(
                source.url, f"image {index + 1}")
            items.append(file_item(await self.upload(image, credential_sender)))
        return items

    async def upload(self, image: ImageBytes, sender: CredentialSender) -> Upload:
        """``image`` stored for ``sender``'s account: re-used when it was stored within the TTL."""
        key = (account_key(sender.credential), image.sha256)
        upload, reused = await self._cache.get_or_create(key, _bound(self._upload_new, image, sender))
        if reused:
            self.counters.count_upload("reused")
        return upload

    async def _upload_new(self, image: ImageBytes, sender: CredentialSender) -> Upload:
        filename = f"{uuid.uuid4()}.{image.extension}"
        started = time.perf_counter()
        try:
            payload = await sender(UpstreamCall(STS_PATH, {"filename": filename, "filesize": len(image.data),
                                                           "filetype": "image"}, kind="upload"))
            grant = parse_grant(payload)
            await self._oss.put(grant, image, sender.credential.proxy)
        except RelayError as exc:
            self.counters.count_upload("failed")
            _log.warning("image_upload_failed", extra={"fields": {"error": exc.instance_code or exc.code,
                                                                  "bytes": len(image.data)}})
            raise
        self.counters.count_upload("uploaded", len(image.data))
        _log.info("image_uploaded", extra={"fields": {
            "bytes": len(image.data), "mime": image.mime, "signing": self._oss.signing,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1)}})
        url = grant.file_url or oss_target(grant)[0]
        return Upload(grant.file_id, grant.user_id, url, filename, len(image.data), image.mime)


def _bound(upload: Callable[[ImageBytes, CredentialSender], Awaitable[Upload]], image: ImageBytes,
           sender: CredentialSender) -> Callable[[], Awaitable[Upload]]:
    def start() -> Awaitable[Upload]:
        return upload(image, sender)

    return start


def _with_credential(sender: Any) -> CredentialSender:
    """The dialect's sender, which must name its credential (``relay.calls.Sender`` does)."""
    if not isinstance(getattr(sender, "credential", None), Credential):
        raise TypeError("image uploads need a sender bound to a credential (relay.calls.Sender)")
    return sender  # type: ignore[no-any-return]
