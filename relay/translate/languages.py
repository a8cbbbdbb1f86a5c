"""Language codes and names as translation clients send them, normalised to one ``Language``.

Clients disagree on how to name a language: DeepL (and every DeepLX client) sends
upper-case codes with DeepL's own variants (``EN-US``, ``ZH-HANS``, ``PT-BR``);
Immersive Translate and Kiss Translator send BCP 47-ish tags (``zh-CN``,
``zh-TW``, ``en``); users who type settings by hand send names (``English``,
``简体中文``). All of them resolve here, case-insensitively and with ``_`` taken
as ``-``, to a ``Language`` that carries the name the prompt uses and the DeepL
code a DeepLX answer reports.

A region this table does not list keeps its base language (``fr-CA`` is French,
named "French (fr-CA)" so the model still sees the region). Chinese is the one
language whose script matters more than its region: ``zh-CN``/``zh-SG``/``ZH``
mean Simplified, ``zh-TW``/``zh-HK``/``zh-MO`` Traditional.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequest

__all__ = ["AUTO", "Language", "parse_language"]

#: what "detect it yourself" is spelled as, besides an absent or empty field.
AUTO = frozenset({"auto", "auto-detect", "autodetect", "detect"})


@dataclass(frozen=True, slots=True)
class Language:
    """One language: a BCP 47 tag, the English name the prompt uses, its DeepL code."""

    tag: str
    name: str
    deepl: str


def _lang(tag: str, name: str, deepl: str | None = None) -> Language:
    return Language(tag, name, deepl or tag.upper())


_ZH_HANS = _lang("zh-Hans", "Simplified Chinese", "ZH-HANS")
_ZH_HANT = _lang("zh-Hant", "Traditional Chinese", "ZH-HANT")

#: base languages by their ISO 639-1 code (the languages DeepL offers, and a few more).
_BASE: dict[str, Language] = {lang.tag: lang for lang in (
    _lang("ar", "Arabic"), _lang("bg", "Bulgarian"), _lang("cs", "Czech"), _lang("da", "Danish"),
    _lang("de", "German"), _lang("el", "Greek"), _lang("en", "English"), _lang("es", "Spanish"),
    _lang("et", "Estonian"), _lang("fa", "Persian"), _lang("fi", "Finnish"), _lang("fr", "French"),
    _lang("he", "Hebrew"), _lang("hi", "Hindi"), _lang("hu", "Hungarian"), _lang("id", "Indonesian"),
    _lang("it", "Italian"), _lang("ja", "Japanese"), _lang("ko", "Korean"), _lang("lt", "Lithuanian"),
    _lang("lv", "Latvian"), _lang("ms", "Malay"), _lang("nb", "Norwegian Bokmål"), _lang("nl", "Dutch"),
    _lang("pl", "Polish"), _lang("pt", "Portuguese"), _lang("ro", "Romanian"), _lang("ru", "Russian"),
    _lang("sk", "Slovak"), _lang("sl", "Slovenian"), _lang("sv", "Swedish"), _lang("th", "Thai"),
    _lang("tr", "Turkish"), _lang("uk", "Ukrainian"), _lang("vi", "Vietnamese"),
    _lang("zh", "Chinese", "ZH"),
)}

#: full tags (lower-case) with a meaning of their own.
_TAGS: dict[str, Language] = {
    "en-us": _lang("en-US", "American English"), "en-gb": _lang("en-GB", "British English"),
    "pt-br": _lang("pt-BR", "Brazilian Portuguese"), "pt-pt": _lang("pt-PT", "European Portuguese"),
    "es-419": _lang("es-419", "Latin American Spanish"),
    # DeepL's ZH is Simplified Chinese; so are the mainland and Singapore tags.
    "zh": _ZH_HANS, "zh-hans": _ZH_HANS, "zh-cn": _ZH_HANS, "zh-sg": _ZH_HANS, "zh-chs": _ZH_HANS,
    "zh-hans-cn": _ZH_HANS, "chs": _ZH_HANS,
    "zh-hant": _ZH_HANT, "zh-tw": _ZH_HANT, "zh-hk": _ZH_HANT, "zh-mo": _ZH_HANT, "zh-cht": _ZH_HANT,
    "zh-hant-tw": _ZH_HANT, "cht": _ZH_HANT,
    "no": _BASE["nb"], "nn": _lang("nn", "Norwegian Nynorsk"), "iw": _BASE["he"], "in": _BASE["id"],
    "jp": _BASE["ja"], "kr": _BASE["ko"], "cn": _ZH_HANS, "tw": _ZH_HANT,
}

#: names (lower-case, English and native) users type.
_NAMES: dict[str, Language] = {
    **{lang.name.lower(): lang for lang in _BASE.values()},
    **{lang.name.lower(): lang for lang in _TAGS.values()},
    "chinese": _ZH_HANS, "chinese (simplified)": _ZH_HANS, "chinese simplified": _ZH_HANS,
    "chinese (traditional)": _ZH_HANT, "chinese traditional": _ZH_HANT, "mandarin": _ZH_HANS,
    "中文": _ZH_HANS, "简体中文": _ZH_HANS, "简体": _ZH_HANS, "繁體中文": _ZH_HANT, "繁体中文": _ZH_HANT,
    "繁體": _ZH_HANT, "english (us)": _TAGS["en-us"], "english (uk)": _TAGS["en-gb"],
    "english": _BASE["en"], "日本語": _BASE["ja"], "日语": _BASE["ja"], "한국어": _BASE["ko"], "韩语": _BASE["ko"],
    "français": _BASE["fr"], "deutsch": _BASE["de"], "español": _BASE["es"], "italiano": _BASE["it"],
    "português": _BASE["pt"], "русский": _BASE["ru"], "norwegian": _BASE["nb"], "farsi": _BASE["fa"],
    "英语": _BASE["en"], "英文": _BASE["en"], "法语": _BASE["fr"], "德语": _BASE["de"], "俄语": _BASE["ru"],
    "西班牙语": _BASE["es"],
}

_MAX_CHARS = 40


def parse_language(value: object, *, param: str, allow_auto: bool) -> Language | None:
    """The language a client named in ``param``; None for "detect it" where that is allowed.

    400 ``unsupported_language`` for anything else, naming the field, so a typo in
    a plugin's settings shows as a clear error instead of a wrong translation.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if allow_auto:
            return None
        raise InvalidRequest(f"'{param}' is required: the language to translate into.", param=param,
                             code="missing_required_parameter")
    if not isinstance(value, str) or len(value) > _MAX_CHARS:
        raise InvalidRequest(f"'{param}' must be a language code or name such as 'EN', 'zh-CN' or 'French'.",
                             param=param, code="invalid_type")
    text = value.strip()
    key = text.lower().replace("_", "-")
    if key in AUTO:
        if allow_auto:
            return None
        raise InvalidRequest(f"'{param}' cannot be auto: name the language to translate into.", param=param,
                             code="unsupported_language")
    found = _TAGS.get(key) or _BASE.get(key) or _NAMES.get(key)
    if found is not None:
        return found
    base, _, region = key.partition("-")
    known = _BASE.get(base)
    if known is not None and region.isalnum():
        # An unlisted region (fr-CA, es-MX): the base language, with the tag the client gave.
        return Language(f"{base}-{region.upper()}", f"{known.name} ({base}-{region.upper()})",
                        f"{known.deepl}-{region.upper()}")
    raise InvalidRequest(f"Unknown language {text!r} in '{param}': use a code such as 'EN', 'EN-US', 'ZH', "
                         "'zh-CN', 'zh-TW', 'JA', or an English name.", param=param, code="unsupported_language")
