"""Content negotiation and compression (relay/compression.py).

``Accept-Encoding`` is read by q-value (RFC 9110 §12.5.3); what we send must
decompress with the stock brotli and gzip decoders.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable

import brotli
import pytest

from relay.compression import EXECUTOR_MIN_BYTES, compress, compress_async, negotiate_encoding


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("", None),
    ("identity", None),
    ("gzip", "gzip"),
    ("br", "br"),
    ("gzip, br", "br"),
    ("gzip, deflate, br, zstd", "br"),
    ("GZIP", "gzip"),
    ("x-gzip", "gzip"),
    ("*", "br"),
    ("br;q=0", None),
    ("br;q=0, *", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("*;q=0, gzip", "gzip"),
    ("br, *;q=0", "br"),
    ("gzip;q=0.5, br;q=0.8", "br"),
    ("gzip;q=0.9, br;q=0.8", "gzip"),
    ("br;q=0.5, *;q=0.9", "gzip"),
    ("gzip ; q=0.4 , br ; q=0.3", "gzip"),
    ("deflate, identity", None),
    ("gzip;q=abc", None),
    ("gzip;q=, br;q=zero", None),
    ("br;q=abc, gzip", "gzip"),
    ("gzip;q=-1", None),
    (",,;q=1, gzip", "gzip"),
])
def test_negotiate_encoding_by_q_value(header: str | None, expected: str | None) -> None:
    """The highest-q coding we offer wins (br on ties); q=0 excludes; ``*`` stands
    for codings not named; an unparsable q counts as 0; None means identity."""
    assert negotiate_encoding(header) == expected


BODY = json.dumps({"choices": [{"message": {"content": "Hello wörld 😀 " * 200}}]}).encode()


def test_brotli_round_trips() -> None:
    """compress(body, "br") is real brotli, and smaller for repetitive JSON."""
    out = compress(BODY, "br")
    assert brotli.decompress(out) == BODY
    assert len(out) < len(BODY)


def test_gzip_round_trips_deterministically() -> None:
    """compress(body, "gzip") is real gzip with mtime 0, so equal bodies give equal bytes."""
    out = compress(BODY, "gzip")
    assert gzip.decompress(out) == BODY
    assert out == compress(BODY, "gzip")


def test_empty_body_round_trips() -> None:
    """An empty body compresses to something both decoders accept."""
    assert brotli.decompress(compress(b"", "br")) == b""
    assert gzip.decompress(compress(b"", "gzip")) == b""


def test_unknown_coding_is_rejected() -> None:
    """Only br and gzip are offered."""
    with pytest.raises(ValueError):
        compress(BODY, "deflate")


@pytest.mark.parametrize("coding", ["br", "gzip"])
async def test_compress_async_small_body(coding: str) -> None:
    """Below EXECUTOR_MIN_BYTES the result is the same as compress()."""
    assert await compress_async(BODY, coding) == compress(BODY, coding)


@pytest.mark.parametrize(("coding", "decompress"), [("br", brotli.decompress), ("gzip", gzip.decompress)])
async def test_compress_async_large_body_round_trips(coding: str, decompress: Callable[[bytes], bytes]) -> None:
    """A body over 256 KiB (compressed in the executor) round-trips exactly."""
    body = (os.urandom(1024).hex().encode() + BODY) * 200
    assert len(body) > EXECUTOR_MIN_BYTES == 256 * 1024
    out = await compress_async(body, coding)
    assert decompress(out) == body
