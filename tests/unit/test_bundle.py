import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rakuten_mm.bundle import MANIFEST, load_bundle, load_preprocessor, verify
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import BundleError
from rakuten_mm.inference import predict_rows

pytestmark = pytest.mark.unit


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_bundle_holds_no_executable_code_and_a_full_manifest(tiny_bundle):
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    files = {p.name for p in tiny_bundle.iterdir()}
    assert set(manifest["files"]) == files - {MANIFEST}
    assert {"config.json", "vocab.json", "text_model.pt", "image_backbone.pt", "image_head.pt", "metrics.json",
            "splits.json"} <= files
    config = verify(tiny_bundle)
    assert len(config["labels"]["codes"]) == 27
    assert config["image"]["backbone"] == "vgg16" and config["image"]["preset"]["size"] == 32
    assert set(config["ensemble"]["weights"]) == {"text", "image"}
    assert {"rakuten_mm", "torch", "torchvision"} <= set(config["versions"])
    for name in ("text_model.pt", "image_head.pt"):
        state = torch.load(tiny_bundle / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_round_trip_predictions_are_reproducible(tiny_bundle, synth_data):
    rows = load_labelled(synth_data).frame.head(12)
    a = load_bundle(tiny_bundle)
    b = load_bundle(tiny_bundle)
    pa, _, _ = predict_rows(a, rows, synth_data)
    pb, _, _ = predict_rows(b, rows, synth_data)
    np.testing.assert_array_equal(pa, pb)
    assert pa.shape == (12, 27)
    np.testing.assert_allclose(pa.sum(1), 1.0, rtol=1e-5)


def test_missing_modality_path(tiny_bundle, synth_data):
    model = load_bundle(tiny_bundle)
    rows = load_labelled(synth_data).frame.head(4)
    ids = model.pre.encode_text(rows["designation"].tolist(), rows["description"].tolist())
    images, mask = model.pre.encode_images([(synth_data / p).read_bytes() for p in rows["image"]])
    member, _ = model.member_probs(ids, images, mask)
    text_only = model.predict_tensors(ids, images, np.zeros(4, bool))
    np.testing.assert_allclose(text_only, member["text"], rtol=1e-5)
    image_only = model.predict_tensors(np.zeros_like(ids), images, mask)
    np.testing.assert_allclose(image_only, member["image"], rtol=1e-5)


def test_preprocessor_alone(tiny_bundle):
    pre = load_preprocessor(tiny_bundle)
    assert pre.image_preset.size == 32 and len(pre.labels) == 27
    assert pre.encode_text(["Chaise &eacute;t&eacute;"], [None]).shape[0] == 1


def test_tampered_file_is_refused(bundle_copy):
    path = bundle_copy / "image_head.pt"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum of image_head.pt does not match"):
        load_bundle(bundle_copy)


def test_tampered_config_is_refused(bundle_copy):
    config = json.loads((bundle_copy / "config.json").read_text())
    config["ensemble"]["weights"] = {"text": 1.0, "image": 0.0}
    (bundle_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="config.json"):
        load_bundle(bundle_copy)


def test_incomplete_and_extra_files_are_refused(bundle_copy):
    (bundle_copy / "vocab.json").unlink()
    with pytest.raises(BundleError, match=r"incomplete: missing \['vocab.json'\]"):
        load_bundle(bundle_copy)


def test_extra_file_is_refused(bundle_copy):
    (bundle_copy / "evil.py").write_text("print('hi')")
    with pytest.raises(BundleError, match=r"not in its manifest: \['evil.py'\]"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)


def test_pickled_code_is_refused_even_with_a_matching_manifest(bundle_copy):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Evil()}, bundle_copy / "image_head.pt")
    from rakuten_mm.bundle import sha256

    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"]["image_head.pt"] = sha256(bundle_copy / "image_head.pt")
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot load image_head.pt"):
        load_bundle(bundle_copy)


def test_unsupported_format(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["format"] = 99
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99 is not supported"):
        load_bundle(bundle_copy)


def test_republishing_replaces_the_old_bundle_whole(tiny_bundle, tmp_path):
    from rakuten_mm.storage import publish_dir

    target = tmp_path / "out"
    publish_dir(tiny_bundle, target)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "only.txt").write_text("x")
    publish_dir(tmp_path / "other", target)
    assert [p.name for p in target.iterdir()] == ["only.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind
