"""What each server is configured with (built once by :mod:`serving.cli`) and the request limits both enforce.

Imports neither torch nor kserve, so ``rakuten serve transformer`` stays light.

Default limits, sized against the pod limits in ``manifests/base/inferenceservice.yaml`` (transformer 2 Gi,
predictor 4 Gi) with 16 concurrent maximum-size requests (``benchmarks/serve_memory_bench.py``, BENCHMARKS.md):

=====================  ===========  =========  =============================================================
limit                  transformer  predictor  why
=====================  ===========  =========  =============================================================
request body           16 MiB       32 MiB     each request holds about two copies of its body while parsed
products per request   256          64         the transformer sends the predictor chunks of 32 products
characters per field   50,000       50,000     the longest real descriptions are ~12,000; the model reads 96 tokens
pixels per image       40 M         –          decompression bombs; declared size, checked before decoding
pixels per request     100 M        –          decode time (~0.4 MP per real product image)
=====================  ===========  =========  =============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rakuten_mm.errors import ConfigError, InputError
from rakuten_mm.image import DEFAULT_MAX_PIXELS

DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
TRANSFORMER_MAX_REQUEST_BYTES = 16 * 2**20
PREDICTOR_MAX_REQUEST_BYTES = 32 * 2**20
DEFAULT_MAX_TEXT_CHARS = 50_000
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
DEFAULT_HOP_TIMEOUT_S = 30.0


def _positive(**values: float) -> None:
    if bad := {k: v for k, v in values.items() if v <= 0}:
        raise ConfigError(", ".join(f"--{k.replace('_', '-')} must be positive, got {v}" for k, v in bad.items()))


@dataclass(frozen=True)
class PredictorSettings:
    model_dir: str = DEFAULT_MODEL_DIR
    device: str = "auto"
    precision: str | None = None  # the image backbone's numerics; None: RAKUTEN_PRECISION, else auto
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    max_products: int = 64
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS

    def __post_init__(self) -> None:
        _positive(max_products=self.max_products, max_text_chars=self.max_text_chars)


@dataclass(frozen=True)
class TransformerSettings:
    predictor_host: str
    predictor_use_ssl: bool = False
    predictor_timeout_s: float = DEFAULT_HOP_TIMEOUT_S
    max_products: int = 256
    hop_products: int = 32
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    decode_threads: int = 2

    def __post_init__(self) -> None:
        if not self.predictor_host or "/" in self.predictor_host:
            raise ConfigError(f"--predictor_host must be HOST:PORT (no scheme or path), got {self.predictor_host!r}")
        _positive(predictor_request_timeout_seconds=self.predictor_timeout_s, max_products=self.max_products,
                  hop_products=self.hop_products, max_text_chars=self.max_text_chars,
                  max_image_pixels=self.max_image_pixels, max_request_pixels=self.max_request_pixels,
                  decode_threads=self.decode_threads)

    @property
    def predictor_url(self) -> str:
        return f"{'https' if self.predictor_use_ssl else 'http'}://{self.predictor_host}"


def check_products(count: int, limit: int) -> None:
    """0 products, or more than ``limit``, is a client error naming the limit and the value."""
    if count == 0:
        raise InputError("the batch is empty: 0 products were sent; allowed: at least 1 product")
    if count > limit:
        raise InputError(f"the request has {count} products; allowed at most {limit} per request (--max-products): "
                         "split it into several requests")


def check_text(designations: Sequence[bytes], descriptions: Sequence[bytes], limit: int, first: int = 0) -> None:
    """Each designation and description holds at most ``limit`` characters (UTF-8; invalid bytes count as one)."""
    for field, values in (("designation", designations), ("description", descriptions)):
        for row, value in enumerate(values):
            # A UTF-8 character is 1-4 bytes: only a value over `limit` bytes can hold over `limit` characters.
            if len(value) > limit and (chars := len(value.decode("utf-8", errors="replace"))) > limit:
                raise InputError(f"{field} of product {first + row} has {chars} characters; allowed at most {limit} "
                                 "(--max-text-chars)")
