"""Everything that talks to Qwen Chat over the network lives here."""

from .client import UpstreamClient
from .egress import Egress
from .response import UpstreamResponse

__all__ = ["Egress", "UpstreamClient", "UpstreamResponse"]
