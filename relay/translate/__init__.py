"""Translation endpoints' core: languages, the keyed JSON prompt, batching, the service.

The web surfaces (DeepLX ``/translate``, Immersive ``/imme``, Kiss ``/kiss``) live
in ``handlers/translate.py``; everything here is free of aiohttp.
"""

from __future__ import annotations

from .languages import Language, parse_language
from .service import Exchange, TranslateLimits, TranslationStats, translate_texts

__all__ = ["Exchange", "Language", "TranslateLimits", "TranslationStats", "parse_language", "translate_texts"]
