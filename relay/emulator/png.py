"""Write a real PNG of any size with zlib and struct, and read a PNG's size back.

The images a t2i stream links (QWEN_IMAGES.md §6.1.4) must be real files of the
size ``output_image_hw`` announces: a relay's ``b64_json`` path and a test read
them. A solid colour keeps them small on the wire (a 2688×1536 image compresses
to a few KB) while the pixel count is the real one. No Pillow: two chunks and a
zlib stream are the whole format for 8-bit RGB.
"""

from __future__ import annotations

import functools
import struct
import zlib

__all__ = ["MAX_SIDE_PX", "png_size", "solid_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bigger than any size Qwen answers (2688 px, §2.1) and small enough to render quickly.
MAX_SIDE_PX = 4096


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=16)
def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A ``width``×``height`` 8-bit RGB PNG of one colour (cached: images are re-downloaded)."""
    if not (0 < width <= MAX_SIDE_PX and 0 < height <= MAX_SIDE_PX):
        raise ValueError(f"PNG sides must be within 1..{MAX_SIDE_PX}, got {width}x{height}")
    row = b"\x00" + bytes(rgb) * width  # filter type 0 (None), then the pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
