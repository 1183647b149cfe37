"""The training stages after preprocess (:func:`rakuten_mm.data.preprocess`) — train the text members, train the
image member, fit the ensemble.

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

from rakuten_mm import backbones, bundle, chartfidf, members, precision, stacking, vectors
from rakuten_mm.config import TrainConfig, resolve_device
from rakuten_mm.data import SPLITS, DataOptions, Dataset, Prepared, images_of, preprocess
from rakuten_mm.ensemble import combine, fit_weights
from rakuten_mm.errors import DataValidationError
from rakuten_mm.evaluation import confusion, score
from rakuten_mm.fitting import EpochCallback, fit, predict_proba
from rakuten_mm.image import load_uint8_images
from rakuten_mm.labels import LabelMap
from rakuten_mm.members import CHARTFIDF, IMAGE, TEXT, TFIDF
from rakuten_mm.text import CleaningSettings, TextClassifier, TextModelConfig, Vocabulary, clean_text, text_present
from rakuten_mm.tfidf import TfidfMember
from rakuten_mm.vgg import ImageHead, backbone_features, extract_features

PROBS = "probs.npz"
OOF = "oof.npz"  # out-of-fold probabilities over the train + validation rows (--ensemble-folds K)


def _targets(rows: pd.DataFrame, labels: LabelMap) -> np.ndarray:
    return np.array([labels.index_of(c) for c in rows["prdtypecode"]], dtype=np.int64)


def _save_probs(out_dir: Path, probs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
    arrays = {f"probs_{k}": v for k, v in probs.items()} | {f"present_{k}": v for k, v in present.items()}
    np.savez(out_dir / PROBS, **arrays)  # type: ignore[arg-type]


def load_member_probs(member_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(member_dir / PROBS) as npz:
        return npz[f"probs_{split}"], npz[f"present_{split}"]


def _fit_rows(prepared: Prepared) -> pd.DataFrame:
    """The rows out-of-fold probabilities cover: train then validation (the held-out test split stays untouched)."""
    return pd.concat([prepared.rows("train"), prepared.rows("val")])


def _folds(y_fit: np.ndarray, cfg: TrainConfig) -> list[np.ndarray] | None:
    """The out-of-fold folds over the fit rows: a function of the labels and the seed only, so every stage (a
    separate pipeline step) draws the same ones; ``None`` when weights are tuned on the validation split."""
    return stacking.folds(y_fit, cfg.ensemble_folds, cfg.seed) if cfg.ensemble_folds >= 2 else None


def _save_oof(out_dir: Path, fit_predict: stacking.FitPredict, y_fit: np.ndarray, num_classes: int,
              held_out: list[np.ndarray], present: np.ndarray | None = None) -> None:
    probs, covered = stacking.out_of_fold(fit_predict, y_fit, num_classes, held_out, present)
    np.savez(out_dir / OOF, probs=probs, present=covered)


def train_text(prepared: Prepared, out_dir: Path, cfg: TrainConfig, on_epoch: EpochCallback | None = None,
               labels: LabelMap | None = None) -> dict[str, Any]:
    """The text stage: the LSTM (member ``text``: vocabulary from the train split + model) in ``out_dir``, and the
    text members fitted beside it in their own subdirectories (``tfidf`` on the LSTM's token ids, ``chartfidf`` on
    the raw text). Returns the validation metrics of the first member it trains."""
    labels = labels or LabelMap.default()
    cleaning = CleaningSettings(max_tokens=cfg.max_tokens)
    rows = {s: prepared.rows(s) for s in SPLITS}
    y = {s: _targets(rows[s], labels) for s in SPLITS}
    fit_rows = _fit_rows(prepared)
    y_fit = _targets(fit_rows, labels)
    held_out = _folds(y_fit, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, dict[str, Any]] = {}
    table = vectors.load(cfg.text_vectors)
    if TEXT in cfg.members:
        scores[TEXT] = _train_lstm(rows, y, out_dir, cfg, cleaning, labels, on_epoch, (fit_rows, y_fit, held_out),
                                   table)
    if CHARTFIDF in cfg.members:
        scores[CHARTFIDF] = _train_chartfidf(rows, y, out_dir / CHARTFIDF, cfg, cleaning, labels,
                                             (fit_rows, y_fit, held_out), table)
    return scores[members.trained_by("text", cfg.members)[0]]


def _train_lstm(rows: dict[str, pd.DataFrame], y: dict[str, np.ndarray], out_dir: Path, cfg: TrainConfig,
                cleaning: CleaningSettings, labels: LabelMap, on_epoch: EpochCallback | None,
                oof: tuple[pd.DataFrame, np.ndarray, list[np.ndarray] | None],
                table: vectors.WordVectors | None) -> dict[str, Any]:
    """Member ``text`` (and ``tfidf``, which reads its token ids); ``table`` initialises the embeddings."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    texts = {s: _clean(rows[s], cleaning) for s in SPLITS}
    vocab = Vocabulary.build(texts["train"])
    ids = {s: torch.from_numpy(vocab.encode_batch(texts[s], cleaning.max_tokens)) for s in SPLITS}
    model, coverage = text_model(vocab, len(labels), table, cfg.seed)
    model_cfg = model.cfg
    result = fit(model, ids["train"], y["train"], ids["val"], y["val"], num_classes=len(labels),
                 epochs=cfg.epochs_text, device=device, seed=cfg.seed, batch_size=cfg.batch_size, lr=5e-3, name=TEXT,
                 on_epoch=on_epoch)
    torch.save(model.cpu().state_dict(), out_dir / bundle.TEXT_MODEL)
    model.to(device)
    bundle.write_json(out_dir / bundle.VOCAB, vocab.to_json())
    bundle.write_json(out_dir / "text.json", {"model": model_cfg.to_json(), "cleaning": cleaning.to_json(),
                                              "history": result.history, "best_epoch": result.best_epoch,
                                              "vectors": {"source": cfg.text_vectors, "coverage": coverage}})
    probs = {s: predict_proba(model, ids[s], device) for s in ("val", "test")}
    present = {s: text_present(ids[s].numpy()) for s in ("val", "test")}
    _save_probs(out_dir, probs, present)
    fit_rows, y_fit, held_out = oof
    fit_texts = _clean(fit_rows, cleaning)
    if held_out is not None:
        def lstm_fold(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
            # Each fold's own vocabulary and model, for the epoch count the full fit chose (no rows to stop on).
            fold_vocab = Vocabulary.build([fit_texts[i] for i in train])
            fold_ids = torch.from_numpy(fold_vocab.encode_batch(fit_texts, cleaning.max_tokens))
            fold_model = text_model(fold_vocab, len(labels), table, cfg.seed)[0]
            torch.manual_seed(cfg.seed)
            fit(fold_model, fold_ids[train], y_fit[train], fold_ids[:0], y_fit[:0], num_classes=len(labels),
                epochs=result.best_epoch, device=device, seed=cfg.seed, batch_size=cfg.batch_size, lr=5e-3,
                name=f"{TEXT} fold")
            return predict_proba(fold_model, fold_ids[predict], device)

        _save_oof(out_dir, lstm_fold, y_fit, len(labels), held_out,
                  text_present(vocab.encode_batch(fit_texts, cleaning.max_tokens)))
    if TFIDF in cfg.members:
        tfidf_dir = out_dir / TFIDF
        tfidf_dir.mkdir(parents=True, exist_ok=True)
        member = TfidfMember.fit(ids["train"].numpy(), y["train"], len(labels))
        member.save(tfidf_dir / bundle.TFIDF)
        _save_probs(tfidf_dir, {s: member.predict_proba(ids[s].numpy()) for s in ("val", "test")}, present)
        if held_out is not None:
            def tfidf_fold(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
                fold_vocab = Vocabulary.build([fit_texts[i] for i in train])
                fold_ids = fold_vocab.encode_batch(fit_texts, cleaning.max_tokens)
                return TfidfMember.fit(fold_ids[train], y_fit[train], len(labels)).predict_proba(fold_ids[predict])

            _save_oof(tfidf_dir, tfidf_fold, y_fit, len(labels), held_out,
                      text_present(vocab.encode_batch(fit_texts, cleaning.max_tokens)))
    return score(y["val"], probs["val"], labels)


def text_model(vocab: Vocabulary, num_classes: int, table: vectors.WordVectors | None,
               seed: int) -> tuple[TextClassifier, float]:
    """A new LSTM for ``vocab``; with ``table`` (``--text-vectors``) its embeddings are the table's width and start
    from its vectors (they then train with the model). Also returns the share of the vocabulary the table covers."""
    if table is None:
        return TextClassifier(TextModelConfig(vocab_size=len(vocab), num_classes=num_classes)), 0.0
    model = TextClassifier(TextModelConfig(vocab_size=len(vocab), num_classes=num_classes, embed_dim=table.dim))
    matrix, coverage = vectors.embedding_matrix(vocab.itos, table, seed)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(matrix))
    return model, coverage


def _train_chartfidf(rows: dict[str, pd.DataFrame], y: dict[str, np.ndarray], out_dir: Path, cfg: TrainConfig,
                     cleaning: CleaningSettings, labels: LabelMap,
                     oof: tuple[pd.DataFrame, np.ndarray, list[np.ndarray] | None],
                     table: vectors.WordVectors | None) -> dict[str, Any]:
    """Member ``chartfidf``: word + character n-gram TF-IDF (plus pooled ``table`` vectors) and a linear model over
    the raw text."""
    texts = {s: chartfidf.fields(rows[s]["designation"].tolist(), rows[s]["description"].tolist(), cleaning)
             for s in SPLITS}
    member = chartfidf.CharTfidfMember.fit(texts["train"], y["train"], len(labels), seed=cfg.seed, vectors=table)
    out_dir.mkdir(parents=True, exist_ok=True)
    member.save(out_dir / bundle.CHARTFIDF)
    probs = {s: member.predict_proba(texts[s]) for s in ("val", "test")}
    _save_probs(out_dir, probs, {s: chartfidf.present(texts[s]) for s in ("val", "test")})
    fit_rows, y_fit, held_out = oof
    if held_out is not None:
        fit_texts = chartfidf.fields(fit_rows["designation"].tolist(), fit_rows["description"].tolist(), cleaning)

        def fold(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
            pick = chartfidf.subset
            return chartfidf.CharTfidfMember.fit(pick(fit_texts, train), y_fit[train], len(labels), seed=cfg.seed,
                                                 vectors=table).predict_proba(pick(fit_texts, predict))

        _save_oof(out_dir, fold, y_fit, len(labels), held_out, chartfidf.present(fit_texts))
    return score(y["val"], probs["val"], labels)


def _clean(rows: pd.DataFrame, cleaning: CleaningSettings) -> list[str]:
    return [clean_text(a, b, cleaning) for a, b in zip(rows["designation"], rows["description"], strict=True)]


def member_dirs(text_dir: Path, image_dir: Path, cfg: TrainConfig) -> dict[str, Path]:
    """Member name → the directory its training stage wrote (``tfidf`` and ``chartfidf`` live inside the text
    stage's)."""
    dirs = {TEXT: text_dir, IMAGE: image_dir, TFIDF: text_dir / TFIDF, CHARTFIDF: text_dir / CHARTFIDF}
    return {name: dirs[name] for name in members.ordered(cfg.members)}


def train_image(prepared: Prepared, out_dir: Path, cfg: TrainConfig, on_epoch: EpochCallback | None = None,
                labels: LabelMap | None = None) -> dict[str, Any]:
    """Frozen backbone (``cfg.image_backbone``) + new head, trained on cached backbone features (or end to end with
    augmentation)."""
    # The images stay readable for the whole stage: with --no-feature-cache they are decoded batch by batch.
    with images_of(prepared.data_uri, *(prepared.rows(s) for s in SPLITS)) as root:
        return _train_head(prepared, root, out_dir, cfg, on_epoch, labels or LabelMap.default())


def _train_head(prepared: Prepared, root: Path, out_dir: Path, cfg: TrainConfig, on_epoch: EpochCallback | None,
                labels: LabelMap) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    spec = backbones.get(cfg.image_backbone)
    preset = spec.preset(cfg.image_size)
    backbone = spec.build(cfg.image_weights, cfg.seed).to(device)
    rows = {s: prepared.rows(s) for s in SPLITS}
    with_image = {s: rows[s][rows[s]["image"] != ""] for s in SPLITS}
    for split in ("train", "val"):
        if with_image[split].empty:
            raise DataValidationError(f"the {split} split has no images, so the image member cannot train; "
                                      "add images or pass --members text")
    fit_rows = _fit_rows(prepared)
    y_fit = _targets(fit_rows, labels)
    held_out = _folds(y_fit, cfg)
    fit_mask = (fit_rows["image"] != "").to_numpy()
    paths = {s: [root / p for p in with_image[s]["image"]] for s in SPLITS}

    def features(files: list[Path], desc: str) -> torch.Tensor:
        return torch.from_numpy(extract_features(backbone, files, preset, device, desc=desc,
                                                 precision=cfg.precision))

    inputs: dict[str, Any]  # cached features (tensors) or images decoded batch by batch (LazyImages)
    if cfg.feature_cache:
        inputs = {s: features(paths[s], f"{s} features") for s in SPLITS}
    else:
        inputs = {s: load_uint8_images(paths[s], preset) for s in SPLITS}
    if held_out is not None:
        # Out-of-fold heads always train on cached features (also with --no-feature-cache: k refits end to end
        # would cost k full trainings); the train and validation rows' features, in fit-row order.
        fit_feats = (torch.cat([inputs["train"], inputs["val"]]) if cfg.feature_cache
                     else features(paths["train"] + paths["val"], "fit features"))
    head = ImageHead(len(labels), in_features=spec.feature_dim)
    torch.manual_seed(cfg.seed)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return backbone_features(backbone, pixels, preset, device, precision=cfg.precision)

    forward = None if cfg.feature_cache else (lambda m, x: m(run(x)))
    augment = preset.train_transform()
    train_forward = None if cfg.feature_cache else (lambda m, x: m(run(torch.stack([augment(i) for i in x.cpu()]))))
    y = {s: _targets(with_image[s], labels) for s in SPLITS}
    result = fit(head, inputs["train"], y["train"], inputs["val"], y["val"], num_classes=len(labels),
                 epochs=cfg.epochs_image, device=device, seed=cfg.seed, batch_size=cfg.batch_size, lr=1e-3,
                 name=IMAGE, on_epoch=on_epoch, forward=forward, train_forward=train_forward)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(head.cpu().state_dict(), out_dir / bundle.IMAGE_HEAD)
    head.to(device)
    torch.save(spec.stored_state(backbone), out_dir / bundle.IMAGE_BACKBONE)
    bundle.write_json(out_dir / "image.json", {
        "backbone": spec.name, "weights_source": cfg.image_weights if cfg.image_weights in ("imagenet", "none")
        else "file", "preset": preset.to_json(), "head": {"in_features": spec.feature_dim},
        "feature_cache": cfg.feature_cache, "precision": precision.resolve(cfg.precision, device).describe(),
        "history": result.history, "best_epoch": result.best_epoch})
    probs: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        mask = (rows[split]["image"] != "").to_numpy()
        full = np.full((len(mask), len(labels)), 1.0 / len(labels), dtype=np.float32)
        if mask.any():
            full[mask] = predict_proba(head, inputs[split], device, forward=forward)
        probs[split], present[split] = full, mask
    _save_probs(out_dir, probs, present)
    if held_out is not None:
        # Feature row of each fit row (rows without an image have none and stay absent).
        feat_row = np.cumsum(fit_mask) - 1

        def fold(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
            fold_head = ImageHead(len(labels), in_features=spec.feature_dim)
            torch.manual_seed(cfg.seed)
            fit(fold_head, fit_feats[feat_row[train]], y_fit[train], fit_feats[:0], y_fit[:0],
                num_classes=len(labels), epochs=result.best_epoch, device=device, seed=cfg.seed,
                batch_size=cfg.batch_size, lr=1e-3, name=f"{IMAGE} fold")
            return predict_proba(fold_head, fit_feats[feat_row[predict]], device)

        _save_oof(out_dir, fold, y_fit, len(labels), held_out, fit_mask)
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
    if cfg.ensemble_folds >= 2:
        # Out-of-fold probabilities over train + validation: every fit row scores the weights, not ~15% of them.
        oof_probs, oof_present = {}, {}
        for name in names:
            with np.load(member_paths[name] / OOF) as npz:
                oof_probs[name], oof_present[name] = npz["probs"], npz["present"]
        weights = stacking.fit_simplex_weights(oof_probs, _targets(_fit_rows(prepared), labels), oof_present,
                                               step=cfg.ensemble_step)
    else:
        weights = fit_weights(probs["val"], y["val"], present["val"], step=cfg.ensemble_step)
    metrics: dict[str, Any] = {"weights": weights, "data_version": prepared.version, "labels": labels.to_json(),
                               "ensemble_fit": f"out-of-fold ({cfg.ensemble_folds} folds, log-loss)"
                               if cfg.ensemble_folds >= 2 else "validation split (weighted F1)"}
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
                              "image": {"preset": backbones.get(cfg.image_backbone).preset(cfg.image_size).to_json()}}
    vocab = Vocabulary([])
    cleaning = CleaningSettings(max_tokens=cfg.max_tokens)
    if TEXT in member_paths:
        text_meta = json.loads((member_paths[TEXT] / "text.json").read_text())
        config["text"] = {"model": text_meta["model"]}
        cleaning = CleaningSettings.from_json(text_meta["cleaning"])
        vocab = Vocabulary.from_json(bundle.read_json(member_paths[TEXT], bundle.VOCAB))
    if IMAGE in member_paths:
        image_meta = json.loads((member_paths[IMAGE] / "image.json").read_text())
        config["image"] = {k: image_meta[k] for k in ("backbone", "weights_source", "preset", "head")}
    # Each member's stage wrote its bundle files (members.REGISTRY[name].files) into its own directory.
    files = {f: member_paths[name] / f for name in names for f in members.REGISTRY[name].files}
    config["cleaning"] = cleaning.to_json()
    metrics["bundle_uri"] = bundle.write_bundle(out, files, config, vocab, metrics, prepared.splits)
    return metrics


# The training stages, by the modality of the members each fits (members.trained_by): the text stage fits the LSTM,
# tfidf and chartfidf; the image stage the image head.
STAGES: dict[str, Callable[..., dict[str, Any]]] = {"text": train_text, "image": train_image}


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
            if members.trained_by(name, cfg.members):
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
