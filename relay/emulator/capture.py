"""What the request log keeps of a request: headers, cookies and body, tokens redacted.

Relay tests read these to check what the relay sent (the §7.2 header set, the
cookie jar, the 2026 body). Tokens are the one thing never stored: the log has
always held only their fingerprint (``state.fingerprint``), and a canary test
relies on it. So ``Authorization: Bearer <t>`` is kept as ``Bearer sha256:<fp>``,
and any cookie whose name contains ``token`` (``token``, ``refresh_token``) as
``sha256:<fp>``, both in the cookie dict and in the raw ``cookie`` header: a test
can still check that the Bearer and the cookie carry the same token. A sign-in
body's ``password`` (a sha256 hex, but still the credential) is redacted alike, and
so is the STS ``x-oss-security-token`` header of a PUT to the OSS stand-in (``oss.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from relay.emulator.state import fingerprint

__all__ = ["capture_cookies", "capture_headers", "decode_body", "redact_body", "redacted"]


def redacted(value: str) -> str:
    """Stand-in for a token in the log: ``sha256:`` and its fingerprint."""
    return "sha256:" + fingerprint(value)


def _is_secret_cookie(name: str) -> bool:
    return "token" in name.lower()


def capture_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case the names (a repeated header joins with ", ") and redact tokens."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key == "authorization":
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} {redacted(secret.strip())}" if secret.strip() else value
        elif key == "cookie":
            value = _redact_cookie_header(value)
        elif key == "x-oss-security-token":
            value = redacted(value)
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _redact_cookie_header(value: str) -> str:
    parts = []
    for part in value.split(";"):
        name, sep, secret = part.strip().partition("=")
        parts.append(f"{name}={redacted(secret)}" if sep and _is_secret_cookie(name) else part.strip())
    return "; ".join(parts)


def capture_cookies(cookies: Mapping[str, str]) -> dict[str, str]:
    """Copy the cookies, with token-bearing ones redacted."""
    return {name: redacted(value) if _is_secret_cookie(name) else value for name, value in cookies.items()}


def decode_body(raw: bytes) -> Any:
    """The JSON body, or None when there is none or it is not JSON."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return None


def redact_body(body: Any) -> Any:
    """Replace a top-level ``password`` (the sign-in body, §7.1) by its fingerprint."""
    if isinstance(body, dict) and isinstance(body.get("password"), str):
        return body | {"password": redacted(body["password"])}
    return body
