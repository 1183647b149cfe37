import numpy as np
import pandas as pd
import pytest
import torch

from rakuten_mm.text import (
    PAD,
    UNK,
    CleaningSettings,
    TextClassifier,
    TextModelConfig,
    Vocabulary,
    clean_text,
    text_present,
    tokenize,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("designation", "description", "expected"), [
    ("Chaise en Bois", "", "chaise en bois"),
    ("Chaise", None, "chaise"),
    ("Chaise", float("nan"), "chaise"),
    ("Pi&egrave;ce d&eacute;tach&eacute;e", "", "pièce détachée"),
    ("Livre", "<p>Un <b>beau</b> livre<br />de poche</p>", "livre un beau livre de poche"),
    ("Tapis", "Lavable &amp;eacute; &agrave; 30&deg;", "tapis lavable é à 30°"),  # double-escaped entity
    ("  Lampe \t\n LED  ", "&nbsp;&nbsp;", "lampe led"),
    ("", "<br>", ""),
    (b"Bytes \xc3\xa9t\xc3\xa9", "", "bytes été"),
])
def test_clean_text_table(designation, description, expected):
    assert clean_text(designation, description) == expected


def test_cleaning_settings_keep_case_and_html():
    settings = CleaningSettings(lowercase=False, strip_html=False)
    assert clean_text("A <b>B</b>", "", settings) == "A <b>B</b>"


def test_clean_text_on_real_rows(real_data):
    rows = pd.read_csv(real_data / "X.csv", index_col=0, dtype=str, keep_default_na=False)
    cleaned = [clean_text(a, b) for a, b in zip(rows["designation"], rows["description"], strict=True)]
    assert all(c for c in cleaned)
    joined = " ".join(cleaned)
    for leftover in ("&eacute;", "&amp;", "<br", "<p>", "&nbsp;", "</"):
        assert leftover not in joined
    assert joined == joined.lower()
    assert "é" in joined  # accents kept


def test_tokenize_keeps_accents_and_digits():
    assert tokenize("pièce n° 12-b, été") == ["pièce", "n", "12", "b", "été"]


def test_vocabulary_ids_are_deterministic_and_reserved():
    vocab = Vocabulary.build(["b a a", "c a b"], min_freq=1)
    assert vocab.itos[:2] == ["<pad>", "<unk>"]
    assert vocab.to_json() == ["a", "b", "c"]  # by frequency, then alphabetically
    assert vocab.encode("a zzz c", max_tokens=10) == [2, UNK, 4]
    assert Vocabulary.from_json(vocab.to_json()).stoi == vocab.stoi


def test_vocabulary_min_freq_and_max_size():
    vocab = Vocabulary.build(["a a a b b c"], min_freq=2, max_size=1)
    assert vocab.to_json() == ["a"]


def test_encode_batch_pads_and_truncates():
    vocab = Vocabulary.build(["a b c d"])
    ids = vocab.encode_batch(["a b c d", "b", ""], max_tokens=3)
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    assert ids[1].tolist() == [vocab.stoi["b"], PAD, PAD]
    assert ids[2].tolist() == [PAD] * 3
    assert text_present(ids).tolist() == [True, True, False]
    assert vocab.encode_batch([], max_tokens=3).shape == (0, 1)


def test_lstm_forward_handles_variable_and_empty_rows():
    torch.manual_seed(0)
    model = TextClassifier(TextModelConfig(vocab_size=10, num_classes=27, embed_dim=8, hidden_dim=8)).eval()
    ids = torch.tensor([[2, 3, 4], [5, 0, 0], [0, 0, 0]])
    out = model(ids)
    assert out.shape == (3, 27)
    # Padding does not change a row's output (packing ignores it).
    alone = model(torch.tensor([[5]]))
    torch.testing.assert_close(out[1], alone[0])
