"""The synthetic generator writes the real challenge layout, deterministically, with learnable but imperfect signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rakuten_mm.errors import ConfigError
from rakuten_mm.labels import KNOWN_CODES
from rakuten_mm.synth import SynthSummary, generate

pytestmark = pytest.mark.unit

X_COLUMNS = ["designation", "description", "productid", "imageid"]
IMAGE_NAME = re.compile(r"^image_(\d+)_product_(\d+)\.jpg$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate(tmp_path_factory.mktemp("synth") / "data", products=600, seed=0, image_size=48)


def _read(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (pd.read_csv(root / "X_train_update.csv", index_col=0),
            pd.read_csv(root / "Y_train_CVw08PX.csv", index_col=0),
            pd.read_csv(root / "X_test_update.csv", index_col=0))


def _image_path(root: Path, split: str, row: pd.Series) -> Path:
    return root / "images" / f"image_{split}" / f"image_{row.imageid}_product_{row.productid}.jpg"


def test_layout_and_summary(dataset: SynthSummary) -> None:
    root = dataset.root
    assert sorted(p.name for p in root.iterdir()) == ["X_test_update.csv", "X_train_update.csv",
                                                      "Y_train_CVw08PX.csv", "images"]
    assert sorted(p.name for p in (root / "images").iterdir()) == ["image_test", "image_train"]
    assert dataset.train_rows + dataset.test_rows == 600
    assert dataset.test_rows == 120
    assert sum(dataset.class_counts.values()) == dataset.train_rows
    assert not [p for p in root.parent.iterdir() if p.name != root.name]  # no temp dir left beside it


def test_csv_format_matches_the_challenge(dataset: SynthSummary) -> None:
    x_train, y_train, x_test = _read(dataset.root)
    assert list(x_train.columns) == X_COLUMNS and list(x_test.columns) == X_COLUMNS
    assert list(y_train.columns) == ["prdtypecode"]
    assert list(x_train.index) == list(range(dataset.train_rows))
    assert list(y_train.index) == list(x_train.index)
    assert list(x_test.index) == list(range(dataset.train_rows, dataset.train_rows + dataset.test_rows))
    # The header starts with an empty (unnamed) index column, as in the real files.
    assert (dataset.root / "X_train_update.csv").read_text(encoding="utf-8").startswith(
        ",designation,description,productid,imageid\n")
    assert (dataset.root / "Y_train_CVw08PX.csv").read_text(encoding="utf-8").startswith(",prdtypecode\n0,")
    both = pd.concat([x_train, x_test])
    for column, low, high in (("productid", 1e8, 4.3e9), ("imageid", 9e8, 1.4e9)):
        assert both[column].dtype == np.int64
        assert both[column].is_unique
        assert both[column].between(low, high).all()


def test_images_exist_with_the_real_naming_and_size(dataset: SynthSummary) -> None:
    x_train, _, x_test = _read(dataset.root)
    for split, frame in (("train", x_train), ("test", x_test)):
        names = sorted(p.name for p in (dataset.root / "images" / f"image_{split}").iterdir())
        expected = sorted(_image_path(dataset.root, split, row).name for row in frame.itertuples())
        assert names == expected
        assert all(IMAGE_NAME.match(name) for name in names)
    for row in list(x_train.itertuples())[:20]:
        with Image.open(_image_path(dataset.root, "train", row)) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (48, 48)


def test_all_classes_present_and_known(dataset: SynthSummary) -> None:
    _, y_train, _ = _read(dataset.root)
    counts = y_train["prdtypecode"].value_counts().to_dict()
    assert set(counts) == set(KNOWN_CODES)
    assert counts == dataset.class_counts
    assert min(counts.values()) >= 3


def test_classes_are_imbalanced(tmp_path: Path) -> None:
    summary = generate(tmp_path / "big", products=1200, seed=1, image_size=32)
    counts = summary.class_counts
    assert set(counts) == set(KNOWN_CODES)
    assert max(counts.values()) / min(counts.values()) >= 4


def test_descriptions_are_often_empty_and_html(dataset: SynthSummary) -> None:
    x_train, _, x_test = _read(dataset.root)
    description = pd.concat([x_train, x_test])["description"]
    assert 0.25 <= description.isna().mean() <= 0.45
    text = description.dropna()
    for marker in ("&eacute;", "&agrave;", "&amp;", "&nbsp;", "<br />", "<p>", "<b>"):
        assert text.str.contains(marker, regex=False).any(), marker
    assert text.str.contains("é", regex=False).any()  # some raw accents too, not only entities
    assert pd.concat([x_train, x_test])["designation"].notna().all()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", products=120, seed=7, image_size=32)
    b = generate(tmp_path / "b", products=120, seed=7, image_size=32)
    c = generate(tmp_path / "c", products=120, seed=8, image_size=32)
    for name in ("X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    assert (a.root / "X_train_update.csv").read_bytes() != (c.root / "X_train_update.csv").read_bytes()
    images_a = sorted((a.root / "images" / "image_train").iterdir())
    images_b = sorted((b.root / "images" / "image_train").iterdir())
    assert [p.name for p in images_a] == [p.name for p in images_b]
    for pa, pb in list(zip(images_a, images_b, strict=True))[:15]:
        assert pa.read_bytes() == pb.read_bytes()
    assert a.class_counts == b.class_counts


@pytest.mark.parametrize(("kwargs", "allowed", "given"), [
    ({"products": 50}, "products must be an integer between 101 and", "got 50"),
    ({"products": 10_000_000}, "products must be an integer between 101 and", "got 10000000"),
    ({"products": 100}, "products must be an integer between 101 and", "got 100"),  # 80 train rows < 27 x 3
    ({"image_size": 16}, "image_size must be an integer between 32 and 1024", "got 16"),
    ({"image_size": 2048}, "image_size must be an integer between 32 and 1024", "got 2048"),
    ({"test_fraction": 0.0}, "test_fraction must be > 0 and < 0.9", "got 0.0"),
    ({"test_fraction": 0.95}, "test_fraction must be > 0 and < 0.9", "got 0.95"),
    ({"seed": -1}, "seed must be a non-negative integer", "got -1"),
])
def test_bad_arguments_name_the_allowed_values(tmp_path: Path, kwargs: dict, allowed: str, given: str) -> None:
    with pytest.raises(ConfigError) as info:
        generate(tmp_path / "out", **kwargs)
    assert allowed in str(info.value) and given in str(info.value)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="must not exist or be an empty directory"):
        generate(out, products=101, image_size=32)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial temp dir left behind


def test_an_empty_output_dir_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    summary = generate(out, products=101, image_size=32)
    assert (out / "X_train_update.csv").is_file()
    assert summary.root == out


def test_image_content_depends_on_the_class(dataset: SynthSummary) -> None:
    x_train, y_train, _ = _read(dataset.root)
    means: dict[int, list[np.ndarray]] = {}
    for row, code in zip(x_train.itertuples(), y_train["prdtypecode"], strict=True):
        with Image.open(_image_path(dataset.root, "train", row)) as img:
            means.setdefault(int(code), []).append(np.asarray(img, dtype=float).reshape(-1, 3).mean(axis=0))
    class_means = np.stack([np.mean(v, axis=0) for v in means.values()])
    spread = np.abs(class_means[:, None, :] - class_means[None, :, :]).max()
    assert spread > 60  # some pair of classes differs by > 60/255 in a mean channel
    within = max(np.std(np.stack(v), axis=0).max() for v in means.values() if len(v) >= 5)
    assert within < spread
