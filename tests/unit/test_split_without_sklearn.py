"""The preprocess step splits without importing scikit-learn, and its split is scikit-learn's, draw for draw."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from rakuten_mm.data import _train_test_split, make_splits
from rakuten_mm.errors import DataValidationError

pytestmark = pytest.mark.unit


@functools.cache
def _cases(count: int) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    rng = np.random.default_rng(1234)
    cases = []
    for _ in range(count):
        n_classes = int(rng.integers(1, 30))
        n = int(rng.integers(2, 600))
        weights = rng.dirichlet(np.ones(n_classes) * rng.uniform(0.2, 3))
        labels = rng.choice(np.arange(10, 10 + n_classes) * 7, size=n, p=weights)
        ids = rng.permutation(np.arange(n) * 3 + 5)
        cases.append((ids, labels, float(rng.uniform(0.05, 0.49)), int(rng.integers(0, 2**31 - 1))))
    return cases


@pytest.mark.parametrize("case", range(300))
def test_each_cut_is_scikit_learns(case):
    ids, labels, size, seed = _cases(300)[case]
    n_take = int(np.ceil(size * len(ids)))
    n_classes = len(np.unique(labels))
    stratified = (n_take >= n_classes and len(ids) - n_take >= n_classes
                  and np.unique(labels, return_counts=True)[1].min() >= 2)
    try:
        expected = train_test_split(ids, test_size=size, random_state=seed,
                                    stratify=labels if stratified else None)
    except ValueError:
        with pytest.raises(DataValidationError, match="cannot split"):
            _train_test_split(ids, size, seed, labels if stratified else None)
        return
    got = _train_test_split(ids, size, seed, labels if stratified else None)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_cut_that_leaves_no_training_rows_is_a_validation_error():
    with pytest.raises(ValueError):
        train_test_split(np.array([5]), test_size=0.15, random_state=0)
    with pytest.raises(DataValidationError, match="cannot split 1 rows into train/val/test"):
        _train_test_split(np.array([5]), 0.15, 0, None)


def _reference_splits(frame: pd.DataFrame, seed: int, val: float, test: float) -> dict[str, list[int]]:
    """make_splits as it was, on scikit-learn."""
    ids, labels, n_classes = frame.index.to_numpy(), frame["prdtypecode"].to_numpy(), frame["prdtypecode"].nunique()

    def cut(ids: np.ndarray, labels: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
        n_take = int(np.ceil(size * len(ids)))
        ok = n_take >= n_classes and len(ids) - n_take >= n_classes and np.bincount(
            pd.factorize(labels)[0]).min() >= 2
        return train_test_split(ids, test_size=size, random_state=seed, stratify=labels if ok else None)

    rest, held = cut(ids, labels, test)
    train, valid = cut(rest, frame.loc[rest, "prdtypecode"].to_numpy(), val / (1 - test))
    return {"train": sorted(train.tolist()), "val": sorted(valid.tolist()), "test": sorted(held.tolist())}


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_make_splits_is_what_it_was_on_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    codes = rng.choice([10, 40, 50, 60, 1280, 1281, 2583], size=900, p=[.3, .2, .2, .1, .1, .05, .05])
    frame = pd.DataFrame({"prdtypecode": codes}, index=rng.permutation(5000)[:900])
    for val, test in ((0.15, 0.15), (0.1, 0.2), (0.3, 0.05)):
        assert make_splits(frame, seed, val, test) == _reference_splits(frame, seed, val, test)


def test_make_splits_on_the_synthetic_data_is_unchanged(synth_data):
    from rakuten_mm.data import load_labelled

    frame = load_labelled(synth_data).frame
    assert make_splits(frame, 0) == _reference_splits(frame, 0, 0.15, 0.15)
