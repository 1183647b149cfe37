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
