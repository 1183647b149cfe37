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

from rakuten_mm import precision as precision_plan
from rakuten_mm.errors import ImageWeightsUnavailable
from rakuten_mm.image import ImagePreset, load_uint8_images
from rakuten_mm.weights import load_state_file

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


def build_backbone(weights: str, seed: int = 0) -> nn.Sequential:
    """VGG16's convolutional base + global average pooling, frozen, in eval mode → ``[B, 512]`` features."""
    torch.manual_seed(seed)  # `none` gives a seeded random base, so a rerun builds the same features
    vgg = models.vgg16(weights=None)
    if weights == "imagenet":
        vgg.load_state_dict(_imagenet_state_dict())
    elif weights != "none":
        state = load_state_file(weights, "VGG16", "allowed --image-weights: imagenet, none, or the path/s3 URI of a "
                                                  "saved VGG16 state_dict")
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
    """The new classifier trained on the frozen backbone's pooled features (``in_features``: 512 for VGG16)."""

    def __init__(self, num_classes: int, in_features: int = FEATURE_DIM, hidden: int = 256,
                 dropout: float = 0.3) -> None:
        super().__init__()
        # BatchNorm first: pooled VGG16 activations are small and of uneven scale (with random weights especially),
        # and standardising them lets one learning rate suit every backbone weight source.
        self.net = nn.Sequential(nn.BatchNorm1d(in_features), nn.Dropout(dropout), nn.Linear(in_features, hidden),
                                 nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def autocast(device: torch.device, precision: str | None = None) -> torch.autocast:
    """The autocast context :func:`backbone_features` runs in (bf16 where :mod:`rakuten_mm.precision` says so)."""
    return precision_plan.autocast(precision_plan.resolve(precision, device), device)


@torch.no_grad()
def backbone_features(backbone: nn.Module, images: torch.Tensor, preset: ImagePreset,
                      device: torch.device, *, precision: str | None = None) -> torch.Tensor:
    """``uint8 [B, 3, S, S]`` → float32 ``[B, D]`` on ``device``: the one forward pass of the frozen backbone.

    Feature extraction, in-process evaluation and the serving predictor all come here, so they run the backbone
    the same way. ``precision`` (auto, fp32 or bf16; ``None``: ``RAKUTEN_PRECISION``, else auto) picks the plan
    (:mod:`rakuten_mm.precision`): the backbone is put in that plan's memory layout (in place, once) and runs under
    its autocast."""
    plan = precision_plan.resolve(precision, device)
    precision_plan.set_layout(backbone, plan.channels_last)
    layout = torch.channels_last if plan.channels_last else torch.contiguous_format
    pixels = preset.normalize(images.to(device)).contiguous(memory_format=layout)
    with precision_plan.autocast(plan, device):
        return backbone(pixels).float()


def extract_features(backbone: nn.Module, paths: Sequence[Path], preset: ImagePreset, device: torch.device,
                     batch_size: int = 32, desc: str = "features", *, precision: str | None = None,
                     workers: int | None = None) -> np.ndarray:
    """Run a frozen backbone once over image files → ``float32 [N, D]`` (the feature cache); ``D`` is what the
    backbone pools to (512 for VGG16, 1280 for EfficientNet-Lite0), read from its first output (``[0, 0]`` for
    no files).

    Images are decoded on ``workers`` threads (default: the CPUs available, see :mod:`rakuten_mm.decoding`), the
    next batch while the backbone runs on the current one."""
    backbone.to(device).eval()
    out = np.zeros((len(paths), 0), dtype=np.float32)
    starts = range(0, len(paths), batch_size)
    with load_uint8_images(paths, preset, workers) as images:
        for start in tqdm(starts, desc=desc, disable=None):
            batch = images[start:start + batch_size]
            if start + batch_size < len(paths):
                images.prefetch(slice(start + batch_size, start + 2 * batch_size))
            feats = backbone_features(backbone, batch, preset, device, precision=precision).cpu().numpy()
            if start == 0:  # the width is the backbone's: known from its first output
                out = np.zeros((len(paths), feats.shape[1]), dtype=np.float32)
            out[start:start + len(batch)] = feats
    return out


