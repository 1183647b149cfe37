"""Read, validate and split the Rakuten challenge data (local directory or s3:// prefix).

Every problem is reported per row (count + first rows with the reason, the image file named). Nothing is skipped
silently: bad rows fail the load unless ``on_bad_rows="drop"`` (then they are listed), and rows whose image is
missing fail unless ``on_missing_image="text-only"`` (then they are kept for the text member and counted).

Validation is training's own: ``rakuten data validate`` (:func:`validate`) and training's preprocess step call the
same loaders, and every image is decoded by :func:`rakuten_mm.image.decode_image` with its default limits (the ones
training uses), on a thread pool — so a truncated JPEG, a TIFF or an image over the pixel limit is a bad row in
both, never a failure halfway through training. Cells are read as strings and typed here: ids must be plain
non-negative integers (``1e3``, ``abc`` or a 20-digit number are bad rows, not crashes), the index an integer.

Symlinks: the data directory itself may be a link (resolved first); inside it, a CSV, an image directory or an
image may be a link only when it resolves inside the data directory. A link out of it is refused (a CSV or image
directory: the load fails; an image: a bad row naming the file and its target), so a dataset from elsewhere cannot
make validation or training read files it does not contain. Copy or bind-mount images into the directory instead.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from rakuten_mm import storage
from rakuten_mm.errors import ConfigError, DataValidationError, InputError, StorageError
from rakuten_mm.labels import KNOWN_CODES

X_COLUMNS = ("designation", "description", "productid", "imageid")
# Official names first; the short names are those of the real-data sample (X.csv, Y.csv, images/).
X_TRAIN_NAMES = ("X_train_update.csv", "X_train.csv", "X.csv")
Y_TRAIN_NAMES = ("Y_train_CVw08PX.csv", "Y_train.csv", "Y.csv")
X_TEST_NAMES = ("X_test_update.csv", "X_test.csv")
IMAGE_TRAIN_DIRS = ("images/image_train", "image_train", "images")
IMAGE_TEST_DIRS = ("images/image_test", "image_test", "images_test")
BAD_ROWS = ("fail", "drop")
MISSING_IMAGE = ("fail", "text-only")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataOptions:
    """What to do with bad rows and rows without an image."""

    on_bad_rows: Literal["fail", "drop"] = "fail"
    on_missing_image: Literal["fail", "text-only"] = "fail"

    def __post_init__(self) -> None:
        if self.on_bad_rows not in BAD_ROWS:
            raise ConfigError(f"on_bad_rows must be one of {BAD_ROWS}, got {self.on_bad_rows!r}")
        if self.on_missing_image not in MISSING_IMAGE:
            raise ConfigError(f"on_missing_image must be one of {MISSING_IMAGE}, got {self.on_missing_image!r}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--on-bad-rows", choices=BAD_ROWS, default="fail",
                            help="fail on rows that do not validate, or drop them and list them (default: %(default)s)")
        parser.add_argument("--on-missing-image", choices=MISSING_IMAGE, default="fail",
                            help="fail on rows without an image, or keep them for the text members only "
                                 "(default: %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataOptions:
        return cls(on_bad_rows=args.on_bad_rows, on_missing_image=args.on_missing_image)

    @classmethod
    def pipeline_parameters(cls) -> list[tuple[str, type, Any]]:
        """``(name, type, default)`` of the pipeline parameters these options travel as."""
        return [(f.name, str, f.default) for f in dataclasses.fields(cls)]

    def pipeline_arguments(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def image_name(imageid: int, productid: int) -> str:
    return f"image_{int(imageid)}_product_{int(productid)}.jpg"


@dataclass
class ValidationReport:
    """Per-row findings of one load."""

    source: str
    rows: int = 0
    problems: list[tuple[object, str]] = field(default_factory=list)  # rows that fail (or were dropped)
    text_only: list[object] = field(default_factory=list)  # rows kept without an image
    dropped: list[object] = field(default_factory=list)

    def summary(self, first: int = 5) -> str:
        lines = [f"{self.source}: {self.rows} rows"]
        if self.problems:
            reasons = Counter(reason.split(":")[0] for _, reason in self.problems)
            rows = sorted({str(r) for r, _ in self.problems})
            lines.append(f"{len(rows)} bad rows ({', '.join(f'{k}: {v}' for k, v in reasons.items())}); first: "
                         + "; ".join(f"row {r}: {why}" for r, why in self.problems[:first]))
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} rows (--on-bad-rows drop): "
                         + ", ".join(map(str, self.dropped[:20])) + (" ..." if len(self.dropped) > 20 else ""))
        if self.text_only:
            lines.append(f"{len(self.text_only)} rows have no image and are kept for the text model only "
                         "(--on-missing-image text-only)")
        return "\n".join(lines)


@dataclass
class Dataset:
    """Validated rows (original index kept): raw text, label code and image path relative to ``root``."""

    root: Path
    frame: pd.DataFrame  # designation, description, productid, imageid, [prdtypecode], image ('' when absent)
    report: ValidationReport
    version: str  # content hash of the CSVs + image list


def _find(root: Path, names: tuple[str, ...], what: str, is_dir: bool = False) -> Path:
    for name in names:
        path = root / name
        if (path.is_dir() if is_dir else path.is_file()):
            _inside(root, path)
            return path
    raise DataValidationError(f"no {what} in {root}: looked for {', '.join(names)}")


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved; a link out of the data directory is refused (see the module doc's symlink policy)."""
    try:
        return storage.inside(root, path)
    except StorageError:
        raise DataValidationError(
            f"{path.relative_to(root)} in {root} is a symlink to {os.path.realpath(path)}, outside the data "
            "directory; links out of it are refused: copy or bind-mount the files into it") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Every cell as a string (``""`` when empty), the first column as the row index; typed later, per row."""
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path.name} is empty; expected a CSV with columns {', '.join(required)}")
    try:
        with warnings.catch_warnings():
            # A row longer than the header would silently lose cells (pandas only warns): make it an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, index_col=False, dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, TypeError, OverflowError, csv.Error, OSError, pd.errors.ParserWarning) as exc:
        # ValueError covers pandas' ParserError / EmptyDataError and UnicodeDecodeError.
        reason = " ".join(str(exc).split())[:200]
        raise DataValidationError(f"{path.name} is not a readable UTF-8 CSV: {reason}") from None
    if len(frame.columns) > 0:  # the first column is the row index (unnamed in the challenge files)
        frame = frame.set_index(frame.columns[0]).rename_axis(None)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{path.name} lacks required columns {missing}; expected an index column then "
                                  f"{', '.join(required)}, got {', '.join(map(str, frame.columns))}"[:500])
    if frame.empty:
        raise DataValidationError(f"{path.name} has a header but no rows")
    return frame.fillna("")  # short rows: pandas fills the missing cells with NaN even with dtype=str


_UNSIGNED = r"^\s*\+?(\d{1,18})(?:\.0*)?\s*$"  # 18 digits fit int64; "12.0" is 12 (a CSV re-saved from floats)
_SIGNED = r"^\s*([+-]?\d{1,18})(?:\.0*)?\s*$"


def _parse_ints(values: Any, signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Strings → ``(int64 values, ok mask)``; anything but a plain integer is not ok (``1e3``, ``abc``, ``1e20``)."""
    digits = pd.Series(np.asarray(values, dtype=object)).astype(str).str.extract(
        _SIGNED if signed else _UNSIGNED, expand=False)
    ok = digits.notna().to_numpy()
    out = np.zeros(len(ok), dtype=np.int64)
    if ok.any():
        out[ok] = digits[ok].astype(np.int64).to_numpy()
    return out, ok


def _duplicated(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Rows whose (valid) value already appeared in an earlier valid row; invalid rows are never duplicates."""
    out = np.zeros(len(values), dtype=bool)
    out[ok] = pd.Series(values[ok]).duplicated(keep="first").to_numpy()
    return out


def _check_image(root: Path, path: Path) -> tuple[str, str] | None:
    """``None`` for an image training can read, else ``(kind, detail)``: the decode is training's own."""
    rel = path.relative_to(root).as_posix()
    if path.is_symlink():
        try:
            storage.inside(root, path)
        except StorageError:
            return "image outside the data directory", f"{rel} is a symlink to {os.path.realpath(path)}"
    if not path.exists():
        return "missing image", rel
    if not storage.is_regular_file(path):
        return "unreadable image", f"{rel} is not a regular file"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "unreadable image", f"{rel}: {exc.strerror or exc}"
    from rakuten_mm.image import decode_image  # torch-heavy module: imported when images are checked

    try:
        decode_image(data).close()
    except InputError as exc:
        return "unreadable image", f"{rel}: {exc}"
    return None


def check_images(root: Path, paths: list[Path], workers: int | None = None) -> list[tuple[str, str] | None]:
    """:func:`_check_image` for every path, on a thread pool (Pillow decodes without the GIL)."""
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    # decode_image turns Pillow's DecompressionBombWarning into an error inside warnings.catch_warnings(), which is
    # process-wide: set the same filter around the pool so that the threads' enter/exit interleavings can never
    # let the warning through to stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if workers <= 1 or len(paths) <= 1:
            return [_check_image(root, p) for p in paths]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-image") as pool:
            return list(pool.map(lambda p: _check_image(root, p), paths, chunksize=64))


def _validate(frame: pd.DataFrame, root: Path, image_dir: Path | None, options: DataOptions,
              report: ValidationReport, allowed_codes: tuple[int, ...] | None,
              workers: int | None = None) -> pd.DataFrame:
    """Check every row (strings as read) and return the kept rows, typed, indexed by the integer row id."""
    n = len(frame)
    index, index_ok = _parse_ints(frame.index, signed=True)
    keys = [int(v) if ok else raw for v, ok, raw in zip(index, index_ok, frame.index, strict=True)]
    reasons: list[list[str]] = [[] for _ in range(n)]

    def flag(mask: np.ndarray, reason: Any) -> None:
        for i in np.flatnonzero(mask):
            reasons[i].append(reason(i))

    flag(~index_ok, lambda i: f"bad index: {frame.index[i]!r} is not an integer")
    flag(_duplicated(index, index_ok), lambda i: "duplicate index")
    ids: dict[str, np.ndarray] = {}
    for column in ("productid", "imageid"):
        raw = frame[column].to_numpy(dtype=object)
        ids[column], ok = _parse_ints(raw)
        flag(~ok, lambda i, raw=raw, column=column: f"bad {column}: {raw[i]!r} is not a non-negative integer")
        flag(_duplicated(ids[column], ok), lambda i, raw=raw, column=column: f"duplicate {column}: {raw[i]}")
    flag((frame["designation"].str.strip() == "").to_numpy(), lambda i: "empty designation")
    if allowed_codes is not None:
        raw = frame["prdtypecode"].to_numpy(dtype=object)
        codes, ok = _parse_ints(raw)
        ids["prdtypecode"] = codes
        flag(~(ok & np.isin(codes, allowed_codes)), lambda i: f"unknown prdtypecode: {raw[i]} is not one of the "
                                                             f"{len(allowed_codes)} known codes")
    # Images: only for rows that are fine so far (a bad row is reported or dropped anyway).
    images = [""] * n
    todo = [i for i in range(n) if not reasons[i]]
    missing: list[int] = []
    names = [image_name(ids["imageid"][i], ids["productid"][i]) for i in todo]
    if image_dir is not None:
        paths = [image_dir / name for name in names]
        results = check_images(root, paths, workers)
    else:
        paths, results = [], [("missing image", f"{name} (no image directory in {root})") for name in names]
    for j, i in enumerate(todo):
        found = results[j]
        if found is None:
            images[i] = paths[j].relative_to(root).as_posix()
        elif found[0] == "missing image" and options.on_missing_image == "text-only":
            missing.append(i)
        else:
            reasons[i].append(f"{found[0]}: {found[1]}")
    report.problems.extend((keys[i], why) for i in range(n) for why in reasons[i])
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    if bad.any():
        if options.on_bad_rows == "fail":
            raise DataValidationError(report.summary() + "\nfix the rows or pass --on-bad-rows drop", report)
        report.dropped = sorted({keys[i] for i in np.flatnonzero(bad)}, key=str)
    keep = ~bad
    report.text_only = [keys[i] for i in missing]
    if not keep.any():
        raise DataValidationError(report.summary() + "\nno valid rows left", report)
    typed = {"productid": ids["productid"], "imageid": ids["imageid"]}
    if allowed_codes is not None:
        typed["prdtypecode"] = ids["prdtypecode"]
    out = frame.assign(**{k: v for k, v in typed.items()}, image=images)
    out = out.iloc[np.flatnonzero(keep)]
    out.index = pd.Index(index[keep], dtype=np.int64)
    return out


def _version(csvs: list[Path], frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for path in csvs:
        digest.update(path.read_bytes())
    for image in frame["image"]:
        digest.update(image.encode() + b"\n")
    return digest.hexdigest()[:16]


def load_labelled(root: Path, options: DataOptions = DataOptions(),
                  allowed_codes: tuple[int, ...] = KNOWN_CODES, workers: int | None = None) -> Dataset:
    """Train CSVs + train images → validated :class:`Dataset` with a ``prdtypecode`` column."""
    root = Path(root)
    x_path = _find(root, X_TRAIN_NAMES, "training features CSV")
    y_path = _find(root, Y_TRAIN_NAMES, "training labels CSV")
    x = _read_csv(x_path, X_COLUMNS)
    y = _read_csv(y_path, ("prdtypecode",))
    if len(x) != len(y) or not x.index.equals(y.index):
        only_x = x.index.difference(y.index)[:5].tolist()
        only_y = y.index.difference(x.index)[:5].tolist()
        raise DataValidationError(
            f"{x_path.name} and {y_path.name} must have the same index in the same order; got {len(x)} and "
            f"{len(y)} rows (only in X: {only_x}, only in Y: {only_y})")
    frame = x[list(X_COLUMNS)].assign(prdtypecode=y["prdtypecode"].to_numpy())
    image_dir = _optional_dir(root, IMAGE_TRAIN_DIRS)
    report = ValidationReport(source=str(root), rows=len(frame))
    frame = _validate(frame, root, image_dir, options, report, allowed_codes, workers)
    return Dataset(root, frame, report, _version([x_path, y_path], frame))


def load_unlabelled(root: Path, options: DataOptions = DataOptions(), workers: int | None = None) -> Dataset:
    """Test CSV + test images (the batch-prediction input) → validated :class:`Dataset` without labels."""
    root = Path(root)
    x_path = _find(root, X_TEST_NAMES, "test features CSV")
    frame = _read_csv(x_path, X_COLUMNS)[list(X_COLUMNS)]
    report = ValidationReport(source=str(root), rows=len(frame))
    frame = _validate(frame, root, _optional_dir(root, IMAGE_TEST_DIRS), options, report, None, workers)
    return Dataset(root, frame, report, _version([x_path], frame))


def validate(root: Path, options: DataOptions = DataOptions(), workers: int | None = None) -> str:
    """What ``rakuten data validate`` runs: every check training's preprocess step makes, on the same functions.

    The labelled rows (:func:`load_labelled`: CSVs, ids, labels, every image decoded by
    :func:`rakuten_mm.image.decode_image` with training's limits), the split's own requirement (3 rows per class),
    and the test rows when ``X_test_update.csv`` is there. Returns the report; raises what training would raise.
    """
    root = Path(root)
    labelled = load_labelled(root, options, workers=workers)
    make_splits(labelled.frame, seed=0)
    lines = [labelled.report.summary()]
    if any((root / n).is_file() for n in X_TEST_NAMES):
        lines.append(load_unlabelled(root, options, workers=workers).report.summary())
    return "\n".join(lines)


def _optional_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    path = next((root / n for n in names if (root / n).is_dir()), None)
    if path is not None:
        _inside(root, path)
    return path


def make_splits(frame: pd.DataFrame, seed: int, val_fraction: float = 0.15,
                test_fraction: float = 0.15) -> dict[str, list[int]]:
    """Stratified, seeded train/val/test split of ``frame``'s index (row ids, JSON-ready)."""
    if not (0 < val_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise ConfigError(f"val and test fractions must lie in (0, 0.5), got {val_fraction}, {test_fraction}")
    counts = frame["prdtypecode"].value_counts()
    thin = counts[counts < 3]
    if not thin.empty:
        raise DataValidationError(f"each prdtypecode needs at least 3 rows for a stratified train/val/test split; "
                                  f"got {dict(thin.items())}")
    ids = frame.index.to_numpy()
    labels = frame["prdtypecode"].to_numpy()
    n_classes = len(counts)

    def cut(ids: np.ndarray, labels: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
        # Stratify when every class can appear on both sides; tiny sets fall back to a plain seeded split.
        n_take = int(np.ceil(size * len(ids)))
        ok = n_take >= n_classes and len(ids) - n_take >= n_classes and np.bincount(
            pd.factorize(labels)[0]).min() >= 2
        try:
            a, b = train_test_split(ids, test_size=size, random_state=seed, stratify=labels if ok else None)
        except ValueError as exc:  # sklearn's refusals of tiny or lopsided sets
            raise DataValidationError(f"cannot split {len(ids)} rows into train/val/test: {exc}") from None
        return a, b

    rest, test = cut(ids, labels, test_fraction)
    rest_labels = frame.loc[rest, "prdtypecode"].to_numpy()
    train, val = cut(rest, rest_labels, val_fraction / (1 - test_fraction))
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}
