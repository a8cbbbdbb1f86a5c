"""PUT an image to Qwen Chat's OSS bucket with the STS grant of ``getstsToken`` (QWEN_IMAGES.md §1.2, §1.3).

Where the bytes go: ``https://{bucket}.{endpoint}/{key}`` (virtual-host style,
as the browser SDK sends them); without an ``endpoint`` in the grant,
``{region}.aliyuncs.com``; an endpoint that is an IP address (a test bucket on
loopback) gets path style, ``/{bucket}/{key}``. ``[upstream] oss_base_url``
sends the same request to another base URL: the ``Host`` header stays
``{bucket}.{endpoint}`` and the signature, over the canonical resource
``/{bucket}/{key}``, stays valid (``oss_signing``), so a forwarder in front of OSS,
or the emulator's OSS on loopback, gets exactly what OSS would.

The PUT goes out through the credential's own egress (its proxy, else the
relay's), with none of chat.qwen.ai's cookies or tokens: only the STS grant
authorises it. Refusals are OSS's XML ``<Error>``; the client is told its
``<Code>`` (never ``<StringToSign>`` or ``<CanonicalRequest>``, which quote the
security token). A 5xx or a broken connection is tried again (``--retries``);
a 4xx never is: a 403 (bad signature, expired token) fails the same way again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from yarl import URL

from ..errors import UpstreamUploadFailed
from ..upstream import Egress
from ..upstream.egress import EgressClosed
from ..upstream.retry import backoff_s
from .oss_signing import SigningVersion, StsCredentials, quote_key, sign_put
from .sources import ImageBytes

__all__ = ["OssPut", "StsGrant", "oss_code", "oss_target"]

_log = logging.getLogger("relay.upstream")
#: the start of an error body is enough for its <Code>; OSS errors are a few hundred bytes.
_ERROR_BODY_BYTES = 64 * 1024
_CODE = re.compile(rb"<Code>\s*([A-Za-z0-9_.-]{1,80})\s*</Code>")
#: the browser SDK's own header (ali-oss 6.23 in Chrome, §1.3); signed as an ``x-oss-*`` header.
_SDK_USER_AGENT = "aliyun-sdk-js/6.23.0 Chrome {major}.0.0.0 on Windows 10 64-bit"
_CHROME = re.compile(r"Chrome/(\d+)")
_DEFAULT_REGION = "oss-ap-southeast-1"


@dataclass(frozen=True, slots=True)
class StsGrant:
    """What one ``getstsToken`` answer allows: one object, under one account's user id."""

    credentials: StsCredentials
    bucket: str
    region: str
    #: ``oss-accelerate.aliyuncs.com`` (maybe with a scheme), or None: ``{region}.aliyuncs.com``.
    endpoint: str | None
    #: the object key, ``<user_id>/<file_id>_<filename>``.
    file_path: str
    file_id: str
    #: the 300-second pre-signed download URL (never PUT to: §1.3), if given.
    file_url: str | None

    @property
    def user_id(self) -> str:
        return self.file_path.split("/", 1)[0]


def oss_target(grant: StsGrant, base_url: str | None = None) -> tuple[str, str | None]:
    """The PUT URL of ``grant``'s object, and the ``Host`` header to send when it differs from the URL's."""
    endpoint = grant.endpoint or f"{grant.region or _DEFAULT_REGION}.aliyuncs.com"
    scheme, sep, host = endpoint.partition("://")
    if not sep:
        scheme, host = "https", endpoint
    host = host.strip("/")
    key = quote_key(grant.file_path)
    if _is_address(host):  # an IP endpoint has no bucket sub-domain: path style
        return f"{(base_url or f'{scheme}://{host}').rstrip('/')}/{grant.bucket}/{key}", None
    virtual_host = f"{grant.bucket}.{host}"
    if base_url:
        return f"{base_url.rstrip('/')}/{key}", virtual_host
    return f"{scheme}://{virtual_host}/{key}", None


def _is_address(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def oss_code(body: bytes) -> str | None:
    """The ``<Code>`` of an OSS XML error body, or None."""
    match = _CODE.search(body)
    return match.group(1).decode("ascii") if match else None


def sdk_user_agent(user_agent: str) -> str:
    """``x-oss-user-agent`` as the browser SDK sends it, for the Chrome the relay says it is."""
    match = _CHROME.search(user_agent)
    return _SDK_USER_AGENT.format(major=match.group(1) if match else "156")


class OssPut:
    """Signed PUTs to OSS through the relay's egress sessions."""

    def __init__(self, egress: Egress, *, signing: SigningVersion, base_url: str | None, user_agent: str,
                 timeout_s: float, attempts: int, backoff_base_s: float, backoff_max_s: float) -> None:
        self._egress = egress
        self._signing = signing
        self._base_url = base_url
        self._user_agent = user_agent
        self._sdk_user_agent = sdk_user_agent(user_agent)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s,
                                              sock_read=timeout_s)
        self._attempts = attempts
        self._backoff = (backoff_base_s, backoff_max_s)

    @property
    def signing(self) -> SigningVersion:
        return self._signing

    async def put(self, grant: StsGrant, image: ImageBytes, proxy: str | None) -> None:
        """Store ``image`` as ``grant``'s object; ``UpstreamUploadFailed`` (502) when OSS will not."""
        url, host = oss_target(grant, self._base_url)
        target = URL(url, encoded=True)
        try:
            route = self._egress.route(f"{target.scheme}://{target.raw_authority}", proxy)
        except (ValueError, EgressClosed) as exc:
            raise UpstreamUploadFailed(f"Cannot upload the image: {exc}") from exc
        for attempt in range(1, self._attempts + 1):
            # Signed per attempt: x-oss-date (and V1's Date) must be near the moment OSS reads it.
            headers = sign_put(self._signing, grant.credentials, bucket=grant.bucket, key=grant.file_path,
                               content_type=image.mime, region=grant.region or _DEFAULT_REGION,
                               now=datetime.now(UTC), oss_headers={"x-oss-user-agent": self._sdk_user_agent})
            headers["User-Agent"] = self._user_agent
            if host is not None:
                headers["Host"] = host
            try:
                async with route.session.put(target, data=image.data, headers=headers, timeout=self._timeout,
                                             allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return
                    body = await _read_some(response)
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failure = UpstreamUploadFailed(f"The upload to Qwen Chat's file store (OSS) failed: "
                                               f"{type(exc).__name__}, after {attempt} attempt(s).")
                if attempt >= self._attempts:
                    raise failure from exc
            else:
                code = oss_code(body) or "no <Code>"
                failure = UpstreamUploadFailed(f"Qwen Chat's file store (OSS) refused the upload: {code} "
                                               f"(HTTP {status}).")
                if status < 500 or attempt >= self._attempts:  # 4xx (a 403 above all) fails again
                    raise failure
            delay = backoff_s(attempt, *self._backoff, None)
            _log.warning("upload_retry", extra={"fields": {"attempt": attempt, "delay_s": round(delay, 3)}})
            await asyncio.sleep(delay)


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.content.read(_ERROR_BODY_BYTES)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return b""
