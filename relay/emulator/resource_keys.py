"""The ``?key=<JWT>`` of Qwen's CDN links, minted and checked (QWEN_IMAGES.md §1.2 I-01, §2.1).

Every link the service hands out for a user's file or generated image carries an
HS256 JWT naming the resource's user, id and chat; the CDN refuses the link
without it. The emulator signs with a per-process secret (``FileBook.secret``),
adds ``exp`` (``UploadKnobs.output_ttl_s``) and ``iat``; a key minted before
``not_before`` (``POST /_emulator/files/expire``) is refused as if expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

__all__ = ["mint_resource_key", "resource_key_problem"]

_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _sign(secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def mint_resource_key(secret: bytes, *, user_id: str, resource_id: str, chat_id: str | None, now: float,
                      ttl_s: float) -> str:
    """A key for one resource, as I-01 shows it: ``resource_user_id``, ``resource_id``, ``resource_chat_id``."""
    payload = {"resource_user_id": user_id, "resource_id": resource_id, "resource_chat_id": chat_id,
               "iat": now, "exp": now + ttl_s}
    signing_input = f"{_segment(_HEADER)}.{_segment(payload)}"
    return f"{signing_input}.{_sign(secret, signing_input)}"


def resource_key_problem(secret: bytes, key: str | None, *, user_id: str, resource_id: str, now: float,
                         not_before: float) -> str | None:
    """Why ``key`` does not open that resource ("missing", "invalid", "expired", "other_resource"), or None."""
    if not key:
        return "missing"
    parts = key.split(".")
    if len(parts) != 3 or not hmac.compare_digest(parts[2], _sign(secret, f"{parts[0]}.{parts[1]}")):
        return "invalid"
    try:
        payload = json.loads(_unb64(parts[1]))
    except (ValueError, binascii.Error):
        return "invalid"
    if not isinstance(payload, dict):
        return "invalid"
    if payload.get("resource_id") != resource_id or payload.get("resource_user_id") != user_id:
        return "other_resource"
    issued, expires = payload.get("iat"), payload.get("exp")
    if not isinstance(issued, (int, float)) or not isinstance(expires, (int, float)):
        return "invalid"
    if now >= expires or issued < not_before:
        return "expired"
    return None
