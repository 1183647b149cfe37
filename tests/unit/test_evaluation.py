import numpy as np
import pytest
from sklearn.metrics import f1_score

from rakuten_mm.evaluation import confusion, score, write_confusion
from rakuten_mm.labels import LabelMap

pytestmark = pytest.mark.unit


def test_score_matches_sklearn_and_names_every_class():
    labels = LabelMap.default()
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(labels), 200)
    probs = rng.random((200, len(labels)))
    probs[np.arange(100), y[:100]] += 5  # half the rows right
    result = score(y, probs, labels)
    assert result["weighted_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="weighted"))
    assert result["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert set(result["per_class"]) == {str(c) for c in labels.codes}
    assert result["per_class"]["2583"]["category"] == "Pool Supplies"
    assert sum(c["support"] for c in result["per_class"].values()) == 200


def test_confusion_reports_written(tmp_path):
    labels = LabelMap.default()
    y = np.array([0, 1, 1, 26])
    probs = np.eye(len(labels))[[0, 1, 0, 26]]
    matrix = confusion(y, probs, labels)
    assert matrix[1, 0] == 1 and matrix.trace() == 3
    csv, png = write_confusion(matrix, labels, tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"
    header = csv.read_text().splitlines()[0]
    assert header.startswith("true\\predicted,10,40")
