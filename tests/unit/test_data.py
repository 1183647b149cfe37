import shutil
from pathlib import Path

import pandas as pd
import pytest

from rakuten_mm.data import DataOptions, image_name, load_labelled, load_unlabelled, make_splits
from rakuten_mm.errors import ConfigError, DataValidationError

pytestmark = pytest.mark.unit


@pytest.fixture
def data(synth_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_data, tmp_path / "data"))


def _x(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "X_train_update.csv", index_col=0)


def _image_of(root: Path, row: pd.Series) -> Path:
    return root / "images" / "image_train" / image_name(row["imageid"], row["productid"])


def test_loads_valid_data(synth_data):
    ds = load_labelled(synth_data)
    assert len(ds.frame) == ds.report.rows and not ds.report.problems
    assert set(ds.frame.columns) >= {"designation", "description", "productid", "imageid", "prdtypecode", "image"}
    assert all((synth_data / p).is_file() for p in ds.frame["image"])
    assert (ds.frame["description"] == "").any()  # empty descriptions are allowed and kept as ""
    test = load_unlabelled(synth_data)
    assert "prdtypecode" not in test.frame and len(test.frame) > 0


def test_missing_column_is_named(data):
    _x(data).drop(columns=["imageid"]).to_csv(data / "X_train_update.csv")
    with pytest.raises(DataValidationError, match=r"lacks required columns \['imageid'\]"):
        load_labelled(data)


def test_empty_file(data):
    (data / "Y_train_CVw08PX.csv").write_text("")
    with pytest.raises(DataValidationError, match="Y_train_CVw08PX.csv is empty"):
        load_labelled(data)


def test_missing_file_lists_names_looked_for(data):
    (data / "X_train_update.csv").unlink()
    with pytest.raises(DataValidationError, match="looked for X_train_update.csv, X_train.csv, X.csv"):
        load_labelled(data)


def test_misaligned_index(data):
    y = pd.read_csv(data / "Y_train_CVw08PX.csv", index_col=0)
    y.index = y.index + 1
    y.to_csv(data / "Y_train_CVw08PX.csv")
    with pytest.raises(DataValidationError, match="same index"):
        load_labelled(data)


def test_unknown_label_reported_per_row_and_dropped_on_request(data):
    y = pd.read_csv(data / "Y_train_CVw08PX.csv", index_col=0)
    bad = y.index[[3, 7]]
    y.loc[bad, "prdtypecode"] = 99
    y.to_csv(data / "Y_train_CVw08PX.csv")
    with pytest.raises(DataValidationError) as err:
        load_labelled(data)
    message = str(err.value)
    assert "2 bad rows" in message and f"row {bad[0]}: unknown prdtypecode: 99" in message
    assert "--on-bad-rows drop" in message
    ds = load_labelled(data, DataOptions(on_bad_rows="drop"))
    assert ds.report.dropped == sorted(bad.tolist(), key=str)
    assert not ds.frame.index.isin(bad).any()
    assert "dropped 2 rows" in ds.report.summary()


def test_duplicate_ids_and_empty_designation(data):
    x = _x(data)
    x.loc[x.index[5], "productid"] = x.loc[x.index[4], "productid"]
    x.loc[x.index[6], "designation"] = ""
    x.to_csv(data / "X_train_update.csv")
    with pytest.raises(DataValidationError) as err:
        load_labelled(data)
    assert "duplicate productid" in str(err.value) and "empty designation" in str(err.value)


def test_missing_image_fails_by_default_and_is_text_only_on_request(data):
    x = _x(data)
    _image_of(data, x.iloc[0]).unlink()
    with pytest.raises(DataValidationError, match=f"row {x.index[0]}: missing image"):
        load_labelled(data)
    ds = load_labelled(data, DataOptions(on_missing_image="text-only"))
    assert ds.report.text_only == [x.index[0]]
    assert ds.frame.loc[x.index[0], "image"] == ""
    assert "1 rows have no image" in ds.report.summary()


def test_unreadable_image_is_a_bad_row(data):
    x = _x(data)
    _image_of(data, x.iloc[1]).write_bytes(b"not a jpeg")
    with pytest.raises(DataValidationError, match="unreadable image"):
        load_labelled(data, DataOptions(on_missing_image="text-only"))


def test_options_name_allowed_values():
    with pytest.raises(ConfigError, match=r"\('fail', 'drop'\), got 'skip'"):
        DataOptions(on_bad_rows="skip")  # type: ignore[arg-type]


def test_flat_layout_of_the_real_sample(real_data):
    ds = load_labelled(real_data, DataOptions(on_missing_image="text-only"))
    assert len(ds.frame) == 769
    assert 0 < len(ds.report.text_only) < 769
    assert ds.frame["prdtypecode"].nunique() == 27


def test_splits_are_stratified_seeded_and_disjoint(synth_data):
    frame = load_labelled(synth_data).frame
    a, b = make_splits(frame, seed=1), make_splits(frame, seed=1)
    assert a == b
    assert make_splits(frame, seed=2) != a
    ids = [set(a[s]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(frame.index)
    # Every class keeps rows in training.
    assert frame.loc[a["train"], "prdtypecode"].nunique() == frame["prdtypecode"].nunique()


def test_split_needs_three_rows_per_class(synth_data):
    frame = load_labelled(synth_data).frame
    code = frame["prdtypecode"].iloc[0]
    thin = pd.concat([frame[frame["prdtypecode"] != code], frame[frame["prdtypecode"] == code].head(2)])
    with pytest.raises(DataValidationError, match="at least 3 rows"):
        make_splits(thin, seed=0)


def test_version_changes_with_content(data):
    before = load_labelled(data).version
    y = pd.read_csv(data / "Y_train_CVw08PX.csv", index_col=0)
    y.iloc[0, 0] = 2905 if y.iloc[0, 0] != 2905 else 10
    y.to_csv(data / "Y_train_CVw08PX.csv")
    assert load_labelled(data).version != before
