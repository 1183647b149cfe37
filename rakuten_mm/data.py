"""Read, validate and split the Rakuten challenge data (local directory or s3:// prefix).

Every problem is reported per row (count + first rows with the reason). Nothing is skipped silently: bad rows
fail the load unless ``on_bad_rows="drop"`` (then they are listed), and rows whose image is missing fail unless
``on_missing_image="text-only"`` (then they are kept for the text member and counted).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from rakuten_mm.errors import ConfigError, DataValidationError
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
            return path
    raise DataValidationError(f"no {what} in {root}: looked for {', '.join(names)}")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path.name} is empty; expected a CSV with columns {', '.join(required)}")
    try:
        frame = pd.read_csv(path, index_col=0, dtype={"designation": str, "description": str},
                            keep_default_na=False, na_values={"productid": [""], "imageid": [""],
                                                              "prdtypecode": [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path.name} is not a readable CSV: {exc}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{path.name} lacks required columns {missing}; "
                                  f"expected {', '.join(required)}, got {', '.join(map(str, frame.columns))}")
    return frame


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return "missing image"
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"unreadable image: {exc}"
    return None


def _int_column(frame: pd.DataFrame, column: str, problems: list[tuple[object, str]]) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    for idx in frame.index[values.isna() | (values % 1 != 0)]:
        problems.append((idx, f"bad {column}: '{frame.at[idx, column]}' is not an integer"))
    return values


def _validate(frame: pd.DataFrame, root: Path, image_dir: Path | None, options: DataOptions,
              report: ValidationReport, allowed_codes: tuple[int, ...] | None) -> pd.DataFrame:
    problems = report.problems
    if frame.index.has_duplicates:
        for idx in frame.index[frame.index.duplicated()].unique():
            problems.append((idx, "duplicate index"))
    for column in ("productid", "imageid"):
        values = _int_column(frame, column, problems)
        for idx in frame.index[values.duplicated(keep="first") & values.notna()]:
            problems.append((idx, f"duplicate {column}: {frame.at[idx, column]}"))
    for idx in frame.index[frame["designation"].str.strip() == ""]:
        problems.append((idx, "empty designation"))
    if allowed_codes is not None:
        codes = pd.to_numeric(frame["prdtypecode"], errors="coerce")
        for idx in frame.index[codes.isna() | ~codes.isin(allowed_codes)]:
            problems.append((idx, f"unknown prdtypecode: {frame.at[idx, 'prdtypecode']} is not one of the "
                                  f"{len(allowed_codes)} known codes"))
    images: list[str] = []
    missing: list[object] = []
    for idx, row in frame.iterrows():
        try:
            name = image_name(int(row["imageid"]), int(row["productid"]))
        except (TypeError, ValueError):
            images.append("")
            continue
        path = image_dir / name if image_dir is not None else None
        reason = "missing image" if path is None else _check_image(path)
        if reason == "missing image" and options.on_missing_image == "text-only":
            missing.append(idx)
            images.append("")
        elif reason:
            problems.append((idx, reason))
            images.append("")
        else:
            assert path is not None
            images.append(path.relative_to(root).as_posix())
    frame = frame.assign(image=images)
    if problems:
        if options.on_bad_rows == "fail":
            raise DataValidationError(report.summary() + "\nfix the rows or pass --on-bad-rows drop", report)
        bad = {idx for idx, _ in problems}
        report.dropped = sorted(bad, key=str)
        frame = frame.loc[~frame.index.isin(bad)]
    report.text_only = [i for i in missing if i in frame.index]
    if frame.empty:
        raise DataValidationError(report.summary() + "\nno valid rows left", report)
    return frame


def _version(csvs: list[Path], frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for path in csvs:
        digest.update(path.read_bytes())
    for image in frame["image"]:
        digest.update(image.encode() + b"\n")
    return digest.hexdigest()[:16]


def load_labelled(root: Path, options: DataOptions = DataOptions(),
                  allowed_codes: tuple[int, ...] = KNOWN_CODES) -> Dataset:
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
    frame = x[list(X_COLUMNS)].assign(prdtypecode=y["prdtypecode"])
    image_dir = _optional_dir(root, IMAGE_TRAIN_DIRS)
    report = ValidationReport(source=str(root), rows=len(frame))
    frame = _validate(frame, root, image_dir, options, report, allowed_codes)
    frame = frame.astype({"productid": np.int64, "imageid": np.int64, "prdtypecode": np.int64})
    return Dataset(root, frame, report, _version([x_path, y_path], frame))


def load_unlabelled(root: Path, options: DataOptions = DataOptions()) -> Dataset:
    """Test CSV + test images (the batch-prediction input) → validated :class:`Dataset` without labels."""
    root = Path(root)
    x_path = _find(root, X_TEST_NAMES, "test features CSV")
    frame = _read_csv(x_path, X_COLUMNS)[list(X_COLUMNS)]
    report = ValidationReport(source=str(root), rows=len(frame))
    frame = _validate(frame, root, _optional_dir(root, IMAGE_TEST_DIRS), options, report, None)
    frame = frame.astype({"productid": np.int64, "imageid": np.int64})
    return Dataset(root, frame, report, _version([x_path], frame))


def _optional_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


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
        a, b = train_test_split(ids, test_size=size, random_state=seed, stratify=labels if ok else None)
        return a, b

    rest, test = cut(ids, labels, test_fraction)
    rest_labels = frame.loc[rest, "prdtypecode"].to_numpy()
    train, val = cut(rest, rest_labels, val_fraction / (1 - test_fraction))
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}
