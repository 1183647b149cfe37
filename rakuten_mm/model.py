"""The runtime model: a loaded bundle as a :class:`Classifier` (members + ensemble) and its :class:`Preprocessor`.

Built from the files :mod:`rakuten_mm.bundle` lays out and verifies. Its entry point is
:meth:`Classifier.predict_raw`: raw designation/description text (str or UTF-8 bytes) and images in the canonical
transport form (:func:`rakuten_mm.image.to_canonical`, ``uint8 [B, 3, 256, 256]``) → probabilities. Everything
bundle-specific happens here: cleaning settings, vocabulary, the preset's resize + normalisation, the members, the
ensemble and the label map. Batch prediction, evaluation and the serving predictor all call it, so they share
every step from raw inputs to probabilities (the serving transformer only decodes images to the canonical form).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rakuten_mm import backbones, bundle, chartfidf, storage
from rakuten_mm.ensemble import combine
from rakuten_mm.errors import BundleError
from rakuten_mm.image import DEFAULT_MAX_PIXELS, ImagePreset, canonical_images
from rakuten_mm.labels import LabelMap
from rakuten_mm.members import CHARTFIDF, IMAGE, TEXT, TFIDF
from rakuten_mm.precision import check as check_precision
from rakuten_mm.text import CleaningSettings, TextClassifier, TextModelConfig, Vocabulary, clean_text, text_present
from rakuten_mm.tfidf import TfidfMember
from rakuten_mm.vgg import ImageHead, backbone_features


@dataclass
class Preprocessor:
    """The bundle's preprocessing: label map, text cleaning + vocabulary, and the image preset."""

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
        """Raw image bytes (``None``/empty = absent) → ``uint8 [B, 3, S, S]`` and a presence mask ``bool [B]``,
        through the canonical form (the same pixels as a served product)."""
        canonical, mask = canonical_images(blobs, max_pixels)
        return self.image_preset.resize(canonical).numpy(), mask


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
    chartfidf: chartfidf.CharTfidfMember | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[Any]] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str | None = None  # the image backbone's numerics (rakuten_mm.precision); None: RAKUTEN_PRECISION

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
    def member_probs(self, token_ids: np.ndarray, images: np.ndarray | None, image_mask: np.ndarray | None,
                     texts: tuple[Sequence[object], Sequence[object] | None] | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Token ids + ``uint8 [B, 3, H, W]`` images (canonical 256 px, or already the preset's S) → per-member
        probabilities (``float32 [B, C]``) and presence masks. ``texts``: the raw (designations, descriptions) the
        token ids were encoded from, which the ``chartfidf`` member reads (required when the bundle holds it)."""
        batch = len(token_ids)
        probs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        if self.text_model is not None:
            ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
            probs[TEXT] = torch.softmax(self.text_model(ids).float(), 1).cpu().numpy()
            present[TEXT] = text_present(np.asarray(token_ids))
        if self.backbone is not None and self.image_head is not None:
            mask = np.zeros(batch, bool) if image_mask is None else np.asarray(image_mask, bool)
            out = np.full((batch, len(self.labels)), 1.0 / len(self.labels), dtype=np.float32)
            if mask.any() and images is not None:
                # Only rows that carry an image go through VGG16: it is most of the compute.
                pixels = self.pre.image_preset.resize(np.asarray(images)[mask]).to(self.device)
                feats = backbone_features(self.backbone, pixels, self.pre.image_preset, self.device,
                                          precision=self.precision)
                out[mask] = torch.softmax(self.image_head(feats).float(), 1).cpu().numpy()
            probs[IMAGE], present[IMAGE] = out, mask
        if self.tfidf is not None:
            probs[TFIDF] = self.tfidf.predict_proba(np.asarray(token_ids))
            present[TFIDF] = text_present(np.asarray(token_ids))
        if self.chartfidf is not None:
            if texts is None:
                raise BundleError("this bundle's chartfidf member reads the raw text: pass texts= (designations, "
                                  "descriptions) along with the token ids")
            fields = chartfidf.fields(texts[0], texts[1], self.pre.cleaning)
            probs[CHARTFIDF], present[CHARTFIDF] = self.chartfidf.predict_proba(fields), chartfidf.present(fields)
        return probs, present

    def predict_tensors(self, token_ids: np.ndarray, images: np.ndarray | None = None,
                        image_mask: np.ndarray | None = None,
                        texts: tuple[Sequence[object], Sequence[object] | None] | None = None) -> np.ndarray:
        """The ensemble's probabilities ``float32 [B, C]`` from token ids and images (as :meth:`member_probs`)."""
        probs, present = self.member_probs(token_ids, images, image_mask, texts)
        return combine(probs, self.weights, present)

    def member_probs_raw(self, designations: Sequence[object], descriptions: Sequence[object] | None,
                         images: np.ndarray | None, image_mask: np.ndarray | None
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw text + canonical images → per-member probabilities and presence masks."""
        return self.member_probs(self.pre.encode_text(designations, descriptions), images, image_mask,
                                 (designations, descriptions))

    def predict_raw(self, designations: Sequence[object], descriptions: Sequence[object] | None = None,
                    images: np.ndarray | None = None, image_mask: np.ndarray | None = None) -> np.ndarray:
        """Raw text (str or UTF-8 bytes) + canonical images ``uint8 [B, 3, 256, 256]`` → ``float32 [B, C]``."""
        probs, present = self.member_probs_raw(designations, descriptions, images, image_mask)
        return combine(probs, self.weights, present)

def preprocessor_from_dir(root: Path, config: dict[str, Any]) -> Preprocessor:
    return Preprocessor(labels=LabelMap.from_json(config["labels"]),
                        cleaning=CleaningSettings.from_json(config["cleaning"]),
                        vocab=Vocabulary.from_json(bundle.read_json(root, bundle.VOCAB)),
                        image_preset=ImagePreset.from_json(config["image"]["preset"]))


def load_preprocessor(uri: str | Path) -> Preprocessor:
    """Verify a bundle and load only its preprocessing part (label map, cleaning, vocabulary, image preset)."""
    with storage.local_copy(uri) as root:
        return preprocessor_from_dir(root, bundle.verify(root))


def load_bundle(uri: str | Path, device: torch.device | str = "cpu", precision: str | None = None) -> Classifier:
    """Verify and load a bundle from a directory, an s3:// URI or a KServe mount, onto ``device``; ``precision``:
    how its image backbone runs (:mod:`rakuten_mm.precision`; None reads ``RAKUTEN_PRECISION``, default auto)."""
    with storage.local_copy(uri) as root:
        config = bundle.verify(root)
        pre = preprocessor_from_dir(root, config)
        members = config["ensemble"]["members"]
        text_model = backbone = head = None
        if TEXT in members:
            text_model = TextClassifier(TextModelConfig.from_json(config["text"]["model"]))
            text_model.load_state_dict(bundle.load_state(root, bundle.TEXT_MODEL))
        if IMAGE in members:
            # bundle.verify checked the backbone's name against the registry and its state against its skeleton.
            spec = backbones.get(config["image"]["backbone"])
            backbone = spec.from_state(bundle.load_state(root, bundle.IMAGE_BACKBONE))
            head = ImageHead(len(pre.labels), **config["image"].get("head", {}))
            head.load_state_dict(bundle.load_state(root, bundle.IMAGE_HEAD))
        tfidf = TfidfMember.load(root / bundle.TFIDF) if TFIDF in members else None
        chars = chartfidf.CharTfidfMember.load(root / bundle.CHARTFIDF) if CHARTFIDF in members else None
        classifier = Classifier(pre=pre, weights=dict(config["ensemble"]["weights"]), text_model=text_model,
                                backbone=backbone, image_head=head, config=config, tfidf=tfidf, chartfidf=chars,
                                metrics=bundle.read_json(root, bundle.METRICS),
                                splits=bundle.read_json(root, bundle.SPLITS),
                                precision=None if precision is None else check_precision(precision))
    return classifier.to(torch.device(device))
