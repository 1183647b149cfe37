"""Out-of-fold ensemble fitting: folds, OOF probabilities with absent members, simplex weights, stacked LR."""

from __future__ import annotations

import numpy as np
import pytest

from rakuten_mm.ensemble import combine
from rakuten_mm.errors import ConfigError
from rakuten_mm.stacking import StackedFusion, fit_simplex_weights, folds, out_of_fold

pytestmark = pytest.mark.unit

C = 5


def onehot_noisy(y: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """Probabilities of a member that is right on ``accuracy`` of the rows (confidently), wrong elsewhere."""
    rng = np.random.default_rng(seed)
    guess = np.where(rng.random(len(y)) < accuracy, y, (y + rng.integers(1, C, len(y))) % C)
    probs = np.full((len(y), C), 0.1 / (C - 1), dtype=np.float32)
    probs[np.arange(len(y)), guess] = 0.9
    return probs


def test_folds_partition_the_rows_stratified():
    y = np.repeat(np.arange(C), 10)
    held = folds(y, 5, seed=0)
    assert sorted(np.concatenate(held).tolist()) == list(range(50))
    assert all(np.bincount(y[h], minlength=C).tolist() == [2] * C for h in held)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        folds(y, 1, 0)


def test_out_of_fold_never_predicts_a_row_it_trained_on_and_keeps_absent_rows_absent():
    y = np.repeat(np.arange(C), 8)
    present = np.arange(40) % 4 != 0  # a quarter of the rows lack the modality
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def fit_predict(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        seen.append((train, predict))
        return np.eye(C, dtype=np.float32)[y[predict]]

    probs, covered = out_of_fold(fit_predict, y, C, folds(y, 4, 0), present)
    assert all(not set(train) & set(predict) for train, predict in seen)
    assert all(present[train].all() and present[predict].all() for train, predict in seen)
    np.testing.assert_array_equal(covered, present)
    np.testing.assert_allclose(probs[~present], 1.0 / C)
    assert (probs[present].argmax(1) == y[present]).all()


def test_simplex_weights_favour_the_stronger_member_and_handle_absent_rows():
    y = np.random.default_rng(1).integers(0, C, 400)
    probs = {"strong": onehot_noisy(y, 0.9, 2), "weak": onehot_noisy(y, 0.3, 3)}
    present = {"strong": np.ones(400, bool), "weak": np.arange(400) % 2 == 0}
    for objective in ("log_loss", "f1"):
        weights = fit_simplex_weights(probs, y, present, step=0.1, objective=objective)
        assert weights["strong"] > weights["weak"] and sum(weights.values()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="objective"):
        fit_simplex_weights(probs, y, present, objective="accuracy")
    assert fit_simplex_weights({"only": probs["strong"]}, y, present) == {"only": 1.0}


def test_stacked_fusion_beats_each_member_and_survives_a_missing_modality(tmp_path):
    y = np.random.default_rng(4).integers(0, C, 600)
    probs = {"text": onehot_noisy(y, 0.6, 5), "image": onehot_noisy(y, 0.6, 6)}
    present = {"text": np.ones(600, bool), "image": np.arange(600) % 3 == 0}
    probs["image"][~present["image"]] = 1.0 / C
    fusion = StackedFusion.fit(probs, present, y, C, c=1.0)
    mixed = fusion.predict_proba(probs, present)
    np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-5)
    acc = (mixed.argmax(1) == y).mean()
    assert acc >= (probs["text"].argmax(1) == y).mean()
    # Rows without the image: the fusion still answers from the text member.
    rows = ~present["image"]
    assert (mixed[rows].argmax(1) == probs["text"][rows].argmax(1)).mean() > 0.9
    fusion.save(tmp_path / "fusion.npz")
    again = StackedFusion.load(tmp_path / "fusion.npz")
    np.testing.assert_allclose(again.predict_proba(probs, present), mixed, atol=1e-6)
    assert again.members == ["text", "image"]


def test_oof_weights_resist_a_near_chance_member():
    """The issue's failure: a near-chance member must not take the weight once fusion sees every OOF row."""
    y = np.random.default_rng(7).integers(0, C, 500)
    probs = {"text": onehot_noisy(y, 0.7, 8), "image": onehot_noisy(y, 1.0 / C, 9)}
    present = {k: np.ones(500, bool) for k in probs}
    weights = fit_simplex_weights(probs, y, present)
    assert weights["image"] <= 0.2
    mixed = combine(probs, weights, present)
    assert (mixed.argmax(1) == y).mean() >= (probs["text"].argmax(1) == y).mean() - 1e-9
