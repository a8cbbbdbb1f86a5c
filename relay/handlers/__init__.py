"""HTTP handlers: thin; parse, call, respond."""

__all__: list[str] = []
