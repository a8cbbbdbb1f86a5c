"""The operator's view: ``/status`` (HTML), ``/status.json`` and ``/status/usage`` (issue 21).

``usage`` records each request's usage per relay key and pool account per UTC
day into the state backend, off the hot path; ``upstream_window`` keeps the
upstream's last hour; ``report`` builds the JSON and ``page`` draws it as HTML
without any script; ``admin`` checks the admin key. The routes live in
``relay/handlers/status.py``.
"""

from __future__ import annotations

from .board import StatusBoard
from .usage import UsageRecorder

__all__ = ["StatusBoard", "UsageRecorder"]
