"""Qwen Chat credentials that stay signed in: cookie jars, refresh, persistence.

- ``credential.py``: ``Credential``, what one upstream call is made with (a jar,
  the browser's bx-* bundle, an egress), and ``token_expiry`` (a JWT's ``exp``);
- ``refresh.py``: ``Refresher``, the single-flight refresh at the auth host, and
  the schedule that refreshes each login before its access token expires;
- ``store.py``: where rotated jars are persisted (``--state-dir`` or Redis).
"""

from .credential import CookieJar, Credential, token_expiry

__all__ = ["CookieJar", "Credential", "token_expiry"]
