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

An ``s3://bucket/prefix`` dataset is read where it lies (:func:`read_labelled`, :func:`read_unlabelled`,
:func:`validate`): the prefix is listed once, only the CSVs are downloaded (to a temporary directory), and every
image is streamed through the same decode check, ``RAKUTEN_S3_CONCURRENCY`` at a time, without being written to
disk (:func:`rakuten_mm.storage.read_each`); an image missing from the listing is a missing image, as a missing
file is locally. Later steps read the images of the rows they use and nothing else (:func:`images_of`). So the
same rows, findings and :attr:`Dataset.version` come out of a local copy and of the prefix it was uploaded to.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

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
PREPARED = "dataset.json"  # the preprocess step's record: data URI, version, split, report, options
ROWS = "rows.csv"  # ... and its validated rows with their split


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

    root: Path | str  # the local data directory, or the s3:// URI the rows were read from
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


ImageCheck = tuple[str, str] | None  # None: an image training can read; else (kind, detail)


def _check_content(rel: str, data: bytes | None) -> ImageCheck:
    """The check of one image's bytes (``None``: no such image); the decode is training's own."""
    if data is None:
        return "missing image", rel
    from rakuten_mm.image import decode_image  # Pillow + numpy only (no torch)

    try:
        decode_image(data).close()
    except InputError as exc:
        return "unreadable image", f"{rel}: {exc}"
    return None


def _check_image(root: Path, path: Path) -> ImageCheck:
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
    return _check_content(rel, data)


@contextlib.contextmanager
def _bomb_warnings_are_errors() -> Iterator[None]:
    # decode_image turns Pillow's DecompressionBombWarning into an error inside warnings.catch_warnings(), which is
    # process-wide: set the same filter around the pool so that the threads' enter/exit interleavings can never
    # let the warning through to stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def check_images(root: Path, paths: list[Path], workers: int | None = None) -> list[ImageCheck]:
    """:func:`_check_image` for every path, on a thread pool (Pillow decodes without the GIL)."""
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with _bomb_warnings_are_errors():
        if workers <= 1 or len(paths) <= 1:
            return [_check_image(root, p) for p in paths]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-image") as pool:
            return list(pool.map(lambda p: _check_image(root, p), paths, chunksize=64))


# ---- where the data lies: a local directory or an s3 prefix ---------------------------------------------------------

@dataclass
class _Local:
    """A local data directory: CSVs read in place, images checked on a thread pool (:func:`check_images`)."""

    root: Path
    workers: int | None = None

    @property
    def source(self) -> Path:
        return self.root

    def csv(self, names: tuple[str, ...], what: str) -> Path:
        return _find(self.root, names, what)

    def has_file(self, names: tuple[str, ...]) -> bool:
        return any((self.root / n).is_file() for n in names)

    def image_dir(self, names: tuple[str, ...]) -> str | None:
        path = _optional_dir(self.root, names)
        return None if path is None else path.relative_to(self.root).as_posix()

    def check(self, rels: list[str]) -> list[ImageCheck]:
        return check_images(self.root, [self.root / r for r in rels], self.workers)


@dataclass
class _Remote:
    """An s3 prefix, listed once: CSVs downloaded into ``scratch``, images streamed through the check."""

    listing: storage.Listing
    scratch: Path
    concurrency: int | None = None

    @property
    def source(self) -> str:
        return self.listing.uri

    def csv(self, names: tuple[str, ...], what: str) -> Path:
        for name in names:
            if self.listing.is_file(name):
                return storage.fetch(self.listing.uri, [name], self.scratch, self.concurrency) / name
        raise DataValidationError(f"no {what} in {self.listing.uri}: looked for {', '.join(names)}")

    def has_file(self, names: tuple[str, ...]) -> bool:
        return any(self.listing.is_file(n) for n in names)

    def image_dir(self, names: tuple[str, ...]) -> str | None:
        return next((n for n in names if self.listing.is_dir(n)), None)

    def check(self, rels: list[str]) -> list[ImageCheck]:
        listed = [r for r in rels if self.listing.is_file(r)]  # the others are missing: no request for them
        with _bomb_warnings_are_errors():
            found = dict(zip(listed, storage.read_each(self.listing.uri, listed, _check_content, self.concurrency),
                             strict=True))
        return [found[r] if r in found else _check_content(r, None) for r in rels]


_Source = _Local | _Remote


@contextlib.contextmanager
def _opened(data: str | os.PathLike[str], workers: int | None) -> Iterator[_Source]:
    """``data`` (a local directory, checked and pointer followed, or an s3 URI) as a source to load from."""
    if not storage.is_s3(data):
        yield _Local(storage.local_dir(data), workers)
        return
    listing = storage.list_objects(str(data))
    if not listing.sizes:
        raise StorageError(f"nothing found under {data}")
    with tempfile.TemporaryDirectory(prefix="rakuten-data-") as scratch:
        yield _Remote(listing, Path(scratch))


def _validate(frame: pd.DataFrame, source: _Source, image_dir: str | None, options: DataOptions,
              report: ValidationReport, allowed_codes: tuple[int, ...] | None) -> pd.DataFrame:
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
    results: list[ImageCheck]
    if image_dir is not None:
        rels = [f"{image_dir}/{name}" for name in names]
        results = source.check(rels)
    else:
        rels, results = [], [("missing image", f"{name} (no image directory in {source.source})") for name in names]
    for j, i in enumerate(todo):
        found = results[j]
        if found is None:
            images[i] = rels[j]
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
    """Train CSVs + train images of a local directory → validated :class:`Dataset` with a ``prdtypecode`` column.

    :func:`read_labelled` reads an s3 prefix as well."""
    return _labelled(_Local(Path(root), workers), options, allowed_codes)


def load_unlabelled(root: Path, options: DataOptions = DataOptions(), workers: int | None = None) -> Dataset:
    """Test CSV + test images (the batch-prediction input) of a local directory → validated :class:`Dataset`
    without labels. :func:`read_unlabelled` reads an s3 prefix as well."""
    return _unlabelled(_Local(Path(root), workers), options)


def read_labelled(data: str | os.PathLike[str], options: DataOptions = DataOptions(),
                  allowed_codes: tuple[int, ...] = KNOWN_CODES, workers: int | None = None) -> Dataset:
    """:func:`load_labelled` of a local directory (checked, a publish pointer followed) or an s3 prefix (read in
    place: the CSVs downloaded, the images streamed through the check, nothing else fetched)."""
    with _opened(data, workers) as source:
        return _labelled(source, options, allowed_codes)


def read_unlabelled(data: str | os.PathLike[str], options: DataOptions = DataOptions(),
                    workers: int | None = None) -> Dataset:
    """:func:`load_unlabelled` of a local directory or an s3 prefix (as :func:`read_labelled`)."""
    with _opened(data, workers) as source:
        return _unlabelled(source, options)


def _labelled(source: _Source, options: DataOptions, allowed_codes: tuple[int, ...]) -> Dataset:
    x_path = source.csv(X_TRAIN_NAMES, "training features CSV")
    y_path = source.csv(Y_TRAIN_NAMES, "training labels CSV")
    x = _read_csv(x_path, X_COLUMNS)
    y = _read_csv(y_path, ("prdtypecode",))
    if len(x) != len(y) or not x.index.equals(y.index):
        only_x = x.index.difference(y.index)[:5].tolist()
        only_y = y.index.difference(x.index)[:5].tolist()
        raise DataValidationError(
            f"{x_path.name} and {y_path.name} must have the same index in the same order; got {len(x)} and "
            f"{len(y)} rows (only in X: {only_x}, only in Y: {only_y})")
    frame = x[list(X_COLUMNS)].assign(prdtypecode=y["prdtypecode"].to_numpy())
    image_dir = source.image_dir(IMAGE_TRAIN_DIRS)
    report = ValidationReport(source=str(source.source), rows=len(frame))
    frame = _validate(frame, source, image_dir, options, report, allowed_codes)
    return Dataset(source.source, frame, report, _version([x_path, y_path], frame))


def _unlabelled(source: _Source, options: DataOptions) -> Dataset:
    x_path = source.csv(X_TEST_NAMES, "test features CSV")
    frame = _read_csv(x_path, X_COLUMNS)[list(X_COLUMNS)]
    report = ValidationReport(source=str(source.source), rows=len(frame))
    frame = _validate(frame, source, source.image_dir(IMAGE_TEST_DIRS), options, report, None)
    return Dataset(source.source, frame, report, _version([x_path], frame))


def validate(root: str | os.PathLike[str], options: DataOptions = DataOptions(), workers: int | None = None) -> str:
    """What ``rakuten data validate`` runs: every check training's preprocess step makes, on the same functions.

    The labelled rows (:func:`load_labelled`: CSVs, ids, labels, every image decoded by
    :func:`rakuten_mm.image.decode_image` with training's limits), the split's own requirement (3 rows per class),
    and the test rows when ``X_test_update.csv`` is there. ``root``: a local directory or an s3 prefix (read in
    place, as :func:`read_labelled`). Returns the report; raises what training would raise.
    """
    with _opened(root, workers) as source:
        labelled = _labelled(source, options, KNOWN_CODES)
        make_splits(labelled.frame, seed=0)
        lines = ["labelled (train) rows: " + labelled.report.summary()]
        if source.has_file(X_TEST_NAMES):
            lines.append("test rows (unlabelled): " + _unlabelled(source, options).report.summary())
    return "\n".join(lines)


def image_keys(*frames: pd.DataFrame) -> list[str]:
    """The image paths (relative to the data root) of the rows of ``frames`` that have one, each once, in order."""
    return list(dict.fromkeys(p for frame in frames for p in frame["image"] if p))


def images_of(data: str | os.PathLike[str], *frames: pd.DataFrame, concurrency: int | None = None
              ) -> contextlib.AbstractContextManager[Path]:
    """A local directory holding the images of the given rows (:func:`image_keys`): the data directory itself, or,
    for an s3 prefix, a temporary download of just those images (:func:`rakuten_mm.storage.local_files`).

    What a step reads its split's images through: ``with images_of(prepared.data_uri, rows) as root:`` and then
    ``root / row["image"]``, as before.
    """
    return storage.local_files(data, image_keys(*frames), concurrency)


def _optional_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    path = next((root / n for n in names if (root / n).is_dir()), None)
    if path is not None:
        _inside(root, path)
    return path


def make_splits(frame: pd.DataFrame, seed: int, val_fraction: float = 0.15,
                test_fraction: float = 0.15) -> dict[str, list[int]]:
    """Stratified, seeded train/val/test split of ``frame``'s index (row ids, JSON-ready).

    Each cut is scikit-learn's ``train_test_split(ids, test_size=..., random_state=seed, stratify=...)``, computed
    by :func:`_train_test_split` (the same draws from the same generator, pinned by a test against scikit-learn)
    so that the preprocess step does not import scikit-learn.
    """
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
        return _train_test_split(ids, size, seed, labels if ok else None)

    rest, test = cut(ids, labels, test_fraction)
    rest_labels = frame.loc[rest, "prdtypecode"].to_numpy()
    train, val = cut(rest, rest_labels, val_fraction / (1 - test_fraction))
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}


def _train_test_split(ids: np.ndarray, size: float, seed: int, stratify: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``train_test_split(ids, test_size=size, random_state=seed, stratify=stratify)`` (its
    ``ShuffleSplit`` / ``StratifiedShuffleSplit`` draws, in the same order from the same ``RandomState``), for the
    inputs :func:`make_splits` gives it (stratified only when every class has 2 rows and fits on both sides)."""
    n = len(ids)
    n_test = int(np.ceil(size * n))
    n_train = n - n_test
    if n_train <= 0 or n_test >= n:
        raise DataValidationError(f"cannot split {n} rows into train/val/test: a {size:g} share of them leaves "
                                  "no training rows")
    rng = np.random.RandomState(seed)
    if stratify is None:
        permutation = rng.permutation(n)
        return ids[permutation[n_test:]], ids[permutation[:n_test]]
    _, y_indices, class_counts = np.unique(stratify, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(class_counts)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[:n_i[i]])
        test.extend(members[n_i[i]:n_i[i] + t_i[i]])
    return ids[rng.permutation(train)], ids[rng.permutation(test)]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per class drawn (scikit-learn's ``_approximate_mode``): proportional, floored, and the remainder given
    to the largest fractional parts, ties broken by ``rng``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


# ---- the preprocess step's output ----------------------------------------------------------------------------------

@dataclass
class Prepared:
    """The preprocess step's output: where the data lives, its version, the recorded split and the rows."""

    data_uri: str
    version: str
    splits: dict[str, list[Any]]
    frame: pd.DataFrame  # validated rows + ``split`` column, original index
    report: str
    options: DataOptions

    def rows(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]


def preprocess(data_uri: str, out_dir: Path, options: DataOptions = DataOptions(), seed: int = 0,
               val_fraction: float = 0.15, test_fraction: float = 0.15) -> Prepared:
    """Validate the labelled data (:func:`read_labelled`: an s3 prefix in place, no image written to disk) and
    record a seeded stratified split in ``out_dir``. Imports neither torch nor anything that trains."""
    dataset = read_labelled(data_uri, options)
    splits = make_splits(dataset.frame, seed, val_fraction, test_fraction)
    split_of = {idx: name for name in SPLITS for idx in splits[name]}
    frame = dataset.frame.assign(split=[split_of[i] for i in dataset.frame.index])
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / ROWS)
    record = {"data_uri": str(data_uri), "version": dataset.version, "splits": splits,
              "report": dataset.report.summary(), "options": vars(options)}
    (out_dir / PREPARED).write_text(json.dumps(record, indent=2, sort_keys=True))
    return load_prepared(out_dir)


def load_prepared(path: Path) -> Prepared:
    meta = json.loads((path / PREPARED).read_text())
    frame = pd.read_csv(path / ROWS, index_col=0, dtype={"designation": str, "description": str, "image": str},
                        keep_default_na=False)
    return Prepared(meta["data_uri"], meta["version"], meta["splits"], frame, meta["report"],
                    DataOptions(**meta["options"]))
