"""The qwen-v2 header set, read against docs/qwen-protocol.md §7.2 (issue 16, item 1)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from relay.accounts.credential import Credential
from relay.config import Config, WebClient
from relay.dialects import UpstreamCall
from relay.dialects.web_headers import DEFAULT_USER_AGENT, LegacyHeaders, WebHeaders, client_hints, js_date

ORIGIN = "https://chat.qwen.ai"
TOKEN = "eyJ.header.sig"
CREDENTIAL = Credential.bare(TOKEN)
JS_DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{2} \d{4} \d{2}:\d{2}:\d{2} GMT[+-]\d{4}$")


def call(kind: str, chat_id: str | None = "c1") -> UpstreamCall:
    return UpstreamCall("/x", {}, stream=kind == "completion", chat_id=chat_id, kind=kind)


def headers_of(kind: str, config: Config | None = None, chat_id: str | None = "c1") -> dict[str, str]:
    built = WebHeaders(ORIGIN, config or Config()).for_call(call(kind, chat_id), CREDENTIAL)
    names = [name.lower() for name, _ in built]
    assert len(names) == len(set(names)), f"a header appears twice: {names}"
    return {name.lower(): value for name, value in built}


@pytest.mark.parametrize("kind", ["models", "new_chat", "completion", "stop", "delete"])
def test_every_call_carries_the_web_app_set(kind: str) -> None:
    headers = headers_of(kind)
    assert headers["origin"] == ORIGIN
    assert headers["source"] == "web"
    assert headers["version"] == "0.3.12"
    assert uuid.UUID(headers["x-request-id"]).version == 4
    assert JS_DATE.match(headers["timezone"]), headers["timezone"]
    assert headers["timezone"].endswith("GMT+0000")
    assert (headers["sec-fetch-dest"], headers["sec-fetch-mode"], headers["sec-fetch-site"]) == (
        "empty", "cors", "same-origin")
    assert headers["user-agent"] == DEFAULT_USER_AGENT
    assert '"Google Chrome";v="156"' in headers["sec-ch-ua"] and headers["sec-ch-ua-platform"] == '"Windows"'
    assert headers["sec-ch-ua-mobile"] == "?0"
    assert headers["accept-language"]
    assert headers["cookie"] == f"token={TOKEN}"
    assert headers["authorization"] == f"Bearer {TOKEN}"


def test_referer_and_accept_per_call() -> None:
    assert headers_of("new_chat")["referer"] == f"{ORIGIN}/c/new-chat"
    for kind in ("completion", "stop", "delete"):
        assert headers_of(kind, chat_id="abc")["referer"] == f"{ORIGIN}/c/abc"
    assert headers_of("models", chat_id=None)["referer"] == f"{ORIGIN}/"
    completion = headers_of("completion")
    assert completion["accept"] == "application/json" and completion["x-accel-buffering"] == "no"
    assert "text/event-stream" not in headers_of("new_chat")["accept"]
    assert "x-accel-buffering" not in headers_of("new_chat")


def test_each_call_gets_a_fresh_request_id() -> None:
    builder = WebHeaders(ORIGIN, Config())
    ids = {dict(builder.for_call(call("completion"), CREDENTIAL))["x-request-id"] for _ in range(50)}
    assert len(ids) == 50


def test_settings_change_version_zone_agent_cookies_and_bearer() -> None:
    agent = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/150.0.0.0 Safari/537.36")
    config = Config(web=WebClient(version="0.3.20", timezone="Asia/Shanghai", user_agent=agent, bearer=False,
                                  cookies="acw_tc=1; token=stale; x-ap=2"))
    headers = headers_of("completion", config)
    assert headers["version"] == "0.3.20"
    assert headers["timezone"].endswith("GMT+0800")
    assert headers["user-agent"] == agent
    assert '"Chromium";v="150"' in headers["sec-ch-ua"] and headers["sec-ch-ua-platform"] == '"macOS"'
    assert "authorization" not in headers
    assert headers["cookie"] == f"token={TOKEN}; acw_tc=1; x-ap=2"  # the credential's token wins


def test_upstream_headers_override_any_header_by_name() -> None:
    config = Config(upstream_headers=(("Version", "9.9.9"), ("bx-v", "2.5.36"), ("accept", "*/*")))
    headers = headers_of("completion", config)
    assert headers["version"] == "9.9.9" and headers["bx-v"] == "2.5.36" and headers["accept"] == "*/*"


def test_a_browser_without_client_hints_gets_none() -> None:
    assert client_hints("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0") == []
    assert client_hints("Mozilla/5.0 (Linux; Android 14) Chrome/150.0 Mobile Safari/537.36")[1] == (
        "sec-ch-ua-mobile", "?1")


def test_js_date_is_javascripts_to_string() -> None:
    moment = datetime(2026, 12, 3, 15, 4, 5, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert js_date(moment) == "Thu Dec 03 2026 15:04:05 GMT+0800"


def test_unknown_time_zone_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="timezone"):
        WebClient(timezone="Mars/Olympus")


def test_legacy_dialects_keep_their_historic_headers() -> None:
    headers = dict(LegacyHeaders(ORIGIN, Config()).for_call(call("completion"), CREDENTIAL))
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["Accept"] == "text/event-stream"
    assert "x-request-id" not in headers and "Cookie" not in headers


def test_an_accounts_jar_and_bx_bundle_ride_on_writes_only() -> None:
    from relay.accounts.credential import CookieJar

    account = Credential("main", CookieJar.parse("token=t1; refresh_token=r1; acw_tc=9"),
                         bx=(("bx-ua", "UA"), ("bx-umidtoken", "UM"), ("bx-v", "2.5.36")), is_account=True)
    config = Config(web=WebClient(cookies="acw_tc=configured; ssxmod_itna=s"))
    write = {k.lower(): v for k, v in WebHeaders(ORIGIN, config).for_call(call("completion"), account)}
    assert write["cookie"] == "token=t1; refresh_token=r1; acw_tc=9; ssxmod_itna=s"  # the jar wins by name
    assert (write["bx-ua"], write["bx-umidtoken"], write["bx-v"]) == ("UA", "UM", "2.5.36")
    read = {k.lower() for k, _ in WebHeaders(ORIGIN, config).for_call(call("models"), account)}
    assert "bx-ua" not in read


def test_refresh_headers_are_the_auth_hosts() -> None:
    headers = {k.lower(): v for k, v in WebHeaders(ORIGIN, Config()).for_refresh(CREDENTIAL)}
    assert headers["sec-fetch-site"] == "same-site" and headers["x-request-origin"] == "https://chat.qwen.ai"
    assert headers["version"] == "0.3.12" and headers["source"] == "web"
    assert headers["cookie"] == f"token={TOKEN}"
