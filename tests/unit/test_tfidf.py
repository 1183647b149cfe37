from pathlib import Path

import numpy as np
import pytest

from rakuten_mm.config import TrainConfig
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import ConfigError
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle
from rakuten_mm.tfidf import TfidfMember, ngrams

pytestmark = pytest.mark.unit


def test_ngrams_from_token_ids_skip_padding():
    assert ngrams(np.array([5, 7, 9, 0, 0])) == ["5", "7", "9", "5_7", "7_9"]
    assert ngrams(np.array([0, 0])) == []


def test_fit_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80) * 2  # classes 0, 2, 4, 6 of 27
    ids = rng.integers(2, 40, (80, 6))
    ids[:, 0] = 100 + y  # one token that gives the class away
    member = TfidfMember.fit(ids, y, num_classes=27)
    probs = member.predict_proba(ids)
    assert probs.shape == (80, 27) and (probs.argmax(1) == y).mean() > 0.9
    assert (probs[:, 1] == 0).all()  # a class never seen keeps probability 0
    member.save(tmp_path / "tfidf.npz")
    np.testing.assert_array_equal(TfidfMember.load(tmp_path / "tfidf.npz").predict_proba(ids), probs)


def test_tfidf_needs_the_text_member():
    with pytest.raises(ConfigError, match="add text to --members"):
        TrainConfig(members=("image", "tfidf"))


def test_three_member_bundle_in_process(synth_data: Path, tmp_path):
    from rakuten_mm.training import train

    cfg = TrainConfig(epochs_text=1, epochs_image=1, image_size=32, image_weights="none",
                      members=("text", "image", "tfidf"), ensemble_step=0.1)
    result = train(str(synth_data), str(tmp_path / "bundle"), cfg)
    assert set(result.metrics["weights"]) == {"text", "image", "tfidf"}
    assert sum(result.metrics["weights"].values()) == pytest.approx(1.0)
    assert "tfidf" in result.metrics["test"]["members"]
    model = load_bundle(result.bundle_uri)
    assert (Path(result.bundle_uri) / "tfidf.npz").is_file() and model.tfidf is not None
    rows = load_labelled(synth_data).frame.head(8)
    probs, members, present = predict_rows(model, rows, synth_data)
    assert set(members) == {"text", "image", "tfidf"} and present["tfidf"].all()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
