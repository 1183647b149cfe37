import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rakuten_mm import storage
from rakuten_mm.bundle import MANIFEST, config_schema, sha256, verify, verify_unchanged
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import BundleError
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle, load_preprocessor
from tests.unit.bundle_edits import edit_json, rehash, tfidf_bundle_for

pytestmark = pytest.mark.unit


@pytest.fixture(scope="session")
def tfidf_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tfidf_bundle_for(synth_data, tmp_path_factory)


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


def test_valid_weights_resaved_under_the_old_manifest_are_refused(bundle_copy):
    # A flipped byte may just break the zip; these are well-formed weights of the right shapes, only different.
    state = torch.load(bundle_copy / "image_head.pt", weights_only=True)
    state["net.5.bias"] = state["net.5.bias"] + 1.0
    torch.save(state, bundle_copy / "image_head.pt")
    with pytest.raises(BundleError, match="checksum of image_head.pt does not match"):
        load_bundle(bundle_copy)
    rehash(bundle_copy)  # with the manifest recomputed they are a different, valid bundle
    assert load_bundle(bundle_copy).image_head is not None


def test_a_bundle_changed_after_it_was_verified_is_refused_file_for_file(bundle_copy):
    # What register checks: the bundle evaluate verified, by its manifest's digest, then every file's checksum.
    verified = sha256(bundle_copy / MANIFEST)
    assert verify_unchanged(bundle_copy, verified)["ensemble"]["members"]
    state = torch.load(bundle_copy / "image_head.pt", weights_only=True)
    state["net.5.bias"] = state["net.5.bias"] + 1.0
    (bundle_copy / "image_head.pt").unlink()  # a new file: the copy may share the old one as a hard link
    torch.save(state, bundle_copy / "image_head.pt")
    with pytest.raises(BundleError, match="checksum of image_head.pt does not match"):
        verify_unchanged(bundle_copy, verified)
    rehash(bundle_copy)  # valid again as a bundle, but no longer the one that was verified
    verify(bundle_copy)
    with pytest.raises(BundleError, match=f"changed after it was verified: its {MANIFEST} has sha256 [0-9a-f]{{64}}, "
                                          f"the verified one had {verified}"):
        verify_unchanged(bundle_copy, verified)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="cannot read bundle"):
        verify_unchanged(bundle_copy, verified)


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
    publish_dir(tiny_bundle, target, last=MANIFEST)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "only.txt").write_text("x")
    (tmp_path / "other" / MANIFEST).write_text("{}")
    publish_dir(tmp_path / "other", target, last=MANIFEST)
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "only.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind


# ---- semantic checks: the manifest is recomputed after every edit, so only they stand in the way ----------------

def _refused(root: Path, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        load_bundle(root)


def _without(*path: str):
    def change(obj):
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return change


def test_config_schema_is_a_valid_json_schema_naming_the_registry_members():
    from jsonschema import Draft202012Validator

    from rakuten_mm.members import REGISTRY

    schema = config_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["ensemble"]["properties"]["members"]["items"]["enum"] == sorted(REGISTRY)


@pytest.mark.parametrize(("name", "change", "match"), [
    ("vocab.json", lambda v: {"a": 1}, "must be a JSON list of token strings"),
    ("vocab.json", lambda v: v[:-1], "vocabulary and model do not belong together"),
    ("vocab.json", lambda v: [*v[:-1], v[0]], "repeats tokens"),
    ("config.json", lambda c: c["ensemble"]["members"].append("audio"), r"ensemble\.members\[2\]"),
    ("config.json", lambda c: c["ensemble"]["weights"].update(text=-5.0, image=6.0),
     r"at ensemble\.weights\.(text|image)"),
    ("config.json", lambda c: c["ensemble"]["weights"].update(text=0.3, image=0.3), "must sum to 1"),
    ("config.json", _without("ensemble", "weights", "image"), "name exactly the members"),
    ("config.json", _without("image"), "'image' is a required property"),
    ("config.json", lambda c: [], "is not of type 'object'"),
    ("config.json", lambda c: c["image"]["preset"].update(size="32"), r"at image\.preset\.size"),
    ("config.json", lambda c: c["image"]["preset"].update(size=4096), "image size must be between"),
    ("config.json", lambda c: c["text"]["model"].update(layers=2), r"at text\.model"),
    ("config.json", lambda c: c["image"].update(backbone="resnet50"), "backbone 'resnet50' is not supported"),
    ("config.json", lambda c: c["ensemble"].update(members=["image"], weights={"image": 1.0}),
     r"\['text_model.pt'\], no part of a bundle with members \['image'\]"),
    ("config.json", lambda c: c["labels"].update(codes=c["labels"]["codes"][:-1],
                                                 names=c["labels"]["names"][:-1]),
     "the text model has 27 classes but the label map 26"),
    ("config.json", lambda c: c["labels"].update(codes=c["labels"]["codes"][:-1]), "label map needs unique codes"),
    ("manifest.json", lambda m: {**m, "files": list(m["files"])}, "is not of type 'object'"),
    ("manifest.json", lambda m: m["files"].update({"../escape.json": "0" * 64}), "'../escape.json'.*refused"),
])
def test_semantically_broken_bundles_are_refused(bundle_copy, name, change, match):
    if name == MANIFEST:  # the manifest itself: edited without recomputing it
        manifest = json.loads((bundle_copy / MANIFEST).read_text())
        new = change(manifest)
        (bundle_copy / MANIFEST).write_text(json.dumps(manifest if new is None else new))
    else:
        edit_json(bundle_copy, name, change)
    _refused(bundle_copy, match)


def test_config_with_nan_is_refused(bundle_copy):
    text = (bundle_copy / "config.json").read_text().replace('"dropout": 0.3', '"dropout": NaN', 1)
    (bundle_copy / "config.json").write_text(text)
    rehash(bundle_copy)
    _refused(bundle_copy, "NaN is not valid JSON")


def test_tensor_of_the_wrong_shape_names_the_tensor(bundle_copy):
    state = torch.load(bundle_copy / "text_model.pt", weights_only=True)
    state["classifier.bias"] = torch.zeros(26)
    torch.save(state, bundle_copy / "text_model.pt")
    rehash(bundle_copy)
    _refused(bundle_copy, r"text_model.pt .*tensor classifier.bias is torch.float32 \[26\], but .* needs "
                          r"torch.float32 \[27\]")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.pop("classifier.bias"), r"lacks tensors \['classifier.bias'\]"),
    (lambda s: s.update(extra=torch.zeros(1)), r"holds tensors \['extra'\]"),
    (lambda s: s["classifier.bias"].fill_(float("nan")), "classifier.bias holds NaN"),
    (lambda s: s.update({"classifier.bias": s["classifier.bias"].double()}), "is torch.float64"),
])
def test_tensor_edits_are_refused(bundle_copy, edit, match):
    state = torch.load(bundle_copy / "text_model.pt", weights_only=True)
    edit(state)
    torch.save(state, bundle_copy / "text_model.pt")
    rehash(bundle_copy)
    _refused(bundle_copy, match)


def test_a_state_dict_holding_non_tensors_is_refused(bundle_copy):
    torch.save({"classifier.bias": 5}, bundle_copy / "image_head.pt")
    rehash(bundle_copy)
    _refused(bundle_copy, "image_head.pt .* must be a state_dict of tensors")


def test_extra_sub_directory_is_refused(bundle_copy):
    (bundle_copy / "sub").mkdir()
    _refused(bundle_copy, "sub-directory sub/")


def test_symlink_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_bytes((bundle_copy / "vocab.json").read_bytes())  # same bytes: the checksum alone would pass
    (bundle_copy / "vocab.json").unlink()
    (bundle_copy / "vocab.json").symlink_to(outside)
    _refused(bundle_copy, "vocab.json, a symlink to .*outside.json.* outside the bundle")


def test_symlink_to_a_non_json_file_inside_is_a_clear_error(bundle_copy):
    (bundle_copy / "vocab.json").unlink()
    (bundle_copy / "vocab.json").symlink_to("text_model.pt")
    rehash(bundle_copy)
    _refused(bundle_copy, "vocab.json is unreadable")


def test_links_inside_the_bundle_and_a_linked_bundle_directory_load(bundle_copy, tmp_path):
    (bundle_copy / "real-metrics").write_bytes((bundle_copy / "metrics.json").read_bytes())
    (bundle_copy / "metrics.json").unlink()
    (bundle_copy / "metrics.json").symlink_to("real-metrics")
    _refused(bundle_copy, r"not in its manifest: \['real-metrics'\]")  # the link target is a file of its own
    (bundle_copy / "metrics.json").unlink()
    (bundle_copy / "real-metrics").rename(bundle_copy / "metrics.json")
    link = tmp_path / "mounted"
    link.symlink_to(bundle_copy, target_is_directory=True)  # e.g. /mnt/models -> ..data/bundle
    assert load_bundle(link).labels.codes


def test_a_fifo_in_the_bundle_is_refused_without_blocking(bundle_copy):
    os.mkfifo(bundle_copy / "pipe")
    _refused(bundle_copy, "pipe, which is not a regular file")


# ---- the tfidf member's arrays ------------------------------------------------------------------------------------

@pytest.fixture
def tfidf_copy(tfidf_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tfidf_bundle, tmp_path / "bundle"))


def _resave_npz(root: Path, **changes: object) -> None:
    with np.load(root / "tfidf.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(root / "tfidf.npz", **arrays)
    rehash(root)


def test_tfidf_bundle_loads(tfidf_bundle):
    assert load_bundle(tfidf_bundle).tfidf is not None


@pytest.mark.parametrize(("changes", "match"), [
    ({"terms": np.array([{"a": 1}], dtype=object)}, "not a plain-array .npz"),
    ({"idf": np.zeros(3)}, r"idf must be a float array of shape"),
    ({"num_classes": np.array(26)}, "num_classes must be the label map's size 27"),
    ({"coef": None}, r"arrays \['coef'\] are missing"),
    ({"classes": np.array([0, 0, 1])}, "distinct class indices"),
    ({"intercept": np.full(27, np.inf)}, "intercept must be a float array|intercept holds NaN"),
])
def test_broken_tfidf_arrays_are_refused(tfidf_copy, changes, match):
    _resave_npz(tfidf_copy, **changes)
    _refused(tfidf_copy, match)


def test_tfidf_file_without_the_member_is_refused(tfidf_copy):
    edit_json(tfidf_copy, "config.json", lambda c: c["ensemble"].update(members=["text"], weights={"text": 1.0}))
    _refused(tfidf_copy, r"\['tfidf.npz'\], no part of a bundle with members \['text'\]")


# ---- permissions: a bundle written by one user loads as another ----------------------------------------------------

def _modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def test_trained_bundle_is_readable_by_other_users(tiny_bundle):
    mask = storage._umask()
    assert _modes(tiny_bundle) == {("dir", 0o777 & ~mask), ("file", 0o666 & ~mask)}
    if mask == 0o022:  # the usual umask: 0755 / 0644
        assert _modes(tiny_bundle) == {("dir", 0o755), ("file", 0o644)}


def test_publish_respects_the_umask(tiny_bundle, tmp_path):
    old = os.umask(0o027)
    try:
        storage.publish_dir(tiny_bundle, tmp_path / "b", last=MANIFEST)
    finally:
        os.umask(old)
    assert _modes(tmp_path / "b") == {("dir", 0o750), ("file", 0o640)}


LOAD_AS_NOBODY = """
import os, sys
from rakuten_mm.model import load_bundle
load_bundle(sys.argv[1])            # as root, only to import every module the load needs
os.setgroups([]); os.setgid(65534); os.setuid(65534)
model = load_bundle(sys.argv[2])    # as nobody: every file and directory must be readable by others
print(os.getuid(), len(model.labels))
"""


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0,
                    reason="switching to another uid needs root (the test runs the load as uid 65534)")
def test_bundle_loads_as_another_uid(tiny_bundle, tmp_path):
    # A volume shared between users: world-traversable, the bundle copied with its modes (copytree keeps them).
    # The interpreter lives under /root here, so the child imports as root, then drops to uid 65534 to load.
    shared = Path(tempfile.mkdtemp(prefix="rakuten-shared-"))
    try:
        shared.chmod(0o755)
        bundle = Path(shutil.copytree(tiny_bundle, shared / "bundle"))
        proc = subprocess.run([sys.executable, "-c", LOAD_AS_NOBODY, str(tiny_bundle), str(bundle)],
                              capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == ["65534", "27"]
        bundle.chmod(0o700)  # the old behaviour (a mkdtemp renamed into place) fails for the other user
        proc = subprocess.run([sys.executable, "-c", LOAD_AS_NOBODY, str(tiny_bundle), str(bundle)],
                              capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr[-2000:]
        assert "BundleError" in proc.stderr or "StorageError" in proc.stderr  # a typed error, not a crash
    finally:
        shutil.rmtree(shared, ignore_errors=True)
