"""The request headers of each upstream call: the one place they are built.

qwen-v2 speaks as Qwen Chat's own web app does in 2026 (docs/qwen-protocol.md
§7.2): Origin and a per-call Referer, ``source``, ``version``, a fresh uuid4
``x-request-id``, ``timezone`` in the JS ``Date().toString()`` form, the
``sec-fetch-*`` triple, client hints that agree with the User-Agent, the access
token as the ``token`` cookie (and as Bearer, as bundle 0.3.x sends it), and on
completions ``Accept: application/json`` and ``x-accel-buffering: no``. Missing
pieces of that set were what tripped the service's risk control in September 2026.

qwen-v1 and qwen-phase keep their historic set: the browser basics, Bearer, and
``Accept: text/event-stream`` on streams.

``[upstream.headers]`` overrides any header by name. Cost: the fixed part is
built once per client; per call come the uuid4, the Referer, the credentials and
the timezone string (cached for the second it names).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

from ..accounts.credential import Credential
from ..config import Config, zone
from . import UpstreamCall

__all__ = ["CALL_KINDS", "DEFAULT_USER_AGENT", "Headers", "LegacyHeaders", "WebHeaders", "client_hints",
           "js_date"]

#: what an upstream call is for; decides its Referer and Accept.
#: ``upload``: ``files/getstsToken`` (QWEN_IMAGES.md §1.2, signed like chat writes);
#: ``chat``: reading one chat back (``GET /api/v2/chats/<id>``).
CALL_KINDS = ("models", "new_chat", "completion", "stop", "delete", "upload", "chat")
#: the calls that write: they carry the login's bx-* bundle (§7.1).
_WRITES = frozenset({"new_chat", "completion", "stop", "delete", "upload"})
#: the web app's own origin: the auth host is asked on its behalf (§7.1).
_WEB_APP_ORIGIN = "https://chat.qwen.ai"
Headers = list[tuple[str, str]]

_CHROME_MAJOR = 156
#: a current Chrome on Windows (Debian's Chromium is 156 in December 2026).
DEFAULT_USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      f"Chrome/{_CHROME_MAJOR}.0.0.0 Safari/537.36")
#: what qwen-v1/phase always sent (the seed's successors, 2025).
_LEGACY_USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                      "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
_ACCEPT_LANGUAGE = "en-US,en;q=0.9"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PLATFORMS = (("Windows", "Windows"), ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"),
              ("Macintosh", "macOS"), ("CrOS", "Chrome OS"), ("Linux", "Linux"))


def client_hints(user_agent: str) -> Headers:
    """``sec-ch-ua``, ``-mobile`` and ``-platform`` as the browser named by ``user_agent`` sends them.

    Only Chromium-based browsers send client hints; for any other User-Agent none
    is sent, since hints that contradict the User-Agent are a bot's signature.
    """
    chrome = re.search(r"Chrome/(\d+)", user_agent)
    if chrome is None:
        return []
    major = chrome.group(1)
    brands = [f'"Chromium";v="{major}"']
    edge = re.search(r"Edg/(\d+)", user_agent)
    brands.append(f'"Microsoft Edge";v="{edge.group(1)}"' if edge else f'"Google Chrome";v="{major}"')
    brands.append('"Not_A Brand";v="99"')
    platform = next((name for marker, name in _PLATFORMS if marker in user_agent), "Unknown")
    mobile = "?1" if "Mobile" in user_agent else "?0"
    return [("sec-ch-ua", ", ".join(brands)), ("sec-ch-ua-mobile", mobile),
            ("sec-ch-ua-platform", f'"{platform}"')]


def js_date(moment: datetime) -> str:
    """``Thu Dec 03 2026 15:04:05 GMT+0800``: JavaScript's ``Date().toString()`` without the zone name."""
    offset = moment.strftime("%z") or "+0000"
    return (f"{_DAYS[moment.weekday()]} {_MONTHS[moment.month - 1]} {moment.day:02d} {moment.year} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} GMT{offset}")


def _override(headers: Headers, overrides: Sequence[tuple[str, str]]) -> Headers:
    """``headers`` with each override replacing the header of the same name (any case), or added."""
    if not overrides:
        return headers
    replaced = {name.lower() for name, _ in overrides}
    return [(name, value) for name, value in headers if name.lower() not in replaced] + list(overrides)


class WebHeaders:
    """The 2026 web app's header set (qwen-v2), per call."""

    def __init__(self, origin: str, config: Config) -> None:
        web = config.web
        self._origin = origin
        self._zone = zone(web.timezone)
        self._bearer = web.bearer
        # Cookies given as a header (programmatic configs) join the configured ones; a
        # credential's own jar wins over both, name by name, and its token is never replaced.
        given = [web.cookies, *(value for name, value in config.upstream_headers if name.lower() == "cookie")]
        self._cookies = [(name.strip(), value.strip()) for text in given for part in text.split(";")
                         for name, sep, value in [part.partition("=")] if sep and name.strip()]
        user_agent = web.user_agent or DEFAULT_USER_AGENT
        self._fixed: Headers = [
            ("User-Agent", user_agent), *client_hints(user_agent), ("Accept-Language", _ACCEPT_LANGUAGE),
            ("Origin", origin), ("source", "web"), ("version", web.version),
            ("sec-fetch-dest", "empty"), ("sec-fetch-mode", "cors"), ("sec-fetch-site", "same-origin"),
        ]
        self._overrides = tuple((name, value) for name, value in config.upstream_headers
                                if name.lower() != "cookie")
        self._second = -1
        self._timezone = ""

    def for_call(self, call: UpstreamCall, credential: Credential) -> Headers:
        """Every header of ``call`` (its ``kind``: see ``CALL_KINDS``) made with ``credential``."""
        kind, chat_id = call.kind, call.chat_id
        if kind in ("new_chat", "upload"):  # images are attached on the new chat's page, before it exists
            referer = f"{self._origin}/c/new-chat"
        elif chat_id and kind in ("completion", "stop", "delete", "chat"):
            referer = f"{self._origin}/c/{chat_id}"
        else:
            referer = f"{self._origin}/"
        headers = [*self._fixed, ("Referer", referer), ("x-request-id", str(uuid.uuid4())),
                   ("timezone", self._now()), ("Cookie", self._cookie(credential))]
        if self._bearer:
            headers.append(("Authorization", f"Bearer {credential.token}"))
        if kind in _WRITES:
            headers += credential.bx
        if kind == "completion":
            headers += [("Accept", "application/json"), ("x-accel-buffering", "no")]
        else:
            headers.append(("Accept", "application/json, text/plain, */*"))
        return _override(headers, self._overrides)

    def for_refresh(self, credential: Credential) -> Headers:
        """The headers of ``GET {auth-origin}/api/v2/auths/refresh`` (§7.1 [S]): without
        ``version``, ``source``, ``x-request-origin`` and ``sec-fetch-site: same-site`` the
        auth host answers "Invalid request header"."""
        fixed = [(name, value) for name, value in self._fixed
                 if name not in ("Origin", "sec-fetch-site")]
        headers = [*fixed, ("Origin", _WEB_APP_ORIGIN), ("Referer", _WEB_APP_ORIGIN + "/"),
                   ("x-request-origin", _WEB_APP_ORIGIN), ("sec-fetch-site", "same-site"),
                   ("x-request-id", str(uuid.uuid4())), ("timezone", self._now()),
                   ("Cookie", self._cookie(credential)), ("Accept", "application/json, text/plain, */*"),
                   *credential.bx]
        return _override(headers, self._overrides)

    def _cookie(self, credential: Credential) -> str:
        """The credential's jar (``token`` first), then configured cookies it does not hold."""
        jar = credential.jar.header()
        extra = "; ".join(f"{name}={value}" for name, value in self._cookies
                          if name != "token" and credential.jar.get(name) is None)
        return f"{jar}; {extra}" if jar and extra else (jar or extra)

    def _now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._timezone = js_date(datetime.fromtimestamp(second, self._zone))
        return self._timezone


class LegacyHeaders:
    """The historic header set of qwen-v1 and qwen-phase (2025): unchanged behaviour."""

    def __init__(self, origin: str, config: Config) -> None:
        fixed: Headers = [("User-Agent", _LEGACY_USER_AGENT), ("Accept-Language", _ACCEPT_LANGUAGE),
                          ("Origin", origin), ("Referer", origin + "/"), ("source", "web")]
        if config.web.cookies:
            fixed.append(("Cookie", config.web.cookies))
        self._fixed = _override(fixed, config.upstream_headers)

    def for_call(self, call: UpstreamCall, credential: Credential) -> Headers:
        accept = "text/event-stream" if call.stream else "application/json"
        return [*self._fixed, ("Authorization", f"Bearer {credential.token}"), ("Accept", accept)]
