"""Language codes and names as DeepLX, Immersive and Kiss clients send them."""

from __future__ import annotations

import pytest

from relay.errors import InvalidRequest
from relay.translate.languages import parse_language


@pytest.mark.parametrize(("given", "tag", "deepl"), [
    ("EN", "en", "EN"), ("en", "en", "EN"), ("EN-US", "en-US", "EN-US"), ("en_gb", "en-GB", "EN-GB"),
    ("ZH", "zh-Hans", "ZH-HANS"), ("ZH-HANS", "zh-Hans", "ZH-HANS"), ("zh-CN", "zh-Hans", "ZH-HANS"),
    ("zh-TW", "zh-Hant", "ZH-HANT"), ("ZH-HANT", "zh-Hant", "ZH-HANT"), ("zh-HK", "zh-Hant", "ZH-HANT"),
    ("JA", "ja", "JA"), ("PT-BR", "pt-BR", "PT-BR"), ("fr-CA", "fr-CA", "FR-CA"),
    ("French", "fr", "FR"), ("simplified chinese", "zh-Hans", "ZH-HANS"), ("简体中文", "zh-Hans", "ZH-HANS"),
    ("繁體中文", "zh-Hant", "ZH-HANT"), ("日本語", "ja", "JA"), ("Deutsch", "de", "DE"), (" ko ", "ko", "KO"),
])
def test_codes_and_names_resolve(given: str, tag: str, deepl: str) -> None:
    language = parse_language(given, param="target_lang", allow_auto=False)
    assert language is not None
    assert (language.tag, language.deepl) == (tag, deepl)


@pytest.mark.parametrize("given", [None, "", "auto", "AUTO", "auto-detect"])
def test_auto_is_none_where_allowed(given: str | None) -> None:
    assert parse_language(given, param="source_lang", allow_auto=True) is None


@pytest.mark.parametrize(("given", "code"), [
    (None, "missing_required_parameter"), ("auto", "unsupported_language"), ("Klingon", "unsupported_language"),
    (12, "invalid_type"), ("x" * 100, "invalid_type"), ("xx-YY", "unsupported_language"),
])
def test_a_target_that_is_no_language_is_a_400_naming_the_field(given: object, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_language(given, param="to", allow_auto=False)
    assert caught.value.param == "to"
    assert caught.value.instance_code == code
