"""Edit a copy of a bundle as a careless user or an attacker would, then recompute its manifest so that only the
semantic checks stand between the edit and a loaded model. Shared by the bundle, CLI-error and S3 tests.

Edits replace files (unlink, then write) instead of writing into them, so copies made of hard links are safe."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rakuten_mm.bundle import MANIFEST, sha256


def rehash(root: Path) -> None:
    """Rewrite ``manifest.json`` to match every file now in ``root`` (links followed; sub-directories skipped)."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = {p.name: sha256(p) for p in sorted(root.iterdir())
                         if p.name != MANIFEST and p.is_file()}
    _replace(root / MANIFEST, json.dumps(manifest))


def _replace(path: Path, text: str) -> None:
    """A new file, never a write into the old one: copies of a bundle may share it as a hard link."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def edit_json(root: Path, name: str, change: Callable[[Any], Any]) -> None:
    """``change(obj)`` edits the parsed file in place or returns a replacement; the manifest is recomputed."""
    obj = json.loads((root / name).read_text())
    new = change(obj)
    _replace(root / name, json.dumps(obj if new is None else new))
    rehash(root)


def copy_bundle(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


_TRAINED: dict[Path, Path] = {}


def tfidf_bundle_for(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text + tfidf bundle (no image member: quick to train) trained in-process on ``synth_data``, once per
    test session (each module's ``tfidf_bundle`` fixture calls this)."""
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.training import train

    key = tmp_path_factory.getbasetemp()
    if key not in _TRAINED:
        out = tmp_path_factory.mktemp("tfidf-bundle") / "bundle"
        cfg = TrainConfig(epochs_text=1, epochs_image=1, image_size=32, image_weights="none", batch_size=32,
                          members=("text", "tfidf"), ensemble_step=0.25)
        _TRAINED[key] = Path(train(str(synth_data), str(out), cfg).bundle_uri)
    return _TRAINED[key]
