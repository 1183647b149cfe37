"""The char n-gram TF-IDF member: fit, calibrated probabilities, plain-array save/load."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from rakuten_mm.chartfidf import CharTfidfMember, fields

pytestmark = pytest.mark.unit

WORDS = {0: "chaussure", 2: "livre", 5: "piscine", 9: "console"}


def sample(n: int = 60, seed: int = 0) -> tuple[dict[str, list[str]], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(list(WORDS), n)
    designations = [f"{WORDS[c]}s &eacute;t&eacute; <b>{rng.integers(100)}</b>" for c in y]
    descriptions = ["" if i % 3 else "<p>Bonne qualit&eacute;</p>" for i in range(n)]
    return fields(designations, descriptions), y


def test_fields_clean_both_the_whole_text_and_the_title():
    texts = fields(["Livre <b>&eacute;t&eacute;</b>"], ["Un <br>roman"])
    assert texts == {"all": ["livre été un roman"], "title": ["livre été"]}
    assert fields(["A"], None) == {"all": ["a"], "title": ["a"]}


def test_fit_predict_save_load_round_trip(tmp_path):
    texts, y = sample()
    member = CharTfidfMember.fit(texts, y, num_classes=27)
    probs = member.predict_proba(texts)
    assert probs.shape == (60, 27) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == y).all() and (probs[:, 1] == 0).all()  # unseen classes keep probability 0
    assert 0.1 <= member.temperature <= 100
    member.save(tmp_path / "chartfidf.npz")
    with zipfile.ZipFile(tmp_path / "chartfidf.npz") as z:  # plain arrays only: nothing pickled
        assert all(name.endswith(".npy") for name in z.namelist())
    again = CharTfidfMember.load(tmp_path / "chartfidf.npz")
    np.testing.assert_allclose(again.predict_proba(texts), probs, atol=1e-6)
    assert again.predict_proba({"all": [], "title": []}).shape == (0, 27)


def test_character_ngrams_generalise_to_unseen_word_forms():
    texts, y = sample()
    member = CharTfidfMember.fit(texts, y, num_classes=27)
    # Plural/singular and a typo never seen as whole words: character n-grams still recognise them.
    probs = member.predict_proba(fields(["chaussur rouge", "livres anciens"], ["", ""]))
    assert probs.argmax(1).tolist() == [0, 2]


def test_two_classes_give_two_column_probabilities():
    texts, y = sample()
    keep = np.isin(y, [2, 5])
    two = {k: [t for t, m in zip(v, keep, strict=True) if m] for k, v in texts.items()}
    member = CharTfidfMember.fit(two, y[keep], num_classes=27)
    probs = member.predict_proba(two)
    np.testing.assert_allclose(probs[:, [2, 5]].sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == y[keep]).all()
