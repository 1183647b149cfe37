"""Batch evaluation and prediction over a dataset with a loaded bundle (the same calls the serving predictor makes,
on the same canonical images the serving transformer sends it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rakuten_mm.ensemble import combine
from rakuten_mm.evaluation import score_predictions
from rakuten_mm.image import canonical_images
from rakuten_mm.model import Classifier


def predict_rows(model: Classifier, rows: pd.DataFrame, root: Path, batch_size: int = 32,
                 desc: str = "predict") -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows (designation, description, image path) → ensemble probs, member probs, member presence masks."""
    ens, probs, present = [], [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=None):
        chunk = rows.iloc[start:start + batch_size]
        # The served path exactly: image files → the canonical transport form → Classifier (rakuten_mm.model).
        images, mask = canonical_images([(root / p).read_bytes() if p else None for p in chunk["image"]])
        p, m = model.member_probs_raw(chunk["designation"].tolist(), chunk["description"].tolist(), images, mask)
        ens.append(combine(p, model.weights, m))
        probs.append(p)
        present.append(m)
    names = list(probs[0]) if probs else []
    n_classes = len(model.labels)
    return (np.concatenate(ens) if ens else np.zeros((0, n_classes), np.float32),
            {k: np.concatenate([p[k] for p in probs]) for k in names},
            {k: np.concatenate([m[k] for m in present]) for k in names})


def evaluate_rows(model: Classifier, rows: pd.DataFrame, root: Path, report_dir: Path | None = None
                  ) -> dict[str, Any]:
    """Scores of the ensemble and of each member (on the rows it is present for); writes confusion matrices."""
    ens, probs, present = predict_rows(model, rows, root, desc="evaluate")
    return score_predictions(model.labels, rows["prdtypecode"].tolist(), ens, probs, present, report_dir=report_dir)


def predictions_frame(model: Classifier, rows: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """One row per product: the original index, productid, imageid, predicted code, category and probability."""
    labels = model.labels
    best = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    return pd.DataFrame({
        "productid": rows["productid"].to_numpy(),
        "imageid": rows["imageid"].to_numpy(),
        "prdtypecode": [labels.codes[i] for i in best],
        "category": [labels.names[i] for i in best],
        "probability": probs[np.arange(len(best)), best] if len(best) else [],
    }, index=rows.index)
