"""Scores (sklearn.metrics) and the confusion-matrix reports (CSV + PNG with category names)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from rakuten_mm.labels import LabelMap


def score(y_true: np.ndarray, probs: np.ndarray, labels: LabelMap) -> dict[str, Any]:
    """Weighted F1 (the challenge metric), macro F1, accuracy and per-class figures for class indices ``y_true``."""
    y_pred = probs.argmax(1)
    idx = np.arange(len(labels))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    return {
        "weighted_f1": float(f1_score(y_true, y_pred, labels=idx, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "rows": int(len(y_true)),
        "per_class": {
            str(code): {"category": name, "precision": float(p), "recall": float(r), "f1": float(s),
                        "support": int(n)}
            for code, name, p, r, s, n in zip(labels.codes, labels.names, precision, recall, f1, support, strict=True)
        },
    }


def confusion(y_true: np.ndarray, probs: np.ndarray, labels: LabelMap) -> np.ndarray:
    return confusion_matrix(y_true, probs.argmax(1), labels=np.arange(len(labels)))


def write_confusion(matrix: np.ndarray, labels: LabelMap, out_dir: Path, stem: str = "confusion_matrix",
                    title: str = "Confusion matrix") -> tuple[Path, Path]:
    """Write ``stem.csv`` (codes as row/column headers) and ``stem.png`` (category names on the axes)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or CI
    import matplotlib.pyplot as plt
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.png"
    names = [f"{n} ({c})" for c, n in zip(labels.codes, labels.names, strict=True)]
    pd.DataFrame(matrix, index=list(labels.codes), columns=list(labels.codes)).rename_axis(
        "true\\predicted").to_csv(csv_path)
    fig, ax = plt.subplots(figsize=(12, 10))
    shown = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                    color="white" if v > matrix.max() / 2 else "black")
    fig.colorbar(shown, ax=ax)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def score_predictions(labels: LabelMap, codes: Sequence[int], ens: np.ndarray, probs: dict[str, np.ndarray],
                      present: dict[str, np.ndarray], report_dir: Path | None = None) -> dict[str, Any]:
    """Scores of the ensemble (``ens``) and of each member (``probs``, on the rows it is ``present`` for) for true
    prdtypecodes ``codes``, as ``rakuten_mm.inference.predict_rows`` returns them; with ``report_dir``, the
    confusion matrices too (``result["confusion_matrix"]``: the ensemble's CSV and PNG paths)."""
    y = np.array([labels.index_of(c) for c in codes], dtype=np.int64)
    result = score(y, ens, labels)
    result["members"] = {name: score(y[present[name]], probs[name][present[name]], labels) for name in probs}
    if report_dir is not None:
        csv, png = write_confusion(confusion(y, ens, labels), labels, report_dir)
        result["confusion_matrix"] = {"csv": str(csv), "png": str(png)}
        for name in probs:
            write_confusion(confusion(y[present[name]], probs[name][present[name]], labels), labels, report_dir,
                            stem=f"confusion_matrix_{name}", title=f"Confusion matrix ({name} member)")
    return result
