"""A pipeline step that neither trains nor predicts starts without importing torch or scikit-learn (issue 11).

Each check runs in a fresh interpreter, as a step's container does: KFP's executor and the component's module,
then what the component's body imports (``rakuten_mm.steps``; deploy: ``rollout.deploy``), then, for preprocess,
the step's whole data path (validate every image, split, write the record).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "sklearn", "scipy")
NOT_TRAINING = ("preprocess", "register", "deploy", "prepare_batch", "merge_predictions")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("component", NOT_TRAINING)
def test_a_step_that_does_not_train_imports_neither_torch_nor_sklearn(component):
    body = "rollout.deploy" if component == "deploy" else "rakuten_mm.steps"  # what the component's body imports
    assert _loaded_after(f"import kfp.dsl.executor_main, components.{component}, {body}") == []


def test_the_preprocess_data_path_runs_without_torch_or_sklearn(synth_data, tmp_path):
    code = (f"from pathlib import Path\nfrom rakuten_mm import data\n"
            f"prepared = data.preprocess({str(synth_data)!r}, Path({str(tmp_path / 'out')!r}), seed=0)\n"
            "assert len(prepared.frame) > 0")
    assert _loaded_after(code) == []


def test_the_register_step_runs_without_torch_or_sklearn(synth_data, tiny_bundle, tmp_path, monkeypatch):
    """register publishes and registers the bundle evaluate verified (checked file for file against the manifest
    evaluate saw, not re-verified), in a fresh interpreter, as its container runs it."""
    from rakuten_mm import steps
    from rakuten_mm.data import preprocess
    from rakuten_mm.tracking import Tracker, TrackingConfig

    monkeypatch.setenv("RAKUTEN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dataset, evaluation = tmp_path / "dataset", tmp_path / "evaluation"
    preprocess(str(synth_data), dataset)
    run_id = Tracker.start(TrackingConfig.from_env(), run_name="pipeline run").run_id
    steps.evaluate(str(dataset), str(tiny_bundle), str(evaluation), mlflow_run_id=run_id)
    code = ("from rakuten_mm import steps\n"
            f"r = steps.register({str(dataset)!r}, {str(tiny_bundle)!r}, {str(evaluation)!r}, "
            f"{str(tmp_path / 'report.html')!r}, bundle_uri='', bundle_artifact_uri={str(tiny_bundle)!r}, "
            f"mlflow_run_id={run_id!r})\n"
            "assert r.promoted and r.decision, r")
    # scipy (its sparse matrices) is MLflow's own import: mlflow.models, which registering a model needs.
    assert _loaded_after(code) == ["scipy"]


def test_prepare_batch_hands_the_bundle_on_without_torch_or_sklearn(synth_data, tiny_bundle, tmp_path):
    """prepare_batch checks the bundle's files and checksums and copies it; the shards' load verifies the rest."""
    code = ("from rakuten_mm import steps\n"
            f"shards = steps.prepare_batch({str(synth_data)!r}, {str(tiny_bundle)!r}, "
            f"{str(tmp_path / 'predictions.csv')!r}, 2, {str(tmp_path / 'rows')!r}, {str(tmp_path / 'bundle')!r}, "
            "on_bad_rows='fail', on_missing_image='fail')\n"
            "assert shards == [0, 1], shards")
    assert _loaded_after(code) == []
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
