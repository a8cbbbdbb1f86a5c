"""The APIs clients speak to the relay, each mapped onto the one pipeline.

    surfaces/
      base.py          what a surface is (Turn, Surface; the StreamEncoder is pipeline.encode's)
      openai_chat.py   POST /v1/chat/completions
      anthropic/       POST /v1/messages (Claude Code)
      responses/       POST /v1/responses (Codex CLI)

A fifth goes beside them: a module with a ``Surface`` (parse the client's body
into a ``Turn``, encode frames as its events, render an aggregate, its error
envelope), and one line in ``SURFACES``. ``handlers.serve`` does the rest.
"""

from __future__ import annotations

from .anthropic import ANTHROPIC
from .base import Surface, Turn
from .openai_chat import OPENAI_CHAT
from .responses import RESPONSES

__all__ = ["SURFACES", "Surface", "Turn"]

#: route path → surface; relay.app serves each with ``handlers.serve``.
SURFACES: dict[str, Surface] = {
    "/v1/chat/completions": OPENAI_CHAT,
    "/v1/messages": ANTHROPIC,
    "/v1/responses": RESPONSES,
}
