"""Fixtures of the pipeline tests: the (session-scoped, slow) local pipeline runs.

Each run gets its own RAKUTEN_STATE_DIR (MLflow store, registry, pipeline root), so other test modules that train
or register cannot move this module's champion.

Time: a step is a fresh process that imports torch, mlflow and kfp (seconds each), and a run is a chain of steps
using about one core. So the failing runs (separate ``rakuten pipeline run`` processes) are started before the
first in-process run and finish beside it on the other core; ``failed_runs`` collects them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import (
    BROKEN,
    TINY,
    TINY_FLAGS,
    Run,
    break_data,
    kfp_program_dirs,
    run_cli,
    shuffled_labels,
    state_dir,
)

Started = dict[str, tuple[subprocess.Popen[str], Path, Path]]


@pytest.fixture(scope="session")
def broken_runs_started(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Started:
    """``rakuten pipeline run`` on every broken case of :data:`BROKEN`, started (not awaited)."""
    started: Started = {}
    for kind in BROKEN:
        root = tmp_path_factory.mktemp(f"broken-{kind}")
        data = Path(shutil.copytree(synth_data, root / "data"))
        break_data(kind, data)
        flags = list(TINY_FLAGS)
        if kind == "failing-later-step":
            flags[flags.index("none")] = str(root / "no-such-vgg16.pt")
        out, state = root / "out" / "bundle", root / "state"
        started[kind] = (run_cli(["pipeline", "run", str(data), "--out", str(out), "--quiet", *flags], state),
                         out, state)
    return started


@pytest.fixture(scope="session")
def failed_runs(broken_runs_started: Started) -> dict[str, dict[str, Any]]:
    """kind → rc, stderr, out (the bundle URI asked for), state (the run's state dir)."""
    done = {}
    for kind, (proc, out, state) in broken_runs_started.items():
        try:
            _, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        done[kind] = {"rc": proc.returncode, "stderr": stderr, "out": out, "state": state}
    return done


@pytest.fixture(scope="session")
def local_run(broken_runs_started: Started, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole pipeline under kfp.local: local data in, local bundle out, both members (first registration)."""
    from pipelines.local_runner import run_local

    state = tmp_path_factory.mktemp("pipeline-state")
    out = tmp_path_factory.mktemp("pipeline-out") / "bundle"
    before = kfp_program_dirs()
    with state_dir(state):
        result = run_local(str(synth_data), str(out), TINY, quiet=True)
    return Run(result, state, str(out), kfp_program_dirs() - before)


@pytest.fixture(scope="session")
def worse_s3_run(local_run: Run, synth_data: Path, moto_s3: dict[str, str],
                 tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A second run into the same registry: shuffled labels from S3 (another data version), bundle to S3, the text
    members only (LSTM + chartfidf, whose stage is one step) with out-of-fold ensemble weights, gate margin 0.5."""
    import boto3

    from pipelines.local_runner import run_local
    from rakuten_mm import storage

    bucket = f"pipeline-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    worse = shuffled_labels(synth_data, tmp_path_factory.mktemp("worse") / "data")
    storage.upload_dir(worse, f"s3://{bucket}/data")
    out = f"s3://{bucket}/bundles/worse"
    with state_dir(local_run.state):
        # Shuffled labels: the champion is scored on new rows where neither model can be good; a 0.5 margin, which
        # chance-level scores cannot clear, makes the outcome certain.
        cfg = replace(TINY, members=("text", "chartfidf"), ensemble_folds=2)
        result = run_local(f"s3://{bucket}/data", out, cfg, min_improvement=0.5, quiet=True)
    return Run(result, local_run.state, out)
