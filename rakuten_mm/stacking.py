"""Ensemble fitting that does not overfit a small validation split: out-of-fold member probabilities.

Tuning ensemble weights on the ~15% validation split alone lets a hundred rows decide, and on the real sample gave
0.6 of the weight to a near-chance image member (BENCHMARKS.md). Here every member is instead refitted ``k`` times
over the train + validation rows (stratified folds) and predicts the fold it did not see, so each of those rows
gets an honest, out-of-fold (OOF) probability from every member; the fusion is fitted on all of them. The
held-out test split is never touched. Two fusions are offered over the OOF probabilities:

- :func:`fit_simplex_weights`: ensemble weights on the simplex grid (:func:`rakuten_mm.ensemble.simplex_grid`),
  scored with :func:`rakuten_mm.ensemble.combine`, by log-loss (smooth, so it is stable on few rows) or weighted
  F1. The bundle keeps the weights it always had, and the missing-modality path is ``combine``'s: a member absent
  for a row drops out and the others' weights are renormalised.
- :class:`StackedFusion`: a multinomial logistic regression over the members' log-probabilities, the fusion of
  the SIGIR eCom'20 Rakuten challenge winners. A member absent for a row contributes zeros plus a presence
  indicator, so the regression learns what a missing image means instead of seeing a fake one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, log_loss
from sklearn.model_selection import StratifiedKFold

from rakuten_mm.ensemble import combine, simplex_grid
from rakuten_mm.errors import ConfigError

# (train row indices, rows to predict) → probabilities ``float32 [len(rows to predict), C]``
FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]
OBJECTIVES = ("log_loss", "f1")
EPS = 1e-4  # probabilities are clipped here before logs: a member's 0 must not dominate the fusion


def folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` stratified, shuffled folds of ``range(len(y))`` → the row indices each fold holds out.

    Classes rarer than ``k`` are spread over as many folds as they have rows (sklearn warns; it is expected here)."""
    if k < 2:
        raise ConfigError(f"out-of-fold fitting needs at least 2 folds, got {k}")
    if len(y) < k:
        raise ConfigError(f"{len(y)} rows cannot be split into {k} folds; use fewer folds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        return [held for _, held in splitter.split(np.zeros(len(y)), y)]


def out_of_fold(fit_predict: FitPredict, y: np.ndarray, num_classes: int, held_out: Sequence[np.ndarray],
                present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities ``float32 [N, C]`` and their presence mask ``bool [N]``.

    For each fold, ``fit_predict`` trains on the other folds' present rows and predicts this fold's present rows.
    Rows where the member is absent (``present`` False: no image, no text) get the uniform distribution and stay
    absent in the mask, as the member's probabilities at prediction time.
    """
    mask = np.ones(len(y), bool) if present is None else np.asarray(present, bool)
    out = np.full((len(y), num_classes), 1.0 / num_classes, dtype=np.float32)
    covered = np.zeros(len(y), bool)
    rows = np.arange(len(y))
    for held in held_out:
        train = np.setdiff1d(rows[mask], held)
        predict = held[mask[held]]
        # A fold whose training rows hold fewer than two classes cannot train: its rows stay absent.
        if len(predict) and len(np.unique(y[train])) >= 2:
            out[predict] = fit_predict(train, predict)
            covered[predict] = True
    return out, covered


def _score(mixed: np.ndarray, y: np.ndarray, objective: str) -> float:
    """Higher is better."""
    if objective == "f1":
        return float(f1_score(y, mixed.argmax(1), average="weighted", zero_division=0))
    return -float(log_loss(y, np.clip(mixed, 1e-7, 1.0), labels=np.arange(mixed.shape[1])))


def fit_simplex_weights(probs: Mapping[str, np.ndarray], y: np.ndarray, present: Mapping[str, np.ndarray],
                        step: float = 0.05, objective: str = "log_loss") -> dict[str, float]:
    """Simplex-grid ensemble weights that maximise ``objective`` (``log_loss``: minimise it; ``f1``: weighted
    F1, log-loss breaking ties) of :func:`rakuten_mm.ensemble.combine` over out-of-fold ``probs``."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"ensemble objective must be one of {OBJECTIVES}, got {objective!r}")
    names = list(probs)
    if not names:
        raise ConfigError("the ensemble needs at least one member")
    if len(names) == 1:
        return {names[0]: 1.0}
    best: tuple[float, float] | None = None
    best_w: dict[str, float] = {}
    for combo in simplex_grid(len(names), step):
        w = dict(zip(names, combo, strict=True))
        mixed = combine(probs, w, present)
        key = (_score(mixed, y, objective), _score(mixed, y, "log_loss") if objective == "f1" else 0.0)
        if best is None or key > best:
            best, best_w = key, w
    return {k: round(v, 6) for k, v in best_w.items()}


class StackedFusion:
    """Multinomial logistic regression over members' log-probabilities and presence indicators."""

    def __init__(self, members: Sequence[str], classifier: LogisticRegression, num_classes: int) -> None:
        self.members, self.classifier, self.num_classes = list(members), classifier, num_classes

    def features(self, probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per member: ``log(clip(p))`` on rows where it is present (0 elsewhere), then its presence (0/1)."""
        columns = []
        for name in self.members:
            mask = np.asarray(present[name], bool)
            columns.append(np.log(np.clip(probs[name], EPS, 1.0)) * mask[:, None])
        columns.append(np.stack([np.asarray(present[name], np.float64) for name in self.members], axis=1))
        return np.concatenate(columns, axis=1)

    @classmethod
    def fit(cls, probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], y: np.ndarray,
            num_classes: int, c: float = 0.1) -> StackedFusion:
        """Fit on out-of-fold ``probs`` (``c``: inverse L2 strength; small, as the inputs are few)."""
        fusion = cls(list(probs), LogisticRegression(C=c, max_iter=2000), num_classes)
        fusion.classifier.fit(fusion.features(probs, present), y)
        return fusion

    def predict_proba(self, probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = len(next(iter(probs.values())))
        out = np.zeros((rows, self.num_classes), dtype=np.float32)
        if rows:
            out[:, self.classifier.classes_] = self.classifier.predict_proba(self.features(probs, present))
        return out

    def save(self, path: Path) -> None:
        np.savez(path, members=np.array(self.members, dtype=str), coef=self.classifier.coef_,
                 intercept=self.classifier.intercept_, classes=self.classifier.classes_,
                 num_classes=np.array(self.num_classes))

    @classmethod
    def load(cls, path: Path) -> StackedFusion:
        with np.load(path, allow_pickle=False) as arrays:
            classifier = LogisticRegression()
            classifier.coef_, classifier.intercept_ = arrays["coef"], arrays["intercept"]
            classifier.classes_ = arrays["classes"]
            return cls([str(m) for m in arrays["members"]], classifier, int(arrays["num_classes"]))
