"""The ways out to the upstream: one aiohttp session per egress, shared by every client.

aiohttp's ``ClientSession`` owns a connector, and a connector connects one way:
directly (aiohttp's ``TCPConnector``) or through one proxy (aiohttp-socks'
``ProxyConnector``, which speaks HTTP CONNECT and SOCKS5 alike). So there is one
session per egress: direct, and one per distinct proxy URL, each made on first
use (inside the running loop) and all closed by ``close``. The relay's clients
(the chat origin, the auth origin) share them: one keep-alive pool per way out.

Which way a call goes: its own proxy (an account's), else ``--proxy``, else the
environment's ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` for that origin,
else direct.

Why this differs from aiohttp's ``trust_env=True``: with it, aiohttp reads the
environment and ``~/.netrc`` again on every request, each in a worker thread
(two thread hops per call), and a netrc entry for the upstream host makes it
refuse the ``Authorization`` header we send. Here aiohttp's own
``get_env_proxy_for_url`` reads the environment once per origin, on the first
call there: the same rules and parser, no cost per request.

Cookies: every session has a ``DummyCookieJar``. The relay keeps cookies itself
(``on_cookies``), so a ``Set-Cookie`` answering one caller never rides along on
another caller's request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp_socks import ProxyConnector
from yarl import URL

from ..config import Config, proxy_problem

__all__ = ["KEEPALIVE_S", "POOL_HEADROOM", "Egress", "EgressClosed", "Route", "proxy_address"]

#: keep-alive connections per session beyond the concurrency limit (models fetches, stop requests).
POOL_HEADROOM = 32
#: an idle keep-alive connection is closed after this: shorter than the idle timeouts of
#: the load balancers in front of Qwen Chat, so the relay, not they, ends it (no race on reuse).
KEEPALIVE_S = 15.0
#: a response header field up to this size: Qwen Chat's cookies run long (aiohttp's default is 8 KiB).
_MAX_FIELD_BYTES = 16 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


class EgressClosed(ConnectionError):
    """A call after ``Egress.close``: the relay is shutting down."""


@dataclass(frozen=True, slots=True)
class Route:
    """The session one call goes through, and its proxy as ``host:port`` (None: direct)."""

    session: aiohttp.ClientSession
    proxy: str | None


def proxy_address(url: str) -> str:
    """``host:port`` of a proxy URL, for messages: never its user or password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)}"


class Egress:
    """The aiohttp sessions upstream calls leave through: direct, and one per proxy URL."""

    def __init__(self, *, limit: int, proxy: str | None = None, ca_file: str | None = None) -> None:
        """``limit``: connections per session; ``proxy``: for calls without their own;
        ``ca_file``: PEM certificates trusted beside the system's (a TLS-inspecting proxy)."""
        if proxy is not None and (problem := proxy_problem(proxy)) is not None:
            raise ValueError(f"--proxy: {problem}")
        self._limit = limit
        self._default_proxy = proxy
        self._ssl = ssl.create_default_context()
        if ca_file is not None:
            self._ssl.load_verify_locations(cafile=ca_file)
        #: proxy URL (None: direct) → its session.
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        #: (origin, the call's own proxy) → route: the choice is made once, then a dict lookup.
        self._routes: dict[tuple[str, str | None], Route] = {}
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> Egress:
        return cls(limit=config.limits.max_concurrency + POOL_HEADROOM, proxy=config.proxy,
                   ca_file=config.ca_file)

    def route(self, origin: str, proxy: str | None = None) -> Route:
        """The way out for a call to ``origin`` with its own ``proxy`` (None: the default).

        Raises ``ValueError`` for a malformed proxy URL (the message never quotes
        it) and ``EgressClosed`` after ``close``.
        """
        if self._closed:
            raise EgressClosed("The upstream sessions are closed (the relay is shutting down).")
        route = self._routes.get((origin, proxy))
        if route is None:
            route = self._routes[(origin, proxy)] = self._new_route(origin, proxy)
        return route

    async def close(self) -> None:
        """Close every session and its connections; later calls raise ``EgressClosed``."""
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._routes.clear()
        for session in sessions:
            await session.close()

    def _new_route(self, origin: str, proxy: str | None) -> Route:
        chosen = proxy or self._default_proxy or _env_proxy(origin)
        if chosen is None:
            return Route(self._session(None), None)
        if (problem := proxy_problem(chosen)) is not None:
            raise ValueError(f"proxy {proxy_address(chosen)}: {problem}")
        return Route(self._session(chosen), proxy_address(chosen))

    def _session(self, proxy: str | None) -> aiohttp.ClientSession:
        session = self._sessions.get(proxy)
        if session is None:
            session = self._sessions[proxy] = aiohttp.ClientSession(
                connector=self._connector(proxy),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                # aiohttp adds Host, Accept and Accept-Encoding; the User-Agent is the call's own.
                skip_auto_headers=("User-Agent",),
                max_field_size=_MAX_FIELD_BYTES,
                trust_env=False,  # see the module docstring: the environment is read per origin
            )
        return session

    def _connector(self, proxy: str | None) -> aiohttp.TCPConnector:
        if proxy is None:
            return aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl, keepalive_timeout=KEEPALIVE_S)
        parts = urlsplit(proxy)
        scheme = parts.scheme
        # aiohttp-socks knows http:// and socks5:// with an explicit port; https:// is
        # http:// with TLS to the proxy, socks5h:// is socks5:// resolving names at the proxy.
        userinfo = parts.netloc.rpartition("@")[0]
        url = (f"{'socks5' if scheme.startswith('socks5') else 'http'}://"
               f"{userinfo + '@' if userinfo else ''}{proxy_address(proxy)}")
        return ProxyConnector.from_url(
            url,
            rdns=scheme == "socks5h" if scheme.startswith("socks5") else None,
            proxy_ssl=self._ssl if scheme == "https" else None,
            limit=self._limit, ssl=self._ssl, keepalive_timeout=KEEPALIVE_S,
        )


def _env_proxy(origin: str) -> str | None:
    """The environment's proxy for ``origin`` (``HTTP(S)_PROXY``, ``NO_PROXY``), by aiohttp's own rules."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(origin))
    except LookupError:
        return None
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)
