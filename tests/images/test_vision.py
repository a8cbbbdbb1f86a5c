"""Images out of an OpenAI conversation, into sources and text markers (issue 20, QWEN_IMAGES.md §1.5, §5)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from relay.emulator.png import solid_png
from relay.errors import ImageTooLarge, ImageUrlNotAllowed, UnsupportedImage
from relay.images.sources import (
    MAX_IMAGE_BYTES,
    ImageBytes,
    ImageUrl,
    QwenImageUrl,
    decode_data_uri,
    sniff_image_type,
)
from relay.images.vision import MAX_IMAGES_PER_MESSAGE, OMITTED_IMAGE_TEXT, split_images

PNG = solid_png(2, 3, (1, 2, 3))
UPSTREAM = "https://chat.qwen.ai"


def uri(data: bytes = PNG, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def test_a_lone_message_with_one_image_keeps_its_text_as_it_is() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(uri())]}]
    folded, sources = split_images(messages, UPSTREAM)
    assert sources == [ImageBytes(PNG, "image/png")]
    assert folded[0]["content"] == [{"type": "text", "text": "What is this?"}]
    assert messages[0]["content"][1]["type"] == "image_url", "the client's message is not changed"


def test_images_across_a_conversation_are_numbered_in_order() -> None:
    second = solid_png(3, 3, (9, 9, 9))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image_part(uri()), {"type": "text", "text": "and"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now"}, image_part(uri(second))]},
    ]
    folded, sources = split_images(messages, UPSTREAM)
    assert [source.data for source in sources if isinstance(source, ImageBytes)] == [PNG, second]
    assert folded[1]["content"][0] == {"type": "text", "text": "[image 1]"}
    assert folded[3]["content"][1] == {"type": "text", "text": "[image 2]"}
    assert folded[0] is messages[0] and folded[2] is messages[2]


def test_beyond_five_images_the_most_recent_are_sent_and_the_rest_say_so() -> None:
    urls = [uri(solid_png(1, n + 1, (n, n, n))) for n in range(MAX_IMAGES_PER_MESSAGE + 2)]
    broken = "data:image/png;base64,!!!"  # an old image that is left out is not even decoded
    messages = [{"role": "user", "content": [image_part(broken), *[image_part(u) for u in urls[1:]]]}]
    folded, sources = split_images(messages, UPSTREAM)
    assert len(sources) == MAX_IMAGES_PER_MESSAGE
    texts = [part["text"] for part in folded[0]["content"]]
    assert texts[:2] == [OMITTED_IMAGE_TEXT, OMITTED_IMAGE_TEXT]
    assert texts[2:] == [f"[image {n}]" for n in range(1, MAX_IMAGES_PER_MESSAGE + 1)]


def test_urls_are_sorted_into_qwen_hosted_and_third_party() -> None:
    urls = ["https://cdn.qwenlm.ai/output/u/t2i/c/x.png?key=jwt",
            "https://qwen-webui-prod.oss-accelerate.aliyuncs.com/u/f_cat.jpg",
            "https://chat.qwen.ai/api/v2/files/x.webp",
            "https://example.com/cat.png",
            "https://cdn.qwenlm.ai.evil.example/cat.png"]
    messages = [{"role": "user", "content": [image_part(u) for u in urls]}]
    _, sources = split_images(messages, UPSTREAM)
    assert [type(source) for source in sources] == [QwenImageUrl, QwenImageUrl, QwenImageUrl, ImageUrl, ImageUrl]
    assert [s.mime for s in sources if isinstance(s, QwenImageUrl)] == ["image/png", "image/jpeg", "image/webp"]


@pytest.mark.parametrize(("part", "error"), [
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, ImageUrlNotAllowed),
    ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, ImageUrlNotAllowed),
    ({"type": "image_url", "image_url": {}}, UnsupportedImage),
    ({"type": "image", "source": {"type": "base64", "data": "AAAA"}}, UnsupportedImage),
    ({"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERg=="}}, UnsupportedImage),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,JVBERi0xLjcK"}}, UnsupportedImage),
])
def test_unusable_parts_are_400_naming_where_they_are(part: dict[str, Any], error: type[Exception]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]
    with pytest.raises(error) as caught:
        split_images(messages, UPSTREAM)
    assert getattr(caught.value, "param", None) == "messages[0].content[1]"


def test_an_oversized_data_uri_is_refused_before_it_is_decoded() -> None:
    payload = "A" * ((MAX_IMAGE_BYTES // 3 + 2) * 4)
    with pytest.raises(ImageTooLarge):
        decode_data_uri(f"data:image/png;base64,{payload}", "image")


def test_the_type_is_read_from_the_bytes_not_the_label() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(16)
    assert decode_data_uri(uri(jpeg, "image/jpg"), "image").mime == "image/jpeg"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"GIF89a") == "image/gif"
    assert sniff_image_type(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    wrapped = "data:image/png;base64," + "\n".join(base64.b64encode(PNG).decode()[i:i + 10] for i in range(0, 80, 10))
    assert decode_data_uri(wrapped + base64.b64encode(PNG).decode()[80:], "image").data == PNG
