"""Images, defined once: decoding, the canonical transport form, and the bundle's preset (resize + normalisation).

Every image takes the same steps, in training, batch prediction and serving alike:

1. :func:`decode_image`: JPEG (MPO too: what phones write; its first frame), PNG, WebP, GIF or BMP bytes → an RGB
   PIL image. The declared size is checked against a pixel limit before any pixel is decoded (decompression
   bombs); JPEGs are decoded at the smallest DCT scale (1, 1/2, 1/4 or 1/8: libjpeg's scaling, ``Image.draft``)
   that keeps both sides at least :data:`DRAFT_MIN_SIZE` (224) pixels, so the challenge's 500×500 photos decode
   at 250×250 in about half the time of a full decode; the EXIF orientation is applied; 16-bit greyscale is
   scaled to 8 bits (not clipped).
2. :func:`to_canonical`: a squash resize (antialiased bilinear) to ``uint8 [3, 256, 256]``
   (:data:`CANONICAL_SIZE`). This is the bundle-independent form the serving transformer sends to the predictor.
3. :meth:`ImagePreset.resize`: canonical → the bundle's own side S (32..256, antialiased bilinear, uint8).
4. :meth:`ImagePreset.normalize`: uint8 → float on the model's device.

The serving transformer runs steps 1–2 and needs neither a bundle nor torch; the predictor runs 3–4; training and
batch prediction run 1–4 through :func:`load_image_file`, so a product's pixels are the same on every path
(:mod:`rakuten_mm.decoding` runs that function on a thread pool, a batch ahead, for training and evaluation).

Importing this module imports neither torch nor torchvision (the transformer runs without them). The VGG16
member (backbone, head, feature extraction) lives in :mod:`rakuten_mm.vgg`.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rakuten_mm.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

    from rakuten_mm.decoding import LazyImages

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CANONICAL_SIZE = 256  # side of the canonical transport form; a bundle's preset size S is at most this
# JPEGs decode at a reduced DCT scale while both sides stay >= this (the default preset's side). A 500 px photo then
# decodes at 250 px (mean |difference| after the canonical resize: ~0.7 of 255 levels vs a full decode).
DRAFT_MIN_SIZE = 224
MIN_SIZE = 32
DEFAULT_MAX_PIXELS = 40_000_000  # ~6300×6300; larger declared sizes are treated as decompression bombs
# Pillow format name → how messages name it. MPO is a JPEG with extra frames (phone cameras): its first frame is used.
FORMATS = {"JPEG": "JPEG", "MPO": "JPEG (MPO)", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP"}
ALLOWED = "JPEG (MPO too), PNG, WebP, GIF or BMP"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class ImagePreset:
    """The bundle's image side S and normalisation, saved in the bundle so training and serving agree."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= CANONICAL_SIZE:
            raise ConfigError(f"image size must be between {MIN_SIZE} and {CANONICAL_SIZE} pixels (the canonical "
                              f"transport size; images are never upsampled from it), got {self.size}")

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImagePreset:
        return cls(int(obj["size"]), tuple(obj["mean"]), tuple(obj["std"]))

    def resize(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` (canonical, or already S) → ``uint8 [B, 3, S, S]`` on the same device.

        Antialiased bilinear, the same per image whatever the batch (so micro-batching changes no pixel)."""
        import torch
        from torchvision.transforms.v2 import functional

        if isinstance(images, np.ndarray):
            # Binary request tensors are read-only views of the body; torch wants memory it may write.
            images = torch.from_numpy(images if images.flags.writeable else images.copy())
        if images.shape[-2:] == (self.size, self.size):
            return images
        return functional.resize(images, [self.size, self.size], antialias=True)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image → ``uint8 [3, S, S]`` through the canonical form (steps 2–3)."""
        return self.resize(to_canonical(image)[None]).numpy()[0]

    def train_transform(self) -> v2.Compose:
        """Light augmentation of ``uint8 [3, S, S]`` tensors; used only when the base is fine-tuned (cached
        features are computed without it)."""
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomResizedCrop(self.size, scale=(0.8, 1.0), antialias=True),
                           v2.RandomHorizontalFlip()])

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, S, S]`` on any device → normalised float32 on that device."""
        import torch

        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only: format and declared size are checked before any pixel is decoded."""
    if not data:
        raise InputError("image is empty")
    image = Image.open(io.BytesIO(data))
    if image.format not in FORMATS:
        raise InputError(f"image format must be {ALLOWED}, got {image.format}")
    if image.width * image.height > max_pixels:
        raise InputError(f"image has {image.width}x{image.height} pixels; at most {max_pixels} allowed")
    return image


def _guarded(data: bytes, step: Any) -> Any:
    """Run ``step`` with Pillow's errors turned into :class:`InputError` messages."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return step()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image is too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"bytes are not an image ({ALLOWED}); first bytes {data[:8]!r}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"image could not be decoded (truncated or corrupt): {exc}") from None


def declared_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Width × height from the header (cheap: nothing is decoded); :class:`InputError` as :func:`decode_image`."""
    def step() -> int:
        image = _open(data, max_pixels)
        return int(image.width * image.height)

    result: int = _guarded(data, step)
    return result


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:  # 16-bit greyscale: scale 0..65535 to 0..255 (convert("L") would clip)
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Raw image bytes → an upright RGB image, or :class:`InputError` saying what was wrong (step 1)."""
    def step() -> Image.Image:
        image = _open(data, max_pixels)
        # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= DRAFT_MIN_SIZE (a 500 px photo
        # decodes at 250 px in half the time; a 12 MP one costs 1/64 of the memory); every path decodes this way,
        # so training and serving agree.
        image.draft("RGB", (DRAFT_MIN_SIZE, DRAFT_MIN_SIZE))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)

    result: Image.Image = _guarded(data, step)
    return result


def to_canonical(image: Image.Image) -> np.ndarray:
    """An RGB image → the canonical transport form ``uint8 [3, 256, 256]`` (squash resize, antialiased bilinear)."""
    resized = image.resize((CANONICAL_SIZE, CANONICAL_SIZE), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def canonical_images(blobs: Sequence[bytes | None], max_pixels: int = DEFAULT_MAX_PIXELS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Raw image bytes (``None``/empty = absent) → ``uint8 [B, 3, 256, 256]`` and a presence mask ``bool [B]``."""
    out = np.zeros((len(blobs), 3, CANONICAL_SIZE, CANONICAL_SIZE), dtype=np.uint8)
    mask = np.zeros(len(blobs), dtype=bool)
    for i, blob in enumerate(blobs):
        if blob:
            out[i] = to_canonical(decode_image(blob, max_pixels))
            mask[i] = True
    return out, mask


def load_image_file(path: Path, preset: ImagePreset, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file → ``uint8 [3, S, S]`` (steps 1–3, exactly as a served product)."""
    return preset.to_uint8(decode_image(path.read_bytes(), max_pixels))


def load_uint8_images(paths: Sequence[Path], preset: ImagePreset, workers: int | None = None) -> LazyImages:
    """Image files as a lazy ``uint8 [N, 3, S, S]`` batch source (used when the base is not cached): ``len`` and
    ``images[index]`` run :func:`load_image_file` on just the requested files, on ``workers`` threads (default: the
    CPUs available) and a batch ahead, so memory is bounded by the batch (:class:`rakuten_mm.decoding.LazyImages`).
    """
    from rakuten_mm.decoding import LazyImages

    return LazyImages(paths, functools.partial(load_image_file, preset=preset), (3, preset.size, preset.size),
                      workers)
