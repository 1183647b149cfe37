import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from rakuten_mm.data import DataOptions, image_name, load_labelled, load_unlabelled, make_splits, validate
from rakuten_mm.errors import ConfigError, DataValidationError, InputError
from rakuten_mm.image import ImagePreset, load_image_file

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


# ---- validate refuses what training refuses: the same decode function and limits ------------------------------------

def _png(width: int, height: int) -> bytes:
    """A large PNG that is small on disk and in memory (1 bit per pixel), as a decompression bomb would be."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG")
    return out.getvalue()


def _encoded(fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(out, fmt, **kwargs)
    return out.getvalue()


def _mpo() -> bytes:
    out = io.BytesIO()
    first, second = Image.new("RGB", (40, 40), (1, 2, 3)), Image.new("RGB", (40, 40), (4, 5, 6))
    first.save(out, "MPO", save_all=True, append_images=[second])
    return out.getvalue()


BAD_IMAGES = {
    "truncated JPEG": lambda good: good[: len(good) // 2],
    "TIFF": lambda good: _encoded("TIFF"),
    "7000x7000 PNG": lambda good: _png(7000, 7000),
    "12000x12000 PNG": lambda good: _png(12000, 12000),
    "20000x20000 PNG": lambda good: _png(20000, 20000),
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_validate_reports_each_image_training_refuses_per_row_with_the_file(data, kind):
    x = _x(data)
    path = _image_of(data, x.iloc[3])
    path.write_bytes(BAD_IMAGES[kind](path.read_bytes()))
    with pytest.raises(InputError):  # training's own image loader refuses it...
        load_image_file(path, ImagePreset(32))
    with pytest.raises(DataValidationError) as err:  # ...and so does validation, naming the row and the file
        validate(data)
    rel = path.relative_to(data).as_posix()
    assert f"row {x.index[3]}: unreadable image: {rel}: " in str(err.value)
    assert "1 bad rows (unreadable image: 1)" in str(err.value)
    ds = load_labelled(data, DataOptions(on_bad_rows="drop"))
    assert ds.report.dropped == [x.index[3]]


@pytest.mark.parametrize("kind", ["MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_validate_accepts_exactly_what_training_decodes(data, kind):
    x = _x(data)
    path = _image_of(data, x.iloc[2])
    path.write_bytes(_mpo() if kind == "MPO" else _encoded(kind))
    try:
        load_image_file(path, ImagePreset(32))
    except InputError:
        with pytest.raises(DataValidationError, match=f"row {x.index[2]}: unreadable image"):
            load_labelled(data)
    else:
        assert load_labelled(data).frame.loc[x.index[2], "image"] == path.relative_to(data).as_posix()


def test_validate_says_which_rows_are_labelled_and_which_are_test(synth_data):
    lines = validate(synth_data).splitlines()
    assert lines[0] == f"labelled (train) rows: {synth_data}: 160 rows"
    assert lines[1] == f"test rows (unlabelled): {synth_data}: 40 rows"


def test_parallel_and_serial_checks_agree(data):
    x = _x(data)
    for i, kind in enumerate(BAD_IMAGES):
        path = _image_of(data, x.iloc[10 + i])
        path.write_bytes(BAD_IMAGES[kind](path.read_bytes()))
    _image_of(data, x.iloc[20]).unlink()
    options = DataOptions(on_bad_rows="drop", on_missing_image="text-only")
    serial, parallel = load_labelled(data, options, workers=1), load_labelled(data, options, workers=8)
    assert serial.report.problems == parallel.report.problems and len(serial.report.problems) == len(BAD_IMAGES)
    assert serial.report.text_only == parallel.report.text_only == [x.index[20]]
    pd.testing.assert_frame_equal(serial.frame, parallel.frame)


def test_validate_needs_three_rows_per_class_as_the_split_does(data):
    x, y = _x(data), pd.read_csv(data / "Y_train_CVw08PX.csv", index_col=0)
    code = y["prdtypecode"].iloc[0]
    keep = ~y["prdtypecode"].eq(code) | y.index.isin(y.index[y["prdtypecode"].eq(code)][:2])
    x[keep].to_csv(data / "X_train_update.csv")
    y[keep].to_csv(data / "Y_train_CVw08PX.csv")
    load_labelled(data)  # the rows are fine...
    with pytest.raises(DataValidationError, match="at least 3 rows"):
        validate(data)  # ...but training's split would refuse them, so validation does


# ---- ids and the index: typed here, per row, never a pandas crash ---------------------------------------------------

@pytest.mark.parametrize(("column", "value", "reason"), [
    ("imageid", "abc", "bad imageid: 'abc' is not a non-negative integer"),
    ("imageid", "1e3", "bad imageid: '1e3' is not a non-negative integer"),
    ("productid", "1e20", "bad productid: '1e20' is not a non-negative integer"),
    ("productid", "123456789012345678901", "bad productid"),
    ("productid", "-4", "bad productid"),
    ("imageid", "", "bad imageid: '' is not a non-negative integer"),
])
@pytest.mark.parametrize("options", [DataOptions(), DataOptions(on_bad_rows="drop"),
                                     DataOptions(on_missing_image="text-only"),
                                     DataOptions(on_bad_rows="drop", on_missing_image="text-only")])
def test_bad_ids_are_bad_rows_under_every_option(data, column, value, reason, options):
    x = _x(data).astype({column: str})
    x.loc[x.index[4], column] = value
    x.to_csv(data / "X_train_update.csv")
    if options.on_bad_rows == "fail":
        with pytest.raises(DataValidationError, match=f"row {x.index[4]}: {reason}"):
            load_labelled(data, options)
    else:
        ds = load_labelled(data, options)
        assert ds.report.dropped == [x.index[4]] and ds.frame["imageid"].dtype == "int64"


def test_ids_written_as_floats_by_a_resave_are_integers(data):
    x = _x(data)
    x["imageid"] = x["imageid"].astype(float)  # what pandas writes after a NaN once passed through the column
    x.to_csv(data / "X_train_update.csv")
    assert load_labelled(data).frame["imageid"].tolist() == _x(data)["imageid"].astype(int).tolist()


@pytest.mark.parametrize("index", ["abc", "", "1.5"])
def test_bad_index_values_are_bad_rows(data, index):
    for name in ("X_train_update.csv", "Y_train_CVw08PX.csv"):
        lines = (data / name).read_text().splitlines()
        lines[3] = index + lines[3][lines[3].index(","):]
        (data / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError, match=f"row {index}: bad index: '{index}' is not an integer"):
        load_labelled(data)
    ds = load_labelled(data, DataOptions(on_bad_rows="drop"))
    assert ds.report.dropped == [index] and ds.frame.index.dtype == "int64"


def test_short_rows_and_a_latin1_file_are_clear_errors(data):
    (data / "X_train_update.csv").write_bytes(",designation,description,productid,imageid\n0,caf\xe9\n".encode(
        "latin-1"))
    with pytest.raises(DataValidationError, match="not a readable UTF-8 CSV"):
        load_labelled(data)
    (data / "X_test_update.csv").write_text(",designation,description,productid,imageid\n0,chaise\n")
    with pytest.raises(DataValidationError, match="bad productid: '' is not"):
        load_unlabelled(data)


# ---- symlinks: followed inside the data directory only ---------------------------------------------------------------

def test_image_symlink_out_of_the_data_directory_is_a_bad_row(data, tmp_path):
    x = _x(data)
    path = _image_of(data, x.iloc[5])
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(path.read_bytes())  # a perfectly good image, but not the dataset's
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(DataValidationError, match=f"row {x.index[5]}: image outside the data directory: "
                                                  f".*{path.name} is a symlink to {secret}"):
        load_labelled(data, DataOptions(on_missing_image="text-only"))


def test_symlinks_inside_the_data_directory_and_a_linked_root_are_followed(data, tmp_path):
    x = _x(data)
    path = _image_of(data, x.iloc[5])
    (data / "spare.jpg").write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(data / "spare.jpg")
    link = tmp_path / "linked-data"
    link.symlink_to(data, target_is_directory=True)
    ds = load_labelled(link)
    assert ds.frame.loc[x.index[5], "image"].endswith(path.name)


def test_image_directory_linked_out_of_the_data_directory_is_refused(data, tmp_path):
    shutil.move(data / "images", tmp_path / "elsewhere")
    (data / "images").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DataValidationError, match="images/image_train in .* is a symlink to .*elsewhere.*outside the "
                                                  "data directory"):
        load_labelled(data)


def test_csv_linked_out_of_the_data_directory_is_refused(data, tmp_path):
    shutil.move(data / "Y_train_CVw08PX.csv", tmp_path / "y.csv")
    (data / "Y_train_CVw08PX.csv").symlink_to(tmp_path / "y.csv")
    with pytest.raises(DataValidationError, match="Y_train_CVw08PX.csv in .* is a symlink to .*y.csv, outside"):
        load_labelled(data)


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


def test_a_bad_index_never_makes_a_later_row_a_duplicate(data):
    for name in ("X_train_update.csv", "Y_train_CVw08PX.csv"):
        lines = (data / name).read_text().splitlines()
        first = lines[1][: lines[1].index(",")]
        lines[1] = "abc" + lines[1][len(first):]  # the first row's index is bad...
        lines[4] = first + lines[4][lines[4].index(","):]  # ...and a later row takes its (valid) value
        (data / name).write_text("\n".join(lines) + "\n")
    ds = load_labelled(data, DataOptions(on_bad_rows="drop"))
    assert ds.report.dropped == ["abc"] and [why for _, why in ds.report.problems] == [
        "bad index: 'abc' is not an integer"]
