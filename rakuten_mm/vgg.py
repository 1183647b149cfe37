"""The image member's model: VGG16's frozen convolutional base (torchvision), its new head, and feature extraction.

Pixels reach it through :mod:`rakuten_mm.image` (decode → canonical → preset resize → normalise), the one image
pipeline shared by training, batch prediction and serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import models
from tqdm.auto import tqdm

from rakuten_mm.errors import ImageWeightsUnavailable
from rakuten_mm.image import ImagePreset, load_image_file

BACKBONE = "vgg16"
FEATURE_DIM = 512  # VGG16's last conv block, global-average-pooled


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


