"""Everything that talks to Qwen Chat over the network lives here."""

from .client import UpstreamClient, UpstreamResponse
from .egress import Egress

__all__ = ["Egress", "UpstreamClient", "UpstreamResponse"]
