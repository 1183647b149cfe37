"""The whole training pipeline under kfp.local: tiny synthetic data in, a bundle out, MLflow and the registry gate.

Three kinds of runs, each started once per session: a first run (local data and bundle, both members), a second
run into the same registry with shuffled labels read from and written to S3 (moto), and five failing runs
through the CLI in parallel (four kinds of bad data, and a step failing after preprocess).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import BROKEN, Run, mlflow_client, tracking

from rakuten_mm.data import load_labelled
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle
from rakuten_mm.registry import CHALLENGER, CHAMPION, MODEL_NAME, SCORE_TAG, alias_version

pytestmark = [pytest.mark.pipeline, pytest.mark.e2e, pytest.mark.slow]

STEPS = ("preprocess", "train_text", "train_image", "fit_ensemble", "evaluate", "register")


def _executor_output(run: Run, task: str) -> dict[str, Any]:
    return json.loads((Path(run.result["run_dir"]) / task / "executor_output.json").read_text())


def _artifact(run: Run, task: str, name: str) -> dict[str, Any]:
    artifacts: dict[str, Any] = _executor_output(run, task)["artifacts"][name]["artifacts"][0]
    return artifacts


def test_first_run_publishes_a_bundle_that_loads_and_predicts(local_run: Run, synth_data: Path) -> None:
    result = local_run.result
    assert result["bundle_uri"] == local_run.out
    model = load_bundle(local_run.out)
    assert model.config["ensemble"]["members"] == ["text", "image"]
    assert set(result["weights"]) == {"text", "image"}
    assert {"weighted_f1", "macro_f1", "accuracy", "members", "confusion"} <= set(result["test"])
    rows = load_labelled(synth_data).frame.head(4)
    probs, _, _ = predict_rows(model, rows, synth_data)
    assert probs.shape == (4, 27)
    gate = result["gate"]
    assert gate == {"promoted": True, "model_version": "1", "champion_version": None, "champion_weighted_f1": None,
                    "gate_confidence": None, "challenger_weighted_f1": gate["challenger_weighted_f1"],
                    "decision": gate["decision"]}
    assert 0 <= gate["challenger_weighted_f1"] <= 1  # on every held-out test row: there was no champion
    assert "first version becomes champion" in result["gate"]["decision"]


def test_steps_leave_no_temp_dirs(local_run: Run) -> None:
    assert local_run.leftover_dirs == set()
    assert sorted(p.name for p in (local_run.state / "pipelines").iterdir()) == ["runs"]


def test_report_shows_scores_classes_confusion_data_version_weights_and_gate(local_run: Run) -> None:
    page = Path(local_run.result["report"]).read_text()
    result = local_run.result
    for needle in ("Registry gate", "first version becomes champion", "Per class", "Ensemble weights",
                   result["data_version"], "Video Games", "data:image/png;base64,", local_run.out,
                   f"{result['val']['weighted_f1']:.4f}", f"{result['weights']['text']:.4f}"):
        assert needle in page, needle


def test_kfp_artifacts_are_typed_and_carry_metrics(local_run: Run) -> None:
    confusion = _artifact(local_run, "evaluate", "confusion")["metadata"]["confusionMatrix"]
    names = [spec["displayName"] for spec in confusion["annotationSpecs"]]
    assert len(names) == 27 and names[0] == "Books (10)"
    assert sum(sum(row["row"]) for row in confusion["rows"]) == local_run.result["test"]["rows"]
    assert {"test_weighted_f1", "test_macro_f1", "test_accuracy", "test_text_weighted_f1",
            "test_image_weighted_f1"} <= set(_artifact(local_run, "evaluate", "metrics")["metadata"])
    assert {"val_weighted_f1", "val_text_weighted_f1", "weight_text", "weight_image"} <= set(
        _artifact(local_run, "fit-ensemble", "metrics")["metadata"])
    assert {"gate_promoted", "gate_rows", "gate_challenger_weighted_f1"} <= set(
        _artifact(local_run, "register", "metrics")["metadata"])
    assert "val_weighted_f1" in _artifact(local_run, "train-lstm", "metrics")["metadata"]
    dataset = _artifact(local_run, "preprocess", "dataset")["metadata"]
    assert dataset["version"] == local_run.result["data_version"] and sum(dataset["rows"].values()) == 160
    assert (Path(_artifact(local_run, "fit-ensemble", "bundle")["uri"]) / "manifest.json").is_file()


def test_one_parent_mlflow_run_with_nested_members_curves_report_and_bundle(local_run: Run) -> None:
    client = mlflow_client(local_run.state)
    parent = client.get_run(local_run.result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["epochs_text"] == "4" and parent.data.params["data_version"] == \
        local_run.result["data_version"]
    assert parent.data.params["model_version"] == "1"
    assert {f"step_seconds_{s}" for s in STEPS} <= set(parent.data.metrics)
    curve = client.get_metric_history(parent.info.run_id, "epoch_val_text_weighted_f1")
    assert [m.step for m in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 2
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["member"] for r in children) == ["image", "text"]
    assert all(r.info.status == "FINISHED" and "val_weighted_f1" in r.data.metrics for r in children)
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report", "evaluation", "data"} <= top
    assert len(parent.outputs.model_outputs) == 1  # the bundle, as the run's logged MLflow model
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_first_version_is_champion_and_comes_from_the_runs_artifacts(local_run: Run) -> None:
    client = mlflow_client(local_run.state)
    version = client.get_model_version(MODEL_NAME, "1")
    run = client.get_run(local_run.result["mlflow_run_id"])
    logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert version.source == logged.artifact_location and version.run_id == run.info.run_id
    assert float(version.tags[SCORE_TAG]) == pytest.approx(local_run.result["val"]["weighted_f1"])
    cfg = tracking(local_run.state)
    assert alias_version(cfg, CHAMPION) == alias_version(cfg, CHALLENGER) == "1"


def test_second_run_on_new_data_scores_the_champion_on_its_rows_and_keeps_it(worse_s3_run: Run,
                                                                             local_run: Run) -> None:
    gate = worse_s3_run.result["gate"]
    rows = worse_s3_run.result["test"]["rows"]
    # The champion (trained on the first data version) is scored on this run's held-out rows of the new data.
    assert gate["champion_version"] == "1" and gate["champion_weighted_f1"] is not None
    assert 0 <= gate["gate_confidence"] <= 1
    assert gate["promoted"] is False and gate["model_version"] == "2"
    assert f"on the same {rows} held-out test rows (data version {worse_s3_run.result['data_version']})" in \
        gate["decision"] and "paired bootstrap" in gate["decision"]
    assert worse_s3_run.result["data_version"] != local_run.result["data_version"]
    cfg = tracking(worse_s3_run.state)
    assert alias_version(cfg, CHAMPION) == "1" and alias_version(cfg, CHALLENGER) == "2"
    page = Path(worse_s3_run.result["report"]).read_text()
    assert "kept the champion" in page and "Both models on the same held-out test rows" in page


def test_s3_data_in_and_s3_bundle_out(worse_s3_run: Run) -> None:
    assert worse_s3_run.result["bundle_uri"] == worse_s3_run.out
    model = load_bundle(worse_s3_run.out)  # downloaded from moto, checksums verified
    assert model.config["ensemble"]["members"] == ["text", "chartfidf"] and model.backbone is None
    assert model.metrics["ensemble_fit"] == "out-of-fold (2 folds, log-loss)"  # OOF files crossed the steps
    params = mlflow_client(worse_s3_run.state).get_run(worse_s3_run.result["mlflow_run_id"]).data.params
    assert params["data_uri"].startswith("s3://") and params["bundle_uri"] == worse_s3_run.out


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_runs_fail_with_one_clear_line_and_publish_or_register_nothing(
        failed_runs: dict[str, dict[str, Any]], kind: str) -> None:
    run = failed_runs[kind]
    assert run["rc"] == 1, run["stderr"]
    assert "Traceback" not in run["stderr"]
    last = run["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: ") and BROKEN[kind] in last, last
    assert not run["out"].parent.exists() or not any(run["out"].parent.iterdir())  # no bundle, no staging dir
    cfg = tracking(run["state"])
    assert alias_version(cfg, CHAMPION) is None
    client = mlflow_client(run["state"])
    assert client.search_model_versions(f"name = '{MODEL_NAME}'") == []
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("rakuten").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    step = "train_image" if kind == "failing-later-step" else "preprocess"
    assert parent.data.tags["error"].startswith(f"{step}: ")

