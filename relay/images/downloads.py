"""Download a generated image for ``response_format: b64_json``, from Qwen's own hosts only.

The URL comes from the upstream's answer, not from the client, but it is still
only followed to where Qwen keeps images: its CDN and bucket hosts (https), or
the ``--upstream`` origin itself (the emulator serves its images there). Any
other host is refused rather than fetched: an answer that points elsewhere is
not one to act on. The download goes through the credential's own egress, like
the account's other calls, with the upstream timeout on connect and on each read,
and a size cap.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from ..errors import RelayError, UpstreamProtocolError, UpstreamUnavailable
from ..upstream import Egress
from ..upstream.egress import EgressClosed
from .sources import is_qwen_host, is_same_origin

__all__ = ["MAX_OUTPUT_BYTES", "download_image", "is_own_image_url"]

#: a 2688×1536 PNG is a few MB; this only stops a broken answer from filling memory.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
_CHUNK_BYTES = 256 * 1024


def is_own_image_url(url: str, upstream_origin: str) -> bool:
    """True for an https URL on Qwen's image hosts, or any URL on the ``--upstream`` origin."""
    if is_same_origin(url, upstream_origin):
        return True
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and parts.hostname is not None and is_qwen_host(parts.hostname)


async def download_image(egress: Egress, url: str, *, upstream_origin: str, proxy: str | None,
                         timeout_s: float, max_bytes: int = MAX_OUTPUT_BYTES) -> bytes:
    """The bytes of a generated image; 502 when Qwen's host will not give them."""
    if not is_own_image_url(url, upstream_origin):
        host = urlsplit(url).hostname or "?"
        raise UpstreamProtocolError(f"Qwen Chat linked the image on {host}, which is not one of its own hosts; "
                                    "the relay does not download from there (response_format 'url' returns "
                                    "the link as it is).", code="upstream_image_host")
    target = URL(url, encoded=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)
    try:
        route = egress.route(f"{target.scheme}://{target.raw_authority}", proxy)
        async with route.session.get(target, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise UpstreamUnavailable(f"Qwen Chat's image host answered HTTP {response.status} for the "
                                          "generated image.")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise UpstreamProtocolError(f"The generated image is over {max_bytes} bytes.")
                chunks.append(chunk)
    except RelayError:
        raise
    except (ValueError, EgressClosed) as exc:
        raise UpstreamUnavailable(f"Cannot download the generated image: {exc}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"Cannot download the generated image: {type(exc).__name__}.") from exc
    return b"".join(chunks)
