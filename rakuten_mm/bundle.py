"""The model bundle: one directory (local or s3://) holding everything a prediction needs, and nothing executable.

Layout: ``config.json`` (label map, cleaning, text model config, image preset, ensemble weights, data version,
versions), ``vocab.json``, ``text_model.pt``, ``image_backbone.pt`` + ``image_head.pt``, ``splits.json``,
``metrics.json`` and ``manifest.json`` (sha256 of every other file). Tensors are plain ``state_dict``s loaded
with ``torch.load(weights_only=True)``; the manifest is written last and verified first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from rakuten_mm import __version__, storage
from rakuten_mm.ensemble import combine
from rakuten_mm.errors import BundleError
from rakuten_mm.image import (
    BACKBONE,
    DEFAULT_MAX_PIXELS,
    ImageHead,
    ImagePreset,
    backbone_features,
    backbone_from_state,
    decode_image,
)
from rakuten_mm.labels import LabelMap
from rakuten_mm.text import CleaningSettings, TextClassifier, TextModelConfig, Vocabulary, clean_text, text_present
from rakuten_mm.tfidf import FILE as TFIDF_FILE
from rakuten_mm.tfidf import TfidfMember

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    return {"rakuten_mm": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class Preprocessor:
    """What the serving transformer needs: the label map, text cleaning + vocabulary, and the image preset."""

    labels: LabelMap
    cleaning: CleaningSettings
    vocab: Vocabulary
    image_preset: ImagePreset

    def encode_text(self, designations: Sequence[object], descriptions: Sequence[object] | None = None) -> np.ndarray:
        """Raw designations/descriptions → ``int64 [B, L]`` token ids (0-padded)."""
        descriptions = descriptions if descriptions is not None else [""] * len(designations)
        texts = [clean_text(a, b, self.cleaning) for a, b in zip(designations, descriptions, strict=True)]
        return self.vocab.encode_batch(texts, self.cleaning.max_tokens)

    def encode_images(self, blobs: Sequence[bytes | None],
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """Raw image bytes (``None``/empty = absent) → ``uint8 [B, 3, S, S]`` and a presence mask ``bool [B]``."""
        size = self.image_preset.size
        out = np.zeros((len(blobs), 3, size, size), dtype=np.uint8)
        mask = np.zeros(len(blobs), dtype=bool)
        for i, blob in enumerate(blobs):
            if blob:
                out[i] = self.image_preset.to_uint8(decode_image(blob, max_pixels))
                mask[i] = True
        return out, mask


@dataclass
class Classifier:
    """A loaded bundle: preprocessing, the two members and the ensemble weights, on one device."""

    pre: Preprocessor
    weights: dict[str, float]
    text_model: TextClassifier | None
    backbone: torch.nn.Module | None
    image_head: ImageHead | None
    config: dict[str, Any]
    tfidf: TfidfMember | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[Any]] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def labels(self) -> LabelMap:
        return self.pre.labels

    def to(self, device: torch.device) -> Classifier:
        for module in (self.text_model, self.backbone, self.image_head):
            if module is not None:
                module.to(device).eval()
        self.device = device
        return self

    @torch.no_grad()
    def member_probs(self, token_ids: np.ndarray, images: np.ndarray | None,
                     image_mask: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Tensors of the serving contract → per-member probabilities and presence masks (``float32 [B, C]``)."""
        batch = len(token_ids)
        probs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        if self.text_model is not None:
            ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
            probs["text"] = torch.softmax(self.text_model(ids).float(), 1).cpu().numpy()
            present["text"] = text_present(np.asarray(token_ids))
        if self.backbone is not None and self.image_head is not None:
            mask = np.zeros(batch, bool) if image_mask is None else np.asarray(image_mask, bool)
            out = np.full((batch, len(self.labels)), 1.0 / len(self.labels), dtype=np.float32)
            if mask.any() and images is not None:
                # Only rows that carry an image go through VGG16: it is most of the compute.
                pixels = torch.as_tensor(np.asarray(images)[mask]).to(self.device)
                feats = backbone_features(self.backbone, pixels, self.pre.image_preset, self.device)
                out[mask] = torch.softmax(self.image_head(feats).float(), 1).cpu().numpy()
            probs["image"], present["image"] = out, mask
        if self.tfidf is not None:
            probs["tfidf"] = self.tfidf.predict_proba(np.asarray(token_ids))
            present["tfidf"] = text_present(np.asarray(token_ids))
        return probs, present

    def predict_tensors(self, token_ids: np.ndarray, images: np.ndarray | None = None,
                        image_mask: np.ndarray | None = None) -> np.ndarray:
        """The ensemble's probabilities ``float32 [B, C]``."""
        probs, present = self.member_probs(token_ids, images, image_mask)
        return combine(probs, self.weights, present)


def write_bundle(out: str | Path, files: dict[str, Path], config: dict[str, Any], vocab: Vocabulary,
                 metrics: dict[str, Any], splits: dict[str, list[Any]]) -> str:
    """Assemble and publish a bundle. ``files`` maps bundle names (``text_model.pt``...) to finished files.

    The directory is built in a temporary place, the manifest written last, then published in one step
    (rename locally, manifest uploaded last on s3), so a crash never leaves a bundle that verifies.
    """
    with tempfile.TemporaryDirectory(prefix="rakuten-bundle-") as tmp:
        staging = Path(tmp)
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        write_json(staging / "config.json", {**config, "format": FORMAT_VERSION, "versions": versions()})
        write_json(staging / "vocab.json", vocab.to_json())
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "splits.json", splits)
        manifest = {"format": FORMAT_VERSION, "files": {p.name: sha256(p) for p in sorted(staging.iterdir())}}
        write_json(staging / MANIFEST, manifest)
        return storage.publish_dir(staging, out, last=MANIFEST)


def verify(root: Path) -> dict[str, Any]:
    """Check the manifest against the files; return ``config.json``. Raises :class:`BundleError` on any mismatch."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a model bundle: {MANIFEST} is missing (incomplete or not a bundle)")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed: dict[str, str] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path} is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise BundleError(f"bundle format {manifest.get('format')!r} is not supported; this version reads "
                          f"format {FORMAT_VERSION}")
    present = {p.name for p in root.iterdir() if p.is_file()} - {MANIFEST}
    if missing := sorted(set(listed) - present):
        raise BundleError(f"bundle {root} is incomplete: missing {missing}")
    if extra := sorted(present - set(listed)):
        raise BundleError(f"bundle {root} holds files not in its manifest: {extra}")
    for name, digest in listed.items():
        if sha256(root / name) != digest:
            raise BundleError(f"bundle {root} was modified: checksum of {name} does not match the manifest")
    config: dict[str, Any] = json.loads((root / "config.json").read_text())
    return config


def _load_state(root: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        state: dict[str, torch.Tensor] = torch.load(root / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals and corrupt archives vary in type; all mean "bad bundle file"
        raise BundleError(f"cannot load {name} from {root}: {exc}") from None
    return state


def preprocessor_from_dir(root: Path, config: dict[str, Any]) -> Preprocessor:
    return Preprocessor(labels=LabelMap.from_json(config["labels"]),
                        cleaning=CleaningSettings.from_json(config["cleaning"]),
                        vocab=Vocabulary.from_json(json.loads((root / "vocab.json").read_text())),
                        image_preset=ImagePreset.from_json(config["image"]["preset"]))


def load_preprocessor(uri: str | Path) -> Preprocessor:
    """Verify a bundle and load only its preprocessing part (what the transformer needs)."""
    with storage.local_copy(uri) as root:
        return preprocessor_from_dir(root, verify(root))


def load_bundle(uri: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Verify and load a bundle from a directory, an s3:// URI or a KServe mount, onto ``device``."""
    with storage.local_copy(uri) as root:
        config = verify(root)
        pre = preprocessor_from_dir(root, config)
        members = config["ensemble"]["members"]
        text_model = backbone = head = None
        if "text" in members:
            text_model = TextClassifier(TextModelConfig.from_json(config["text"]["model"]))
            text_model.load_state_dict(_load_state(root, "text_model.pt"))
        if "image" in members:
            if config["image"].get("backbone") != BACKBONE:
                raise BundleError(f"image backbone {config['image'].get('backbone')!r} is not supported; "
                                  f"allowed: {BACKBONE}")
            backbone = backbone_from_state(_load_state(root, "image_backbone.pt"))
            head = ImageHead(len(pre.labels), **config["image"].get("head", {}))
            head.load_state_dict(_load_state(root, "image_head.pt"))
        tfidf = TfidfMember.load(root / TFIDF_FILE) if "tfidf" in members else None
        classifier = Classifier(pre=pre, weights=dict(config["ensemble"]["weights"]), text_model=text_model,
                                backbone=backbone, image_head=head, config=config, tfidf=tfidf,
                                metrics=json.loads((root / "metrics.json").read_text()),
                                splits=json.loads((root / "splits.json").read_text()))
    return classifier.to(torch.device(device))
