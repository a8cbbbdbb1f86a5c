"""Helpers shared by the phase and v2 emulator tests: raw clients, SSE splitting, 2026 requests.

The v2 helpers build what the 2026 web app sends (docs/qwen-protocol.md §7.2, §7.3), the
request a strict emulator accepts: the full browser header set with a fresh uuid4
``x-request-id`` per call, the ``token`` cookie, and the 2026 bodies. A test that
checks one strict rule takes these and breaks exactly one thing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.emulator import EMULATOR_STATE, EmulatorState, LoginSeed

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/api/chat/completions"
V2_NEW = "/api/v2/chats/new"
V2_CHAT = "/api/v2/chat/completions"
V2_STOP = "/api/v2/chat/completions/stop"
SSE_TYPE = "text/event-stream; charset=utf-8"
# Generous bound for awaiting an event; only reached when the behaviour is broken.
WAIT_S = 5.0

Client = TestClient[web.Request, web.Application]

ORIGIN = "https://chat.qwen.ai"
CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/156.0.0.0 Safari/537.36")
SEC_CH_UA = '"Chromium";v="156", "Google Chrome";v="156", "Not_A Brand";v="99"'
V2_MODEL = "qwen3-235b-a22b"
# The web app's "Fast" gear (§7.3): no thinking, so answers are just the reply.
FAST = {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast", "output_schema": "phase",
        "research_mode": "normal", "auto_search": True}


def v2_headers(page: str = "/c/new-chat", *, completions: bool = False, token: str = TOKEN,
               cookie: str | None = None) -> dict[str, str]:
    """The full 2026 header set for a v2 write from ``page`` (a fresh x-request-id each call).

    ``cookie`` replaces the bare ``token=…`` jar, e.g. with a login's whole jar
    (``LoginSeed.cookie``).
    """
    headers = {
        "User-Agent": CHROME_UA,
        "sec-ch-ua": SEC_CH_UA,
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Windows"',
        "Accept-Language": "en-US,en;q=0.9",
        "Origin": ORIGIN,
        "Referer": ORIGIN + page,
        "source": "web",
        "version": "0.3.12",
        "x-request-id": str(uuid.uuid4()),
        "timezone": "Thu Dec 03 2026 08:30:00 GMT+0000",
        "sec-fetch-dest": "empty",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "same-origin",
        "Cookie": f"token={token}" if cookie is None else cookie,
        "Authorization": f"Bearer {token}",
    }
    if completions:
        headers |= {"Accept": "application/json", "x-accel-buffering": "no"}
    return headers


def login_headers(seed: LoginSeed, page: str = "/c/new-chat", **kw: Any) -> dict[str, str]:
    """A v2 write as the web app signed in as ``seed`` sends it: Bearer and the whole jar (§7.1)."""
    return v2_headers(page, token=seed.access_token, cookie=seed.cookie, **kw)


def refresh_headers(cookie: str) -> dict[str, str]:
    """What the web app sends to ``GET auth.qwen.ai/api/v2/auths/refresh`` (§7.1 [S])."""
    return {"User-Agent": CHROME_UA, "version": "0.3.12", "source": "web", "x-request-origin": ORIGIN,
            "sec-fetch-site": "same-site", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty",
            "Origin": ORIGIN, "Cookie": cookie}


def new_chat_headers(**kw: Any) -> dict[str, str]:
    return v2_headers("/c/new-chat", **kw)


def chat_headers(chat_id: str, **kw: Any) -> dict[str, str]:
    """Headers for a completion (or, with ``completions=False``, a stop) in ``chat_id``."""
    kw.setdefault("completions", True)
    return v2_headers(f"/c/{chat_id}", **kw)


def new_chat_body(model: str = V2_MODEL, **extra: Any) -> dict[str, Any]:
    """The 2026 ``chats/new`` body (§7.3)."""
    return {"chatId": "", "models": [model], "project_id": "", "timestamp": int(time.time() * 1000),
            "chat_type": "t2t", "chat_mode": "normal", **extra}


def completion_body(chat_id: str, text: str = "hi", *, model: str = V2_MODEL,
                    feature_config: dict[str, Any] | None = None, chat_type: str = "t2t",
                    **extra: Any) -> dict[str, Any]:
    """The 2026 completion body (§7.3); ``feature_config`` defaults to the Fast gear."""
    now = int(time.time())
    message = {"id": None, "fid": str(uuid.uuid4()), "parentId": None, "childrenIds": [str(uuid.uuid4())],
               "role": "user", "content": text, "user_action": "chat", "files": [], "timestamp": now,
               "models": [model], "model": model, "chat_type": chat_type, "sub_chat_type": chat_type,
               "extra": {"meta": {"subChatType": chat_type}},
               "feature_config": dict(FAST) if feature_config is None else feature_config}
    return {"stream": True, "version": "2.1", "incremental_output": True, "chat_id": chat_id, "chatId": chat_id,
            "parentId": "", "parent_id": None, "chat_mode": "normal", "model": model, "timestamp": now,
            "messages": [message], **extra}


async def create_chat(client: Client, model: str = V2_MODEL) -> str:
    """Make a chat the 2026 way and return its id."""
    async with client.post(V2_NEW, json=new_chat_body(model), headers=new_chat_headers()) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["success"] is True, answer
    chat_id: str = answer["data"]["id"]
    return chat_id


def completion_url(chat_id: str) -> str:
    return f"{V2_CHAT}?chat_id={chat_id}"


def state_of(client: Client) -> EmulatorState:
    return client.app[EMULATOR_STATE]


def with_directive(text: str, **fields: Any) -> str:
    return f"{text}\n#emulator {json.dumps(fields)}" if fields else text


def data_payloads(raw: str) -> list[str]:
    """Split an SSE body into its ``data:`` payloads (trailing spaces kept)."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return [line[5:].removeprefix(" ") for line in text.split("\n") if line.startswith("data:")]


def events(raw: str) -> list[Any]:
    """Decode every ``data:`` payload; ``[DONE]`` stays the string ``"[DONE]"``."""
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in data_payloads(raw)]


def deltas(raw: str) -> list[dict[str, Any]]:
    """The ``choices[0].delta`` of every chunk event, in order."""
    return [
        event["choices"][0]["delta"]
        for event in events(raw)
        if isinstance(event, dict) and event.get("choices")
    ]


def phases(raw: str) -> list[tuple[str | None, str | None, str]]:
    """(phase, status, content) of every delta: the shape tests compare."""
    return [(d.get("phase"), d.get("status"), d.get("content", "")) for d in deltas(raw)]
