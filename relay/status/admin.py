"""Who may read the status page: the keys of ``[operator] admin_keys``, by Bearer or Basic.

A browser can only send a key it was asked for, and it asks through HTTP Basic
(``WWW-Authenticate: Basic``); curl and scripts send ``Authorization: Bearer``.
Both carry the same key: Basic's user name is ignored, its password is the key.
The presented key is hashed once and compared with every admin digest without
stopping at a match (``hmac.compare_digest``), as relay keys are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

__all__ = ["MAX_KEY_CHARS", "Presented", "is_admin_key", "presented_key"]

#: a key longer than this is not one (relay keys are printed by ``openssl rand``).
MAX_KEY_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Presented:
    """A key from the Authorization header and how it came: ``bearer`` or ``basic``."""

    scheme: str
    key: str = field(repr=False)


def presented_key(authorization: str | None) -> Presented | None:
    """The key of ``Bearer <key>`` or ``Basic base64(user:key)``; None when absent or malformed."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        key = value
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, colon, key = decoded.partition(":")
        if not colon:
            return None
    else:
        return None
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        return None
    return Presented(scheme, key)


def is_admin_key(key: str, digests: tuple[bytes, ...]) -> bool:
    """Whether ``key`` hashes to one of ``digests``; the time taken does not depend on which."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    found = False
    for admin in digests:  # no early exit
        found |= hmac.compare_digest(digest, admin)
    return found
