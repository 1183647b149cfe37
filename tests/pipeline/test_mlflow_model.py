"""What MLflow holds after a run: the registered version is an MLflow model (pyfunc flavor wrapping the bundle), the
parent run's metrics are named once, and the report opens in a browser with the training curves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rakuten_mm import registry, steps
from rakuten_mm.mlflow_model import rows_frame
from rakuten_mm.tracking import Tracker, TrackingConfig

pytestmark = pytest.mark.pipeline


def _store(root: Path) -> TrackingConfig:
    return TrackingConfig(f"sqlite:///{root / 'mlflow.db'}", "rakuten", (root / "artifacts").as_uri())


@pytest.fixture
def global_uri(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point mlflow's tracking + registry URI (what ``mlflow.pyfunc.load_model`` reads) at a store, for the test."""

    def point(cfg: TrackingConfig) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.uri)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", cfg.uri)

    return point


@pytest.mark.unit
def test_pyfunc_input_takes_paths_bytes_or_nothing_and_names_the_allowed_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({"designation": ["a", None, "c", "d"], "image": ["x/y.jpg", b"\xff\xd8raw", None, b""]})
    rows = rows_frame(frame, tmp_path)
    assert list(rows.columns) == ["designation", "description", "image"]
    assert rows["designation"].tolist() == ["a", "", "c", "d"] and rows["description"].tolist() == [""] * 4
    assert rows["image"][0] == str(Path("x/y.jpg").absolute()) and rows["image"][2:].tolist() == ["", ""]
    assert (tmp_path / rows["image"][1]).read_bytes() == b"\xff\xd8raw"
    with pytest.raises(ValueError, match=r"needs a 'designation' column \(allowed columns: \['designation', "
                                         r"'description', 'image'\]\), got \['title'\]"):
        rows_frame(pd.DataFrame({"title": ["x"]}), tmp_path)
    with pytest.raises(ValueError, match="image of row 0 must be a file path or raw JPEG/PNG bytes, got int"):
        rows_frame(pd.DataFrame({"designation": ["x"], "image": [3]}), tmp_path)


@pytest.mark.slow
def test_the_champion_loads_as_an_mlflow_pyfunc_model_and_predicts_a_dataframe(
        tiny_bundle: Path, synth_data: Path, tmp_path: Path, global_uri: Any) -> None:
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from rakuten_mm.data import load_labelled
    from rakuten_mm.inference import predict_rows
    from rakuten_mm.model import load_bundle

    cfg = _store(tmp_path)
    tracker = Tracker.start(cfg, run_name="pipeline run")
    decision = registry.register_bundle(tracker, tiny_bundle, registry.Comparison(rows=1, data_version="v",
                                                                                challenger_score=0.5))
    assert decision.outcome == registry.FIRST
    global_uri(cfg)

    model = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["designation", "description", "image"]
    assert model.metadata.get_output_schema().input_names() == ["prdtypecode", "category", "probability"]
    assert model.metadata.saved_input_example_info["artifact_path"] == "input_example.json"

    rows = load_labelled(synth_data).frame.head(6)
    with_image = rows[rows["image"] != ""]
    assert len(with_image) >= 2
    frame = pd.DataFrame({
        "designation": rows["designation"].tolist(),
        "description": rows["description"].tolist(),
        # a path, the same file's bytes, then what the rows have (paths or nothing)
        "image": [str(synth_data / with_image["image"].iloc[0]),
                  (synth_data / with_image["image"].iloc[0]).read_bytes(),
                  *[str(synth_data / p) if p else None for p in rows["image"].iloc[2:]]]})
    out = model.predict(frame)
    assert list(out.columns) == ["prdtypecode", "category", "probability"] and len(out) == len(frame)

    bundle = load_bundle(tiny_bundle)
    expected_rows = frame.assign(image=[with_image["image"].iloc[0], with_image["image"].iloc[0],
                                        *rows["image"].iloc[2:]])
    probs, _, _ = predict_rows(bundle, expected_rows, synth_data)
    best = probs.argmax(1)
    assert out["prdtypecode"].tolist() == [bundle.labels.codes[i] for i in best]
    assert out["category"].tolist() == [bundle.labels.names[i] for i in best]
    np.testing.assert_allclose(out["probability"].to_numpy(), probs[np.arange(len(best)), best], rtol=1e-5)

    text_only = model.predict(pd.DataFrame({"designation": ["Manette PS4"]}))  # description and image optional
    assert text_only["prdtypecode"].dtype == np.int64 and 0 < text_only["probability"][0] <= 1

    # The run page lists the logged model; the version was registered from it.
    client = tracker.client
    version = client.get_model_version(registry.MODEL_NAME, decision.version)
    outputs = client.get_run(tracker.run_id).outputs.model_outputs
    assert len(outputs) == 1
    logged = client.get_logged_model(outputs[0].model_id)
    assert logged.source_run_id == tracker.run_id and logged.status == LoggedModelStatus.READY
    assert version.source == logged.artifact_location == decision.source


# ---- one pipeline run, its steps in this process ------------------------------------------------------------------

@dataclass
class StepRun:
    cfg: TrackingConfig
    run_id: str
    report: Path
    report_html: Path
    bundle: Path
    metadata: dict[str, Any]


@pytest.fixture(scope="module")
def step_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> StepRun:
    """preprocess → train text, image → fit_ensemble → evaluate → register, as the pipeline calls them."""
    root = tmp_path_factory.mktemp("steps")
    cfg = _store(root / "store")
    tracking: dict[str, Any] = {"tracking_uri": cfg.uri, "experiment": cfg.experiment}
    pre = steps.preprocess(str(synth_data), str(root / "dataset"), on_bad_rows="fail", on_missing_image="fail",
                           epochs_text=2, epochs_image=2, image_size=32, image_weights="none", batch_size=32,
                           **tracking)
    common: dict[str, Any] = {"train_config": pre.train_config, "mlflow_run_id": pre.mlflow_run_id, **tracking}
    for member in ("text", "image"):
        steps.train_member(member, str(root / "dataset"), str(root / member), **common)
    steps.fit_ensemble(str(root / "dataset"), str(root / "text"), str(root / "image"), str(root / "bundle"),
                       **common)
    steps.evaluate(str(root / "dataset"), str(root / "bundle"), str(root / "evaluation"),
                   mlflow_run_id=pre.mlflow_run_id, **tracking)
    metadata: dict[str, Any] = {}
    report = root / "register" / "report"  # what Kubeflow gives an HTML output artifact: no extension
    steps.register(str(root / "dataset"), str(root / "bundle"), str(root / "evaluation"), str(report),
                   bundle_uri="", bundle_artifact_uri=str(root / "bundle"), mlflow_run_id=pre.mlflow_run_id,
                   metadata=metadata, **tracking)
    return StepRun(cfg, pre.mlflow_run_id, report, root / "register" / "report.html", root / "bundle", metadata)


def _curve(name: str) -> bool:
    return name.startswith("epoch_")


@pytest.mark.slow
def test_the_parent_runs_metrics_are_named_once(step_run: StepRun) -> None:
    client = registry.mlflow_client(step_run.cfg)
    metrics = client.get_run(step_run.run_id).data.metrics
    figures = {f"{split}{member}_{m}" for split in ("val", "test") for member in ("", "_text", "_image")
               for m in ("weighted_f1", "macro_f1", "accuracy")}
    expected = {*figures, "weight_text", "weight_image",
                *(f"epoch_{c}_{member}_{m}" for member in ("text", "image")
                  for c, m in (("train", "loss"), ("val", "weighted_f1"))),
                "gate_promoted", "gate_rows",
                *(f"step_seconds_{s}" for s in ("preprocess", "train_text", "train_image", "fit_ensemble",
                                                "evaluate", "register"))}
    assert set(metrics) == expected
    # No name is another's words reordered (text_val_weighted_f1 next to val_text_weighted_f1)...
    words = [tuple(sorted(k.replace("weighted_f1", "weightedf1").replace("macro_f1", "macrof1").split("_")))
             for k in metrics]
    assert len(words) == len(set(words))
    # ...and no two curves are the same series under two names. (Single figures may coincide on 30 test rows:
    # accuracy 0.1 = macro F1 0.1 there; the exact key set above is what rules out a figure logged twice.)
    series = [tuple((m.step, m.value) for m in client.get_metric_history(step_run.run_id, k))
              for k in metrics if _curve(k)]
    assert len(series) == len(set(series)) == 4
    # Curves: one point per epoch, steps 1..n; the member's nested run has the same without the member.
    history = client.get_metric_history(step_run.run_id, "epoch_val_text_weighted_f1")
    assert [m.step for m in history] == [1, 2]
    children = client.search_runs([client.get_run(step_run.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{step_run.run_id}'")
    for child in children:
        assert set(child.data.metrics) == {"epoch_train_loss", "epoch_val_weighted_f1", "val_weighted_f1",
                                           "val_macro_f1", "val_accuracy"}
        assert [m.step for m in client.get_metric_history(child.info.run_id, "epoch_train_loss")] == [1, 2]


@pytest.mark.slow
def test_the_report_opens_as_html_with_numeric_codes_and_training_curves(step_run: StepRun) -> None:
    assert step_run.report_html.is_file() and step_run.metadata["report_html"] == str(step_run.report_html)
    page = step_run.report_html.read_text()
    assert page == step_run.report.read_text() and page.startswith("<!DOCTYPE html>")
    per_class = page.split("Per class")[1].split("</table>")[0]
    codes = [int(cell.split("<")[0]) for cell in per_class.split('<tr><td class="num">')[1:]]
    assert codes == sorted(codes) != sorted(codes, key=str)  # numeric order, not the text order 10, 1140, ..., 40
    assert "Training curves" in page and 'alt="training curves"' in page
    history = json.loads((step_run.bundle / "metrics.json").read_text())["history"]
    assert set(history) == {"text", "image"}
    assert [r["epoch"] for r in history["text"]] == [1, 2] and {"train_loss", "val_weighted_f1"} <= set(
        history["text"][0])
    client = registry.mlflow_client(step_run.cfg)
    assert [a.path for a in client.list_artifacts(step_run.run_id, "report")] == ["report/report.html"]
