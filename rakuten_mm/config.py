"""Typed configuration objects; built once at the edge (CLI, component, server) and passed down."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rakuten_mm.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
MEMBERS = ("text", "image")
# Optional extra: TF-IDF over the text member's token ids (it needs the text member's vocabulary).
OPTIONAL_MEMBERS = ("tfidf",)


@dataclass(frozen=True)
class TrainConfig:
    """Every training knob. ``image_weights``: ``imagenet``, ``none`` or a path/s3 URI of a VGG16 state_dict."""

    epochs_text: int = 10
    epochs_image: int = 10
    image_size: int = 224
    image_weights: str = "imagenet"
    device: str = "auto"
    seed: int = 0
    members: tuple[str, ...] = MEMBERS
    batch_size: int = 32
    # Frozen VGG16 base: its features are computed once per split and only the head trains on them.
    feature_cache: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_tokens: int = 96
    ensemble_step: float = 0.05

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        allowed = MEMBERS + OPTIONAL_MEMBERS
        bad = [m for m in self.members if m not in allowed]
        if bad or not self.members or len(set(self.members)) != len(self.members):
            raise ConfigError(f"members must be distinct names from {allowed}, got {list(self.members)}")
        if "tfidf" in self.members and "text" not in self.members:
            raise ConfigError("member tfidf reads the text member's token ids: add text to --members")
        for name in ("epochs_text", "epochs_image", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image size must be between 32 and 1024 pixels, got {self.image_size}")

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "members": list(self.members)}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a configuration error."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible; use --device auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def state_dir() -> Path:
    """Where local runs keep MLflow's sqlite store, artifacts and pipeline roots (``RAKUTEN_STATE_DIR``)."""
    return Path(os.environ.get("RAKUTEN_STATE_DIR") or Path.home() / ".rakuten").resolve()
