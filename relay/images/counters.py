"""The image feature's counters for ``/metrics``: uploads by result and bytes, generations by result.

Label values are fixed sets chosen here (``UPLOAD_RESULTS``, the generation
kinds and results), never anything a client sent.

The access log's image counts (``images_in``: images attached to the request,
``images_out``: images generated) are kept per request in a context variable:
the uploads happen inside the dialect, which knows no request; the access-log
writer takes (and resets) them with ``take_request_images``.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["GENERATION_KINDS", "UPLOAD_RESULTS", "ImageCounters", "count_request_images", "take_request_images"]

_images_in: ContextVar[int] = ContextVar("relay_images_in", default=0)
_images_out: ContextVar[int] = ContextVar("relay_images_out", default=0)


def count_request_images(*, inputs: int = 0, outputs: int = 0) -> None:
    """Note this request's images (its task's context): ``inputs`` attached, ``outputs`` generated.

    Inputs are the most attached at once, not a sum: a retry, or each of an
    edit's ``n`` chats, attaches the same images again.
    """
    if inputs > _images_in.get():
        _images_in.set(inputs)
    if outputs:
        _images_out.set(_images_out.get() + outputs)


def take_request_images() -> tuple[int, int]:
    """This request's ``(images_in, images_out)``, reset to zero (a connection's next request starts anew)."""
    counts = _images_in.get(), _images_out.get()
    if counts != (0, 0):
        _images_in.set(0)
        _images_out.set(0)
    return counts

#: ``uploaded``: STS + PUT done; ``reused``: the cache (or an identical upload in flight)
#: answered; ``referenced``: a Qwen-hosted URL sent as it is; ``failed``: STS or PUT refused.
UPLOAD_RESULTS = ("uploaded", "reused", "referenced", "failed")
#: ``t2i`` (``/v1/images/generations``) and ``image_edit`` (``/v1/images/edits``).
GENERATION_KINDS = ("t2i", "image_edit")


class ImageCounters:
    """Plain integers, updated from one event loop (no locks), rendered as Prometheus text."""

    def __init__(self) -> None:
        self.uploads: dict[str, int] = dict.fromkeys(UPLOAD_RESULTS, 0)
        self.upload_bytes = 0
        #: (kind, result) → images; result ``success`` or an error code.
        self.generations: dict[tuple[str, str], int] = {}

    def count_upload(self, result: str, size: int = 0) -> None:
        self.uploads[result] = self.uploads.get(result, 0) + 1
        self.upload_bytes += size

    def count_generation(self, kind: str, result: str) -> None:
        key = (kind, result)
        self.generations[key] = self.generations.get(key, 0) + 1

    def render(self) -> list[str]:
        lines = ["# HELP qwen_relay_image_uploads_total Input images by how they reached Qwen Chat.",
                 "# TYPE qwen_relay_image_uploads_total counter"]
        lines += [f'qwen_relay_image_uploads_total{{result="{result}"}} {count}'
                  for result, count in sorted(self.uploads.items())]
        lines += ["# HELP qwen_relay_image_upload_bytes_total Bytes of images uploaded to Qwen Chat's OSS.",
                  "# TYPE qwen_relay_image_upload_bytes_total counter",
                  f"qwen_relay_image_upload_bytes_total {self.upload_bytes}",
                  "# HELP qwen_relay_image_generations_total Images asked of /v1/images/*, by kind and result.",
                  "# TYPE qwen_relay_image_generations_total counter"]
        lines += [f'qwen_relay_image_generations_total{{kind="{kind}",result="{result}"}} {count}'
                  for (kind, result), count in sorted(self.generations.items())]
        return lines
