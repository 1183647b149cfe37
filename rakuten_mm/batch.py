"""Batch prediction in shards: the pieces the batch prediction pipeline's steps share (plain Python; no kfp).

The rows are cut into contiguous shards on multiples of :data:`BATCH_SIZE` (the batch :func:`predict_rows` is run
with), so every shard sees exactly the batches one ``rakuten predict`` process would: the merged predictions are the
CLI's, row for row. The output is a CSV (``rakuten predict``'s columns, the original row index first, plus
:data:`HASH_COLUMN`, the sha256 of the bundle's ``manifest.json``, which covers every file of the bundle), written
only once every shard has succeeded and in one step: locally a temporary file renamed into place, on S3 a single
object PUT (S3 never shows a partial object). A failed run leaves whatever was at the URI before untouched; a rerun
with the same data and bundle writes the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from rakuten_mm import bundle, storage
from rakuten_mm.errors import ConfigError, StorageError

BATCH_SIZE = 32  # predict_rows' batch; shards start on its multiples
HASH_COLUMN = "bundle_sha256"
ROWS = "rows.csv"
ROWS_META = "rows.json"
SHARD = "shard.json"
PREDICTIONS = "predictions.csv"
MAX_SHARDS = 1000


def bundle_sha256(root: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which holds the sha256 of every other file."""
    return bundle.sha256(Path(root) / bundle.MANIFEST)


def check_shards(shards: int) -> int:
    if not 1 <= int(shards) <= MAX_SHARDS:
        raise ConfigError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    return int(shards)


def shard_bounds(rows: int, shards: int, batch: int = BATCH_SIZE) -> list[tuple[int, int]]:
    """``[start, stop)`` of each non-empty shard: at most ``shards`` contiguous runs of whole batches."""
    batches = -(-rows // batch)
    per_shard = max(1, -(-batches // check_shards(shards))) * batch
    return [(start, min(start + per_shard, rows)) for start in range(0, rows, per_shard)]


def check_output(uri: str) -> None:
    """Fail fast (before any prediction) when ``uri`` cannot take the predictions file."""
    if not uri or uri.endswith("/"):
        raise ConfigError(f"the predictions URI names a file (e.g. s3://bucket/predictions.csv), got {uri!r}")
    if storage.is_s3(uri):
        storage.check_writable(uri.rpartition("/")[0], marker=None)
        return
    target = Path(uri)
    if target.is_dir():
        raise StorageError(f"cannot write predictions to {target}: it is a directory; name a file")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"cannot write {target}: {parent} is not a directory")


def write_rows(frame: pd.DataFrame, out_dir: Path, meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / ROWS)
    bundle.write_json(out_dir / ROWS_META, meta)


def read_rows(rows_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    frame = pd.read_csv(rows_dir / ROWS, index_col=0, dtype={"designation": str, "description": str, "image": str},
                        keep_default_na=False)
    return frame, json.loads((rows_dir / ROWS_META).read_text())


def write_shard(frame: pd.DataFrame, out_dir: Path, shard: int, bounds: tuple[int, int]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / PREDICTIONS)
    bundle.write_json(out_dir / SHARD, {"shard": shard, "start": bounds[0], "stop": bounds[1]})


def merge_shards(shard_dirs: list[Path], index: pd.Index, shards: int) -> pd.DataFrame:
    """The shards' predictions in row order; every row exactly once, or an error naming what is missing."""
    found = {json.loads((d / SHARD).read_text())["shard"]: d for d in shard_dirs}
    expected = len(shard_bounds(len(index), shards))
    if sorted(found) != list(range(expected)) or len(shard_dirs) != expected:
        raise RuntimeError(f"expected predictions of shards 0..{expected - 1}, got shards {sorted(found)} from "
                           f"{len(shard_dirs)} outputs")
    parts = [pd.read_csv(found[k] / PREDICTIONS, index_col=0, dtype={"category": str, HASH_COLUMN: str},
                         keep_default_na=False) for k in range(expected)]
    frame = pd.concat(parts) if parts else pd.DataFrame(index=index)
    if not frame.index.equals(index):
        raise RuntimeError(f"the shards' predictions cover {len(frame)} rows in another order than the {len(index)} "
                           "rows to predict")
    return frame


def write_output(frame: pd.DataFrame, uri: str) -> str:
    """Write the predictions CSV to ``uri`` in one step (see the module doc); returns ``uri``."""
    if not storage.is_s3(uri):
        return str(write_csv_atomic(frame, Path(uri)))
    parent, _, name = uri.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="rakuten-predictions-") as tmp:
        write_csv_atomic(frame, Path(tmp) / name)
        storage.upload_dir(Path(tmp), parent)
    return uri


def write_csv_atomic(frame: pd.DataFrame, out: Path) -> Path:
    """Write a CSV next to ``out`` and rename it into place, so a crash never leaves half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            frame.to_csv(fh)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
