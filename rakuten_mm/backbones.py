"""The image member's frozen backbones, by name: ``vgg16`` (the default, :mod:`rakuten_mm.vgg`) and
``efficientnet_lite0`` (:mod:`rakuten_mm.efficientnet`).

Each entry says how to build the backbone for a ``--image-weights`` value, how to rebuild it from a bundle's
state_dict, the size of its pooled features and the normalisation its weights expect (recorded in the bundle's
:class:`rakuten_mm.image.ImagePreset`, so serving needs nothing beyond the bundle). Importing this module imports
neither torch nor timm: the modules behind the entries are imported when a backbone is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rakuten_mm import efficientnet
from rakuten_mm.errors import ConfigError
from rakuten_mm.image import IMAGENET_MEAN, IMAGENET_STD, ImagePreset

if TYPE_CHECKING:
    import torch
    from torch import nn

VGG16, EFFICIENTNET_LITE0 = "vgg16", efficientnet.BACKBONE


@dataclass(frozen=True)
class Backbone:
    """One backbone: the module implementing it, its pooled feature size and its input normalisation."""

    name: str
    module: str  # defines build_backbone(weights, seed) and backbone_from_state(state)
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preset(self, size: int) -> ImagePreset:
        """The bundle's image preset for this backbone at side ``size``."""
        return ImagePreset(size, self.mean, self.std)

    def build(self, weights: str, seed: int = 0) -> nn.Module:
        """Frozen, eval-mode backbone: ``weights`` is imagenet, none or PATH_OR_URI of a state_dict."""
        module: Any = importlib.import_module(self.module)
        built: nn.Module = module.build_backbone(weights, seed)
        return built

    def from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """Rebuild the frozen backbone from the state_dict a bundle stores."""
        module: Any = importlib.import_module(self.module)
        rebuilt: nn.Module = module.backbone_from_state(state)
        return rebuilt

    def stored_state(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """What a bundle stores of a built backbone (:meth:`from_state` reads it back): VGG16's convolutional base
        (the pooling has no state), EfficientNet-Lite0's whole pooled model."""
        part: Any = backbone[0] if self.name == VGG16 else backbone  # type: ignore[index]
        return {k: v.detach().cpu() for k, v in part.state_dict().items()}

    def skeleton(self) -> nn.Module:
        """A module whose state_dict has the stored state's keys, shapes and dtypes; build it under
        ``torch.device("meta")`` to check a bundle without allocating weights."""
        if self.name == VGG16:
            from torchvision import models

            features: nn.Module = models.vgg16(weights=None).features
            return features
        return efficientnet.architecture()


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone(VGG16, "rakuten_mm.vgg", 512, IMAGENET_MEAN, IMAGENET_STD),
    Backbone(efficientnet.BACKBONE, "rakuten_mm.efficientnet", efficientnet.FEATURE_DIM, efficientnet.MEAN,
             efficientnet.STD),
)}
DEFAULT = VGG16


def get(name: str) -> Backbone:
    """The backbone called ``name``; :class:`ConfigError` naming the allowed ones otherwise."""
    if name not in BACKBONES:
        raise ConfigError(f"image backbone must be one of {tuple(BACKBONES)}, got {name!r}")
    return BACKBONES[name]
