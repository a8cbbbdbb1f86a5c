"""qwen-relay: an OpenAI-compatible relay for the Qwen Chat web service."""

__all__ = ["__version__"]

__version__ = "0.1.0"
