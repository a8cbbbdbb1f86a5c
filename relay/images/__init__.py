"""Images in and out of Qwen Chat: uploads through STS + OSS (QWEN_IMAGES.md §1), generation (§2).

``oss_signing`` is pure: it signs an OSS PUT with the STS credentials (V4 or V1).

The relay side (issue 20), data flowing down the list:

- ``sources`` (pure): an ``image_url`` part → bytes of a ``data:`` URI, a URL on Qwen's own
  hosts, or a third-party URL; types read from the bytes;
- ``vision`` (pure): a conversation's images out, ``[image N]`` markers in;
- ``addresses`` (pure) and ``fetch``: third-party URLs under ``--fetch-image-urls``, public
  addresses only, checked after DNS and on every redirect;
- ``uploads``, ``oss``, ``cache``: STS grant → signed PUT → ``files[]`` item, per account;
- ``params``, ``generation``, ``downloads``: ``/v1/images/*`` (``handlers/images.py``);
- ``counters``: ``/metrics`` and the access line's image counts.
"""

from __future__ import annotations

from .oss_signing import (
    SIGNING_VERSIONS,
    SigningVersion,
    StsCredentials,
    canonical_resource,
    quote_key,
    sign_put,
    v1_put_headers,
    v4_put_headers,
    v4_scope_region,
)

__all__ = [
    "SIGNING_VERSIONS",
    "SigningVersion",
    "StsCredentials",
    "canonical_resource",
    "quote_key",
    "sign_put",
    "v1_put_headers",
    "v4_put_headers",
    "v4_scope_region",
]
