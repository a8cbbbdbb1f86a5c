"""The image settings as flags, QWEN_RELAY_* env vars and config-file keys (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import parse_config
from relay.config import Images


def test_defaults() -> None:
    assert parse_config([], {}).images == Images(fetch_urls=False, upload_cache_ttl_s=600.0, max_n=4,
                                                 model="qwen3-max", oss_signing="v4", oss_base_url=None)


def test_flags_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[relay]\nimages_max_n = 3\n\n[upstream]\noss_signing = "v1"\n'
                    'oss_base_url = "http://127.0.0.1:9000/"\n', encoding="utf-8")
    images = parse_config(["--config", str(path), "--fetch-image-urls", "--image-model", "qwen3-235b-a22b"],
                          {"QWEN_RELAY_UPLOAD_CACHE_TTL": "30", "QWEN_RELAY_IMAGES_MAX_N": "2"}).images
    assert images == Images(fetch_urls=True, upload_cache_ttl_s=30.0, max_n=2, model="qwen3-235b-a22b",
                            oss_signing="v1", oss_base_url="http://127.0.0.1:9000")
    assert parse_config([], {"QWEN_RELAY_FETCH_IMAGE_URLS": "true"}).images.fetch_urls


@pytest.mark.parametrize("upstream", ['oss_signing = "v2"', 'oss_base_url = "ftp://x"'])
def test_a_bad_upstream_key_is_refused_naming_it(tmp_path: Path, upstream: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(f"[upstream]\n{upstream}\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path)], {})
    assert "upstream." + upstream.split(" ", 1)[0] in capsys.readouterr().err


def test_n_cap_is_checked() -> None:
    with pytest.raises(SystemExit):
        parse_config(["--images-max-n", "0"], {})
