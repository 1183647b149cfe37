"""Smoke test on the real challenge rows and JPEGs in ../shared (skipped when that sample is absent)."""

import pytest

from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions, load_labelled, load_unlabelled
from rakuten_mm.inference import evaluate_rows, predict_rows
from rakuten_mm.model import load_bundle
from rakuten_mm.training import dataset_for, train

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_train_evaluate_predict_on_real_rows(real_data, tmp_path):
    options = DataOptions(on_missing_image="text-only")  # 276 of 769 rows have their image
    cfg = TrainConfig(epochs_text=6, epochs_image=4, image_size=64, image_weights="none", batch_size=32)
    result = train(str(real_data), str(tmp_path / "bundle"), cfg, options)
    model = load_bundle(result.bundle_uri)
    dataset = load_labelled(real_data, options)
    rows = dataset_for(model.splits, dataset, "test")
    scores = evaluate_rows(model, rows, real_data)
    assert scores["rows"] == len(rows) > 100
    # Held-out rows of 27 classes: chance is ~0.04; a trained LSTM on real French titles does far better.
    assert scores["members"]["text"]["weighted_f1"] > 0.15, scores["members"]["text"]
    assert scores["members"]["image"]["rows"] < scores["rows"]  # the image member only sees rows with images
    unlabelled = load_unlabelled(real_data, options)
    probs, _, present = predict_rows(model, unlabelled.frame, real_data)
    assert probs.shape == (499, 27) and 0 < present["image"].sum() < 499
