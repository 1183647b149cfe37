"""Image member: the one definition of image presets (decode, resize, normalise), VGG16 and its new head.

The transformer ships ``uint8 [B, 3, S, S]`` (from :meth:`ImagePreset.to_uint8`) and the predictor normalises on
its own device (:meth:`ImagePreset.normalize`), so batch prediction and serving share these exact steps.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision import models
from torchvision.transforms import v2
from tqdm.auto import tqdm

from rakuten_mm.errors import ConfigError, ImageWeightsUnavailable, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE = "vgg16"
FEATURE_DIM = 512  # VGG16's last conv block, global-average-pooled
DEFAULT_MAX_PIXELS = 40_000_000  # ~6300×6300; larger declared sizes are treated as decompression bombs


@dataclass(frozen=True)
class ImagePreset:
    """Resize + normalisation, saved in the bundle so training and serving agree."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 32 <= self.size <= 1024:
            raise ConfigError(f"image size must be between 32 and 1024 pixels, got {self.size}")

    def to_json(self) -> dict[str, object]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImagePreset:
        return cls(int(obj["size"]), tuple(obj["mean"]), tuple(obj["std"]))

    def eval_transform(self) -> v2.Compose:
        return v2.Compose([v2.Resize((self.size, self.size), antialias=True), v2.PILToTensor()])

    def train_transform(self) -> v2.Compose:
        """Light augmentation; used only when the base is fine-tuned (cached features are computed without it)."""
        return v2.Compose([v2.RandomResizedCrop(self.size, scale=(0.8, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), v2.PILToTensor()])

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image → ``uint8 [3, size, size]``."""
        return self.eval_transform()(image).numpy()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, S, S]`` on any device → normalised float32 on that device."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Raw JPEG/PNG bytes → RGB image, or :class:`InputError` saying what was wrong."""
    if not data:
        raise InputError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise InputError(f"image has {image.width}x{image.height} pixels; at most {max_pixels} allowed")
            if image.format not in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
                raise InputError(f"image format must be JPEG or PNG, got {image.format}")
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image is too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"bytes are not a JPEG or PNG image (first bytes {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image could not be decoded (truncated or corrupt): {exc}") from None
    return image.convert("RGB")


def load_image_file(path: Path, preset: ImagePreset, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return preset.to_uint8(decode_image(path.read_bytes(), max_pixels))


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    try:
        state: dict[str, torch.Tensor] = models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        return state
    except Exception as exc:  # download errors come as URLError, OSError, RuntimeError... all mean "unavailable"
        raise ImageWeightsUnavailable(
            f"cannot load torchvision's ImageNet VGG16 weights ({type(exc).__name__}: {exc}). "
            "Allowed --image-weights: imagenet (needs the weights in TORCH_HOME or network access), "
            "none (random initialisation), or PATH_OR_URI (a saved VGG16 state_dict, local or s3://)") from None


def _file_state_dict(source: str) -> dict[str, torch.Tensor]:
    from rakuten_mm import storage

    try:
        if storage.is_s3(source):
            import tempfile

            bucket, key = storage.split_s3(source)
            with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
                storage.s3_client().download_file(bucket, key, tmp.name)
                return torch.load(tmp.name, map_location="cpu", weights_only=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing file, botocore error, unpickling refusal: all mean "cannot load"
        raise ImageWeightsUnavailable(
            f"cannot load VGG16 weights from {source!r} ({type(exc).__name__}: {exc}); allowed --image-weights: "
            "imagenet, none, or the path/s3 URI of a saved VGG16 state_dict") from None


def build_backbone(weights: str, seed: int = 0) -> nn.Sequential:
    """VGG16's convolutional base + global average pooling, frozen, in eval mode → ``[B, 512]`` features."""
    torch.manual_seed(seed)  # `none` gives a seeded random base, so a rerun builds the same features
    vgg = models.vgg16(weights=None)
    if weights == "imagenet":
        vgg.load_state_dict(_imagenet_state_dict())
    elif weights != "none":
        state = _file_state_dict(weights)
        # Accept a whole VGG16 state_dict or one of its convolutional base only (keys "features.*" or bare).
        feats = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        try:
            vgg.features.load_state_dict(feats)
        except RuntimeError as exc:
            raise ImageWeightsUnavailable(f"{weights!r} is not a VGG16 state_dict: {str(exc)[:300]}") from None
    backbone = nn.Sequential(vgg.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval()


def backbone_from_state(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Rebuild the frozen backbone from the ``features`` state_dict stored in a bundle."""
    vgg = models.vgg16(weights=None)
    vgg.features.load_state_dict(state)
    backbone = nn.Sequential(vgg.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval()


class ImageHead(nn.Module):
    """The new classifier trained on top of the VGG16 features."""

    def __init__(self, num_classes: int, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        # BatchNorm first: pooled VGG16 activations are small and of uneven scale (with random weights especially),
        # and standardising them lets one learning rate suit every backbone weight source.
        self.net = nn.Sequential(nn.BatchNorm1d(FEATURE_DIM), nn.Dropout(dropout), nn.Linear(FEATURE_DIM, hidden),
                                 nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (VGG16 convolutions are most of the compute); a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def backbone_features(backbone: nn.Module, images: torch.Tensor, preset: ImagePreset,
                      device: torch.device) -> torch.Tensor:
    """``uint8 [B, 3, S, S]`` → float32 ``[B, 512]`` on ``device``."""
    with autocast(device):
        return backbone(preset.normalize(images.to(device))).float()


def extract_features(backbone: nn.Module, paths: Sequence[Path], preset: ImagePreset, device: torch.device,
                     batch_size: int = 32, desc: str = "features") -> np.ndarray:
    """Run the frozen base once over image files → ``float32 [N, 512]`` (the feature cache)."""
    backbone.to(device).eval()
    out = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, disable=None):
        chunk = paths[start:start + batch_size]
        batch = torch.from_numpy(np.stack([load_image_file(p, preset) for p in chunk]))
        out[start:start + len(chunk)] = backbone_features(backbone, batch, preset, device).cpu().numpy()
    return out


def load_uint8_images(paths: Sequence[Path], preset: ImagePreset) -> torch.Tensor:
    """Decode and resize image files → ``uint8 [N, 3, S, S]`` (used when the base is not cached)."""
    if not paths:
        return torch.zeros((0, 3, preset.size, preset.size), dtype=torch.uint8)
    return torch.from_numpy(np.stack([load_image_file(p, preset) for p in tqdm(paths, desc="images", disable=None)]))
