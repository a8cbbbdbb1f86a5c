"""Everything that talks to Qwen Chat over the network lives here."""

from .client import UpstreamClient, UpstreamResponse

__all__ = ["UpstreamClient", "UpstreamResponse"]
