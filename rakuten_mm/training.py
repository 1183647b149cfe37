"""The training stages — preprocess, train the text member, train the image member, fit the ensemble.

Each stage reads and writes plain directories, so the same functions run in-process (``rakuten train``) and
as separate Kubeflow pipeline steps whose artifacts are those directories.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rakuten_mm import bundle, members, storage
from rakuten_mm.config import TrainConfig, resolve_device
from rakuten_mm.data import SPLITS, DataOptions, Dataset, load_labelled, make_splits
from rakuten_mm.ensemble import combine, fit_weights
from rakuten_mm.errors import DataValidationError
from rakuten_mm.evaluation import confusion, score
from rakuten_mm.fitting import EpochCallback, fit, predict_proba
from rakuten_mm.image import ImagePreset, load_uint8_images
from rakuten_mm.labels import LabelMap
from rakuten_mm.members import IMAGE, TEXT, TFIDF
from rakuten_mm.text import CleaningSettings, TextClassifier, TextModelConfig, Vocabulary, clean_text, text_present
from rakuten_mm.tfidf import TfidfMember
from rakuten_mm.vgg import BACKBONE, ImageHead, backbone_features, build_backbone, extract_features

PREPARED = "dataset.json"
ROWS = "rows.csv"
PROBS = "probs.npz"


@dataclass
class Prepared:
    """The preprocess step's output: where the data lives, its version, the recorded split and the rows."""

    data_uri: str
    version: str
    splits: dict[str, list[Any]]
    frame: pd.DataFrame  # validated rows + ``split`` column, original index
    report: str
    options: DataOptions

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]


def preprocess(data_uri: str, out_dir: Path, options: DataOptions = DataOptions(), seed: int = 0,
               val_fraction: float = 0.15, test_fraction: float = 0.15) -> Prepared:
    """Validate the labelled data and record a seeded stratified split in ``out_dir``."""
    with storage.local_copy(data_uri) as root:
        dataset = load_labelled(root, options)
    splits = make_splits(dataset.frame, seed, val_fraction, test_fraction)
    split_of = {idx: name for name in SPLITS for idx in splits[name]}
    frame = dataset.frame.assign(split=[split_of[i] for i in dataset.frame.index])
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / ROWS)
    bundle.write_json(out_dir / PREPARED, {
        "data_uri": str(data_uri), "version": dataset.version, "splits": splits,
        "report": dataset.report.summary(), "options": vars(options),
    })
    return load_prepared(out_dir)


def load_prepared(path: Path) -> Prepared:
    meta = json.loads((path / PREPARED).read_text())
    frame = pd.read_csv(path / ROWS, index_col=0, dtype={"designation": str, "description": str, "image": str},
                        keep_default_na=False)
    return Prepared(meta["data_uri"], meta["version"], meta["splits"], frame, meta["report"],
                    DataOptions(**meta["options"]))


def _targets(rows: pd.DataFrame, labels: LabelMap) -> np.ndarray:
    return np.array([labels.index_of(c) for c in rows["prdtypecode"]], dtype=np.int64)


def _save_probs(out_dir: Path, probs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
    arrays = {f"probs_{k}": v for k, v in probs.items()} | {f"present_{k}": v for k, v in present.items()}
    np.savez(out_dir / PROBS, **arrays)  # type: ignore[arg-type]


def load_member_probs(member_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(member_dir / PROBS) as npz:
        return npz[f"probs_{split}"], npz[f"present_{split}"]


def train_text(prepared: Prepared, out_dir: Path, cfg: TrainConfig, on_epoch: EpochCallback | None = None,
               labels: LabelMap | None = None) -> dict[str, Any]:
    """Vocabulary (train split only) + LSTM; writes the member directory and returns its validation metrics."""
    labels = labels or LabelMap.default()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    cleaning = CleaningSettings(max_tokens=cfg.max_tokens)
    texts = {s: [clean_text(a, b, cleaning) for a, b in zip(prepared.rows(s)["designation"],
                                                            prepared.rows(s)["description"], strict=True)]
             for s in SPLITS}
    vocab = Vocabulary.build(texts["train"])
    ids = {s: torch.from_numpy(vocab.encode_batch(texts[s], cleaning.max_tokens)) for s in SPLITS}
    model_cfg = TextModelConfig(vocab_size=len(vocab), num_classes=len(labels))
    model = TextClassifier(model_cfg)
    y = {s: _targets(prepared.rows(s), labels) for s in SPLITS}
    result = fit(model, ids["train"], y["train"], ids["val"], y["val"], num_classes=len(labels),
                 epochs=cfg.epochs_text, device=device, seed=cfg.seed, batch_size=cfg.batch_size, lr=5e-3, name=TEXT,
                 on_epoch=on_epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.cpu().state_dict(), out_dir / bundle.TEXT_MODEL)
    model.to(device)
    bundle.write_json(out_dir / bundle.VOCAB, vocab.to_json())
    bundle.write_json(out_dir / "text.json", {"model": model_cfg.to_json(), "cleaning": cleaning.to_json(),
                                              "history": result.history, "best_epoch": result.best_epoch})
    probs = {s: predict_proba(model, ids[s], device) for s in ("val", "test")}
    present = {s: text_present(ids[s].numpy()) for s in ("val", "test")}
    _save_probs(out_dir, probs, present)
    if TFIDF in cfg.members:
        _train_tfidf({s: ids[s].numpy() for s in SPLITS}, y, present, out_dir / TFIDF, len(labels))
    return score(y["val"], probs["val"], labels)


def _train_tfidf(ids: dict[str, np.ndarray], y: dict[str, np.ndarray], present: dict[str, np.ndarray],
                 out_dir: Path, num_classes: int) -> None:
    """The optional TF-IDF member, on the text member's token ids; its own member directory inside the text one."""
    member = TfidfMember.fit(ids["train"], y["train"], num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    member.save(out_dir / bundle.TFIDF)
    _save_probs(out_dir, {s: member.predict_proba(ids[s]) for s in ("val", "test")}, present)


def member_dirs(text_dir: Path, image_dir: Path, cfg: TrainConfig) -> dict[str, Path]:
    """Member name → the directory its training stage wrote (``tfidf`` lives inside the text member's)."""
    dirs = {TEXT: text_dir, IMAGE: image_dir, TFIDF: text_dir / TFIDF}
    return {name: dirs[name] for name in members.ordered(cfg.members)}


def train_image(prepared: Prepared, out_dir: Path, cfg: TrainConfig, on_epoch: EpochCallback | None = None,
                labels: LabelMap | None = None) -> dict[str, Any]:
    """Frozen VGG16 base + new head, trained on cached base features (or end to end with augmentation)."""
    labels = labels or LabelMap.default()
    device = resolve_device(cfg.device)
    preset = ImagePreset(cfg.image_size)
    backbone = build_backbone(cfg.image_weights, cfg.seed).to(device)
    rows = {s: prepared.rows(s) for s in SPLITS}
    with_image = {s: rows[s][rows[s]["image"] != ""] for s in SPLITS}
    for split in ("train", "val"):
        if with_image[split].empty:
            raise DataValidationError(f"the {split} split has no images, so the image member cannot train; "
                                      "add images or pass --members text")
    with storage.local_copy(prepared.data_uri) as root:
        paths = {s: [root / p for p in with_image[s]["image"]] for s in SPLITS}
        if cfg.feature_cache:
            inputs = {s: torch.from_numpy(extract_features(backbone, paths[s], preset, device, desc=f"{s} features"))
                      for s in SPLITS}
        else:
            inputs = {s: load_uint8_images(paths[s], preset) for s in SPLITS}
    head = ImageHead(len(labels))
    torch.manual_seed(cfg.seed)
    forward = None if cfg.feature_cache else (lambda m, x: m(backbone_features(backbone, x, preset, device)))
    augment = preset.train_transform()
    train_forward = None if cfg.feature_cache else (
        lambda m, x: m(backbone_features(backbone, torch.stack([augment(i) for i in x.cpu()]), preset, device)))
    y = {s: _targets(with_image[s], labels) for s in SPLITS}
    result = fit(head, inputs["train"], y["train"], inputs["val"], y["val"], num_classes=len(labels),
                 epochs=cfg.epochs_image, device=device, seed=cfg.seed, batch_size=cfg.batch_size, lr=1e-3,
                 name=IMAGE, on_epoch=on_epoch, forward=forward, train_forward=train_forward)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(head.cpu().state_dict(), out_dir / bundle.IMAGE_HEAD)
    head.to(device)
    torch.save(backbone[0].cpu().state_dict(), out_dir / bundle.IMAGE_BACKBONE)
    bundle.write_json(out_dir / "image.json", {
        "backbone": BACKBONE, "weights_source": cfg.image_weights if cfg.image_weights in ("imagenet", "none")
        else "file", "preset": preset.to_json(), "feature_cache": cfg.feature_cache, "history": result.history,
        "best_epoch": result.best_epoch})
    probs: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        mask = (rows[split]["image"] != "").to_numpy()
        full = np.full((len(mask), len(labels)), 1.0 / len(labels), dtype=np.float32)
        if mask.any():
            full[mask] = predict_proba(head, inputs[split], device, forward=forward)
        probs[split], present[split] = full, mask
    _save_probs(out_dir, probs, present)
    return score(y["val"], probs["val"][present["val"]], labels)


def member_histories(member_paths: dict[str, Path]) -> dict[str, list[dict[str, float]]]:
    """Each trained member's per-epoch history as its stage recorded it (``text.json`` / ``image.json``: epoch,
    train_loss, val_weighted_f1), for the report's training curves; members without one (tfidf) are left out."""
    out = {}
    for name, meta in ((TEXT, "text.json"), (IMAGE, "image.json")):
        path = member_paths[name] / meta if name in member_paths else None
        if path is not None and path.is_file():
            out[name] = json.loads(path.read_text()).get("history", [])
    return out


def fit_ensemble(prepared: Prepared, member_paths: dict[str, Path], out: str, cfg: TrainConfig,
                 labels: LabelMap | None = None, extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tune ensemble weights on the validation split, score val + test, and publish the bundle to ``out``."""
    labels = labels or LabelMap.default()
    names = members.ordered(member_paths)
    y = {s: _targets(prepared.rows(s), labels) for s in ("val", "test")}
    probs: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    present: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    for name in names:
        for split in ("val", "test"):
            probs[split][name], present[split][name] = load_member_probs(member_paths[name], split)
    weights = fit_weights(probs["val"], y["val"], present["val"], step=cfg.ensemble_step)
    metrics: dict[str, Any] = {"weights": weights, "data_version": prepared.version, "labels": labels.to_json()}
    for split in ("val", "test"):
        ensemble = combine(probs[split], weights, present[split])
        metrics[split] = {**score(y[split], ensemble, labels),
                          "confusion": confusion(y[split], ensemble, labels).tolist(), "members": {
            name: score(y[split][present[split][name]], probs[split][name][present[split][name]], labels)
            for name in names}}
    metrics["history"] = member_histories(member_paths)
    metrics.update(extra_metrics or {})
    config: dict[str, Any] = {"labels": labels.to_json(), "ensemble": {"members": names, "weights": weights},
                              "data_version": prepared.version, "train_config": cfg.to_json(),
                              "image": {"preset": ImagePreset(cfg.image_size).to_json()}}
    vocab = Vocabulary([])
    cleaning = CleaningSettings(max_tokens=cfg.max_tokens)
    if TEXT in member_paths:
        text_meta = json.loads((member_paths[TEXT] / "text.json").read_text())
        config["text"] = {"model": text_meta["model"]}
        cleaning = CleaningSettings.from_json(text_meta["cleaning"])
        vocab = Vocabulary.from_json(bundle.read_json(member_paths[TEXT], bundle.VOCAB))
    if IMAGE in member_paths:
        image_meta = json.loads((member_paths[IMAGE] / "image.json").read_text())
        config["image"] = {k: image_meta[k] for k in ("backbone", "weights_source", "preset")}
    # Each member's stage wrote its bundle files (members.REGISTRY[name].files) into its own directory.
    files = {f: member_paths[name] / f for name in names for f in members.REGISTRY[name].files}
    config["cleaning"] = cleaning.to_json()
    metrics["bundle_uri"] = bundle.write_bundle(out, files, config, vocab, metrics, prepared.splits)
    return metrics


# The stages that train members on their own (tfidf is fitted inside the text stage, on its token ids).
STAGES: dict[str, Callable[..., dict[str, Any]]] = {TEXT: train_text, IMAGE: train_image}


@dataclass
class TrainResult:
    bundle_uri: str
    metrics: dict[str, Any]


def train(data_uri: str, out: str, cfg: TrainConfig, options: DataOptions = DataOptions(),
          log: Callable[[str, dict[str, float], int | None], None] | None = None) -> TrainResult:
    """All stages in one process: the embedded path when no pipeline runner is wanted."""
    with tempfile.TemporaryDirectory(prefix="rakuten-train-") as tmp:
        work = Path(tmp)
        prepared = preprocess(data_uri, work / "dataset", options, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        for name, stage in STAGES.items():
            if name in cfg.members:
                def epoch_log(epoch: int, record: dict[str, float], name: str = name) -> None:
                    if log:
                        log(f"{name}_", record, epoch)
                stage(prepared, work / name, cfg, on_epoch=epoch_log)
        metrics = fit_ensemble(prepared, member_dirs(work / TEXT, work / IMAGE, cfg), out, cfg)
    return TrainResult(metrics["bundle_uri"], metrics)


def dataset_for(bundle_splits: dict[str, list[Any]], dataset: Dataset, split: str | None) -> pd.DataFrame:
    """Rows of ``dataset`` to score: all of them, or only those the bundle recorded in ``split``."""
    if split is None:
        return dataset.frame
    if split not in bundle_splits:
        raise DataValidationError(f"--split must be one of {list(bundle_splits)}, got {split!r}")
    wanted = set(bundle_splits[split])
    rows = dataset.frame[dataset.frame.index.isin(wanted)]
    if len(rows) != len(wanted):
        raise DataValidationError(f"the data holds {len(rows)} of the {len(wanted)} rows the bundle recorded in its "
                                  f"{split} split; is this the dataset the bundle was trained on?")
    return rows
