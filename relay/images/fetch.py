"""Download a client's image URL (``--fetch-image-urls``), reaching public addresses only.

The guard sits where a connection is made, not where a URL is read: a
``GuardedResolver`` wraps the real resolver and hands aiohttp's connector only the
addresses ``addresses.is_public_address`` allows, so a name that resolves to
127.0.0.1, 10.x or the metadata address is refused after DNS, whatever the URL
says; an address written in the URL (aiohttp never resolves those) is checked
before each request. Redirects are followed here, one hop at a time (at most
``MAX_REDIRECTS``), each hop checked the same way. The whole fetch, redirects
included, has ``FETCH_TIMEOUT_S``; the body is read up to ``MAX_IMAGE_BYTES``
and must be ``image/*`` in its header and in its first bytes.

The session is the fetcher's own: no proxy (a proxy would resolve the name
itself, past the guard), no cookies, nothing of the relay's upstream sessions.

Why this differs from STYLE.md's "aiohttp's client only inside ``upstream/``":
``upstream/`` talks to Qwen Chat and maps its failures to ``Upstream*`` errors;
these are requests to hosts a client chose, whose failures are the client's
(400), and the package of the feature keeps them beside their one caller.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..errors import ImageTooLarge, ImageUrlNotAllowed, UnsupportedImage
from .addresses import AddressPolicy, is_public_address
from .sources import MAX_IMAGE_BYTES, ImageBytes, image_bytes

__all__ = ["FETCH_TIMEOUT_S", "MAX_REDIRECTS", "GuardedResolver", "ImageFetcher", "RefusedAddress"]

#: a client's image is fetched within this, redirects included (the issue's 30 s).
FETCH_TIMEOUT_S = 30.0
#: browsers follow 20; an image behind more than 5 hops is a loop or a trick.
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "Mozilla/5.0 (compatible; qwen-relay image fetch)"
_CHUNK_BYTES = 64 * 1024


class RefusedAddress(OSError):
    """Every address of a host is one the relay must not reach (raised by the resolver)."""


class GuardedResolver(AbstractResolver):
    """A resolver that returns only the addresses ``policy`` allows, else raises ``RefusedAddress``."""

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy = is_public_address) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if _allowed(result["host"], self._policy)]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to addresses the relay does not fetch from")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _allowed(address: str, policy: AddressPolicy) -> bool:
    try:
        return policy(ipaddress.ip_address(address.split("%", 1)[0]))  # drop an IPv6 zone index
    except ValueError:
        return False


def _is_refused(exc: BaseException) -> bool:
    """A ``RefusedAddress`` anywhere in the chain aiohttp wrapped it in."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, RefusedAddress):
            return True
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "os_error", None)
    return False


class ImageFetcher:
    """Fetch image URLs for uploads; one guarded session, opened on first use."""

    def __init__(self, *, resolver: AbstractResolver | None = None, policy: AddressPolicy = is_public_address,
                 timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES) -> None:
        """``resolver``: the real resolver to wrap (default: aiohttp's); ``policy``: which
        addresses may be reached (tests widen it to reach a loopback server)."""
        self._resolver = resolver
        self._policy = policy
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._guarded: GuardedResolver | None = None

    async def close(self) -> None:
        """Close the session, then the resolver (a connector never closes a resolver it was given)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._guarded is not None:
            await self._guarded.close()
            self._guarded = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            inner = self._resolver if self._resolver is not None else aiohttp.DefaultResolver()
            self._guarded = GuardedResolver(inner, self._policy)
            connector = aiohttp.TCPConnector(resolver=self._guarded, limit=32,
                                             use_dns_cache=False)  # each connection's addresses freshly checked
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  trust_env=False)
        return self._session

    async def fetch(self, url: str, where: str) -> ImageBytes:
        """The image at ``url`` (``where`` names the request field in errors); 400s for every failure.

        ``image_url_not_allowed`` for a refused target (an address that is not
        public, a scheme that is not http(s), too many redirects); ``image_too_large``
        over the limit; ``unsupported_image`` when the host fails or sends no image.
        Messages name the host, never the URL: its query may carry a key.
        """
        session = self._open()
        current = URL(url)
        try:
            async with asyncio.timeout(self._timeout_s):
                for _ in range(MAX_REDIRECTS + 1):
                    self._check_target(current, where)
                    async with session.get(current, allow_redirects=False,
                                           headers={"User-Agent": _USER_AGENT, "Accept": "image/*"}) as response:
                        if response.status in _REDIRECTS and "Location" in response.headers:
                            current = current.join(URL(response.headers["Location"]))
                            continue
                        return await self._read(response, current, where)
        except TimeoutError as exc:
            raise UnsupportedImage(f"The image at {_host(current)} (in {where}) did not arrive within "
                                   f"{self._timeout_s:g} s.", param=where) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if _is_refused(exc):
                raise ImageUrlNotAllowed(f"The image URL in {where} points at {_host(current)}, which is not a "
                                         "public address; the relay fetches only from the public internet.",
                                         param=where) from exc
            raise UnsupportedImage(f"The image at {_host(current)} (in {where}) could not be fetched: "
                                   f"{type(exc).__name__}.", param=where) from exc
        raise ImageUrlNotAllowed(f"The image URL in {where} redirected more than {MAX_REDIRECTS} times.",
                                 param=where)

    def _check_target(self, url: URL, where: str) -> None:
        """Scheme http(s), a host, and, when the host is an address, an allowed one."""
        if url.scheme not in ("http", "https") or not url.host:
            raise ImageUrlNotAllowed(f"The image URL in {where} leads to a {url.scheme or 'relative'} URL; only "
                                     "http(s) images are fetched.", param=where)
        try:
            literal = ipaddress.ip_address(url.host.strip("[]").split("%", 1)[0])
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not self._policy(literal):
            raise ImageUrlNotAllowed(f"The image URL in {where} points at {url.host}, which is not a public "
                                     "address; the relay fetches only from the public internet.", param=where)

    async def _read(self, response: aiohttp.ClientResponse, url: URL, where: str) -> ImageBytes:
        host = _host(url)
        if response.status != 200:
            raise UnsupportedImage(f"The image at {host} (in {where}) answered HTTP {response.status}.",
                                   param=where)
        if not response.content_type.startswith("image/"):
            raise UnsupportedImage(f"The URL in {where} ({host}) serves {response.content_type[:60]!r}, not "
                                   "an image.", param=where)
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise _too_large(declared, self._max_bytes, where)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > self._max_bytes:
                raise _too_large(size, self._max_bytes, where, at_least=True)
            chunks.append(chunk)
        return image_bytes(b"".join(chunks), where)


def _too_large(size: int, limit: int, where: str, *, at_least: bool = False) -> ImageTooLarge:
    return ImageTooLarge(f"The image in {where} is {'over ' if at_least else ''}{size} bytes; the limit is "
                         f"{limit} bytes (Qwen Chat takes 20 MB per image).", param=where)


def _host(url: URL | str) -> str:
    host = url.host if isinstance(url, URL) else urlsplit(url).hostname
    return host or "?"
