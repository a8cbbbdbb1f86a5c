"""The SSRF guard of --fetch-image-urls: public addresses only, after DNS and on every redirect (issue 20).

``is_public_address`` is checked on plain data; ``ImageFetcher`` against real
servers on loopback, with a resolver injected (a name → address table, as DNS
would answer) and, where a test must reach its own server, a policy that allows
exactly 127.0.0.1, so 127.0.0.2 (also loopback on Linux) stands for "internal".
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pytest_aiohttp import AiohttpServer

from relay.emulator.png import solid_png
from relay.errors import ImageTooLarge, ImageUrlNotAllowed, UnsupportedImage
from relay.images.addresses import is_public_address
from relay.images.fetch import GuardedResolver, ImageFetcher, RefusedAddress

PNG = solid_png(4, 4, (1, 2, 3))
#: ``(host, app) → base URL`` of a test server listening on ``host``.
ServerFactory = Callable[[str, web.Application], Awaitable[str]]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.7", "::1", "::", "fe80::1", "fd00:ec2::254",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:c0a8:0101::1", "ff02::1"])
def test_addresses_the_relay_itself_can_reach_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808"])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


class TableResolver(AbstractResolver):
    """DNS as a table: each name answers the addresses given."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"no such name: {host}")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET, proto=0, flags=0)
                for address in self.table[host]]

    async def close(self) -> None:
        return None


def only_first_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The test's own server may be reached (127.0.0.1); every other non-public address may not."""
    return address == ipaddress.ip_address("127.0.0.1") or is_public_address(address)


async def test_the_resolver_drops_private_answers_and_refuses_when_none_is_left() -> None:
    guarded = GuardedResolver(TableResolver({"mixed.test": ["10.0.0.1", "8.8.8.8"],
                                             "private.test": ["10.0.0.1", "fd00::1"]}))
    assert [r["host"] for r in await guarded.resolve("mixed.test", 80)] == ["8.8.8.8"]
    with pytest.raises(RefusedAddress):
        await guarded.resolve("private.test", 80)


@pytest.fixture
def hits() -> list[str]:
    """What the test servers were asked, as ``host:port/path``."""
    return []


@pytest.fixture
def make_server(aiohttp_server: AiohttpServer) -> ServerFactory:
    async def start(host: str, app: web.Application) -> str:
        server = await aiohttp_server(app, host=host)
        return f"http://{host}:{server.port}"

    return start


def image_app(hits: list[str], *, body: bytes = PNG, content_type: str = "image/png",
              redirect: str | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        hits.append(f"{request.host}{request.path}")
        if redirect is not None and request.path == "/hop":
            raise web.HTTPFound(redirect)
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    return app


async def test_a_name_resolving_to_a_private_address_is_refused_and_never_contacted(
        make_server: ServerFactory, hits: list[str]) -> None:
    base = await make_server("127.0.0.2", image_app(hits))
    port = base.rsplit(":", 1)[1]
    resolver = TableResolver({"images.internal.test": ["127.0.0.2"], "meta.test": ["169.254.169.254"]})
    fetcher = ImageFetcher(resolver=resolver, policy=only_first_loopback)
    try:
        for url in (f"http://images.internal.test:{port}/a.png", "http://meta.test/latest/meta-data"):
            with pytest.raises(ImageUrlNotAllowed):
                await fetcher.fetch(url, "image 1")
    finally:
        await fetcher.close()
    assert resolver.asked == ["images.internal.test", "meta.test"], "checked after resolution"
    assert hits == []


async def test_address_literals_are_checked_without_dns(
        make_server: ServerFactory, hits: list[str]) -> None:
    base = await make_server("127.0.0.1", image_app(hits))
    resolver = TableResolver({})
    fetcher = ImageFetcher(resolver=resolver)  # the real policy: public addresses only
    try:
        for url in (f"{base}/a.png", "http://[::1]/a.png", "http://[::ffff:127.0.0.1]/a.png",
                    "http://169.254.169.254/latest/meta-data/"):
            with pytest.raises(ImageUrlNotAllowed):
                await fetcher.fetch(url, "image 1")
    finally:
        await fetcher.close()
    assert hits == [] and resolver.asked == []


async def test_every_redirect_hop_is_checked_again(
        make_server: ServerFactory, hits: list[str]) -> None:
    internal = await make_server("127.0.0.2", image_app(hits))
    internal_port = internal.rsplit(":", 1)[1]
    resolver = TableResolver({"cdn.test": ["127.0.0.1"], "inside.test": ["127.0.0.2"]})
    for target in (f"{internal}/secret.png", f"http://inside.test:{internal_port}/secret.png",
                   "file:///etc/passwd"):
        public = await make_server("127.0.0.1", image_app(hits, redirect=target))
        fetcher = ImageFetcher(resolver=resolver, policy=only_first_loopback)
        try:
            with pytest.raises(ImageUrlNotAllowed):
                await fetcher.fetch(f"http://cdn.test:{public.rsplit(':', 1)[1]}/hop", "image 1")
        finally:
            await fetcher.close()
    assert all(hit.startswith("cdn.test") for hit in hits), hits  # the first hop only, never the inside


async def test_an_allowed_image_is_fetched_through_a_redirect(
        make_server: ServerFactory, hits: list[str]) -> None:
    final = await make_server("127.0.0.1", image_app(hits))
    first = await make_server("127.0.0.1", image_app(hits, redirect=f"{final}/cat.png"))
    fetcher = ImageFetcher(resolver=TableResolver({}), policy=only_first_loopback)
    try:
        image = await fetcher.fetch(f"{first}/hop", "image 1")
    finally:
        await fetcher.close()
    assert image.data == PNG and image.mime == "image/png"


@pytest.mark.parametrize(("body", "content_type", "error"), [
    (PNG + bytes(2048), "image/png", ImageTooLarge),
    (b"<html>not an image</html>", "text/html", UnsupportedImage),
    (b"%PDF-1.7", "image/png", UnsupportedImage),
])
async def test_size_and_type_are_enforced(
        make_server: ServerFactory, hits: list[str],
        body: bytes, content_type: str, error: type[Exception]) -> None:
    base = await make_server("127.0.0.1", image_app(hits, body=body, content_type=content_type))
    fetcher = ImageFetcher(resolver=TableResolver({}), policy=only_first_loopback, max_bytes=1024)
    try:
        with pytest.raises(error):
            await fetcher.fetch(f"{base}/x.png", "image 1")
    finally:
        await fetcher.close()
