"""Helpers of the pipeline tests (a module, not conftest, so test modules can import it by name)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rakuten_mm.config import TrainConfig
from rakuten_mm.tracking import TrackingConfig
from tests.support.cli import RAKUTEN
from tests.support.paths import REPO_ROOT

# Small but learnable: the gate test needs this to clearly beat the shuffled-label run.
TINY = TrainConfig(epochs_text=4, epochs_image=2, image_size=32, image_weights="none", batch_size=32)
TINY_FLAGS = ["--epochs-text", "1", "--epochs-image", "1", "--image-size", "32", "--image-weights", "none"]


@contextlib.contextmanager
def state_dir(path: Path) -> Iterator[Path]:
    """Point RAKUTEN_STATE_DIR (and so MLflow's default store) at ``path`` for the block."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAKUTEN_STATE_DIR", str(path))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield path


def tracking(state: Path) -> TrackingConfig:
    """The tracking config the pipeline's steps used for this state dir."""
    with state_dir(state):
        return TrackingConfig.from_env()


def mlflow_client(state: Path) -> Any:
    from mlflow.tracking import MlflowClient

    cfg = tracking(state)
    return MlflowClient(tracking_uri=cfg.uri, registry_uri=cfg.uri)


def kfp_program_dirs() -> set[Path]:
    """``mktemp -d`` directories holding a kfp component program, in /tmp and this process's temp dir."""
    roots = {Path("/tmp"), Path(tempfile.gettempdir())}
    return {p for root in roots for p in root.glob("tmp.*") if (p / "ephemeral_component.py").exists()}


def shuffled_labels(src: Path, dest: Path, seed: int = 1) -> Path:
    """A copy of ``src`` whose labels are permuted: same rows and classes, no signal left to learn."""
    shutil.copytree(src, dest)
    y_path = dest / "Y_train_CVw08PX.csv"
    y = pd.read_csv(y_path, index_col=0)
    y["prdtypecode"] = np.random.default_rng(seed).permutation(y["prdtypecode"].to_numpy())
    y.to_csv(y_path)
    return dest


@dataclass
class Run:
    result: dict[str, Any]
    state: Path
    out: str
    leftover_dirs: set[Path] = field(default_factory=set)


def run_cli(args: list[str], state: Path, timeout: float = 600) -> subprocess.Popen[str]:
    """Start ``rakuten ARGS`` with its own state dir (the caller waits: runs go in parallel)."""
    env = {**os.environ, "RAKUTEN_STATE_DIR": str(state), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(RAKUTEN), *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


BROKEN = {
    "missing-column": "lacks required columns ['designation']",
    "unknown-label": "unknown prdtypecode: 99999",
    "missing-image": "missing image",
    "empty-file": "X_train_update.csv is empty",
    "failing-later-step": "cannot load VGG16 weights from",
}


def break_data(kind: str, data: Path) -> None:
    x_path, y_path = data / "X_train_update.csv", data / "Y_train_CVw08PX.csv"
    if kind == "missing-column":
        pd.read_csv(x_path, index_col=0).drop(columns=["designation"]).to_csv(x_path)
    elif kind == "unknown-label":
        y = pd.read_csv(y_path, index_col=0)
        y.iloc[3, 0] = 99999
        y.to_csv(y_path)
    elif kind == "missing-image":
        sorted((data / "images" / "image_train").glob("*.jpg"))[0].unlink()
    elif kind == "empty-file":
        x_path.write_text("")
