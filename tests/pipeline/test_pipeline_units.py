"""The pieces around the pipeline, without running it: the registry gate on a real sqlite MLflow store, the report,
turning a failed step's log into the user's error, the run arguments and the CLI's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines import local_runner
from pipelines.local_runner import PipelineFailed, pipeline_arguments, step_error
from rakuten_cli.pipeline import main as cli_main
from rakuten_mm import registry, steps
from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions
from rakuten_mm.errors import ConfigError, DataValidationError, ImageWeightsUnavailable
from rakuten_mm.report import html_path, render_html
from rakuten_mm.report import write as write_report
from rakuten_mm.tracking import TrackingConfig

pytestmark = [pytest.mark.pipeline, pytest.mark.unit]


@pytest.mark.parametrize(("challenger", "champion", "margin", "promoted"), [
    (0.10, None, 0.0, True),   # the first version always becomes champion
    (0.50, 0.40, 0.0, True),
    (0.40, 0.40, 0.0, False),  # a tie does not beat the champion
    (0.44, 0.40, 0.05, False),
    (0.46, 0.40, 0.05, True),
    (0.30, 0.40, 0.0, False),
])
def test_gate_decision(challenger: float, champion: float | None, margin: float, promoted: bool) -> None:
    decided, reason = registry.decide(challenger, champion, margin)
    assert decided is promoted
    assert f"{challenger:.4f}" in reason and (champion is None or f"{champion:.4f}" in reason)


@pytest.mark.parametrize("margin", [-0.1, 1.5, float("nan")])
def test_gate_margin_must_be_a_weighted_f1_difference(margin: float) -> None:
    with pytest.raises(ConfigError, match="min_improvement must be a number between 0 and 1"):
        registry.decide(0.5, 0.4, margin)


def test_alias_lookup_before_anything_was_registered(tmp_path: Path) -> None:
    cfg = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "gate", (tmp_path / "artifacts").as_uri())
    assert registry.alias_version(cfg, registry.CHAMPION) is None


def _scores(f1: float, members: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"weighted_f1": f1, "macro_f1": f1 / 2, "accuracy": f1, "rows": 10, "members": members or {}}


def test_report_holds_every_section_and_escapes_text() -> None:
    per_class = {"10": {"category": "Books <&>", "precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}}
    metrics = {"val": _scores(0.8, {"text": _scores(0.7)}), "test": _scores(0.75), "weights": {"text": 0.6},
               "data_version": "abc123"}
    comparison = registry.Comparison(rows=10, data_version="abc123", challenger_score=0.71, champion_version="2",
                                     champion_score=0.93, bootstrap=registry.Bootstrap(-0.22, 0.0, -0.3, -0.1, 1000))
    gate = registry.GateDecision("m", "3", False, registry.KEPT, comparison, 0.01, "kept the champion: ...",
                                 "file:///x")
    compared = {"excluded_rows": 4, "scores": {"challenger": _scores(0.71), "champion": _scores(0.93)}}
    page = render_html(metrics=metrics, evaluation={**_scores(0.74), "per_class": per_class, "comparison": compared},
                       gate=gate.to_json(), context={"data": "s3://b/<data>"}, confusion_png=b"\x89PNG fake")
    for needle in ("abc123", "0.6000", "0.9300", "0.7100", "kept the champion", "Books &lt;&amp;&gt;",
                   "s3://b/&lt;data&gt;", "data:image/png;base64,iVBORyBmYWtl", "test (published bundle)",
                   "Both models on the same held-out test rows", "[-0.3000, -0.1000]", "0.0%"):
        assert needle in page, needle
    assert "<data>" not in page


def test_report_sorts_codes_as_numbers_draws_the_curves_and_is_written_as_html(tmp_path: Path) -> None:
    def row(code: int) -> dict[str, Any]:
        return {"category": f"c{code}", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1}

    per_class = {str(code): row(code) for code in (10, 1140, 2583, 40, 50, 60)}  # as JSON keys sort: as text
    history = {"text": [{"epoch": 1.0, "train_loss": 2.0, "val_weighted_f1": 0.3},
                        {"epoch": 2.0, "train_loss": 1.5, "val_weighted_f1": 0.4}], "image": []}
    metrics = {"val": _scores(0.8), "test": _scores(0.75), "weights": {"text": 1.0}, "data_version": "v",
               "history": history}
    comparison = registry.Comparison(rows=10, data_version="v", challenger_score=0.7)
    gate = registry.GateDecision("m", "1", True, registry.FIRST, comparison, 0.0, "first", "file:///x")
    page = render_html(metrics=metrics, evaluation={**_scores(0.74), "per_class": per_class}, gate=gate.to_json(),
                       context={}, confusion_png=None)
    table = page.split("Per class")[1].split("</table>")[0]
    assert [int(cell.split("<")[0]) for cell in table.split('<tr><td class="num">')[1:]] == [10, 40, 50, 60, 1140,
                                                                                            2583]
    assert "<h2>Training curves (per member, per epoch)</h2>" in page
    assert 'alt="training curves"' in page and "data:image/png;base64,iVBOR" in page.split("Training curves")[1]
    assert "Training curves" not in render_html(metrics={**metrics, "history": {}}, evaluation={
        **_scores(0.74), "per_class": per_class}, gate=gate.to_json(), context={}, confusion_png=None)

    kfp_artifact = tmp_path / "register" / "report"  # the path KFP gives an HTML output: no extension
    written = write_report(kfp_artifact, page)
    assert written == tmp_path / "register" / "report.html" == html_path(kfp_artifact)
    assert written.read_text() == kfp_artifact.read_text() == page
    assert write_report(written, page) == written  # already .html: one file


PREPROCESS_LOG = """\
    [KFP Executor 2026-11-25 13:49:34,000 INFO]: Looking for component `preprocess`
    Traceback (most recent call last):
      File "<frozen runpy>", line 198, in _run_module_as_main
      File "/work/main/rakuten_mm/data.py", line 200, in _validate
        raise DataValidationError(report.summary() + "\\nfix the rows or pass --on-bad-rows drop", report)
    rakuten_mm.errors.DataValidationError: /data: 96 rows
    1 bad rows (missing image: 1); first: row 55: missing image
    fix the rows or pass --on-bad-rows drop


"""


def test_a_steps_user_error_is_raised_again_with_its_message() -> None:
    failure = RuntimeError("Pipeline \x1b[95m'rakuten-training'\x1b[0m finished with status FAILURE.")
    error = step_error(PREPROCESS_LOG, failure)
    assert isinstance(error, DataValidationError)
    assert str(error) == ("/data: 96 rows\n1 bad rows (missing image: 1); first: row 55: missing image\n"
                          "fix the rows or pass --on-bad-rows drop")
    later = "Traceback (most recent call last):\n  File x\nrakuten_mm.errors.ImageWeightsUnavailable: no weights\n"
    assert isinstance(step_error(later, failure), ImageWeightsUnavailable)


def test_other_step_failures_say_which_task_and_what_broke() -> None:
    failure = RuntimeError("Pipeline \x1b[95m'rakuten-training'\x1b[0m finished with status FAILURE. "
                           "Inner task failed: \x1b[96m'evaluate'\x1b[0m.")
    bug = "  Traceback (most recent call last):\n    File x\n  TypeError: object of type 'X' has no len()\n"
    error = step_error(bug, failure)
    assert type(error) is PipelineFailed
    assert "'evaluate'" in str(error) and "TypeError: object of type 'X' has no len()" in str(error)
    assert "\x1b" not in str(error)
    assert type(step_error("killed", failure)) is PipelineFailed


def test_run_arguments_cover_every_pipeline_parameter_but_deploy() -> None:
    from pipelines.training_pipeline import build

    cfg = TrainConfig(epochs_text=3, members=("text",), feature_cache=False)
    args = pipeline_arguments("s3://b/data", "s3://b/out", cfg, DataOptions(on_missing_image="text-only"))
    params = set(build().component_spec.inputs)
    assert set(args) == params - {"deploy", "canary_percent", "deploy_name", "deploy_namespace"}
    assert args["members"] == "text" and args["feature_cache"] is False and args["epochs_text"] == 3
    assert args["on_missing_image"] == "text-only" and args["mlflow_tracking_uri"] == ""
    rebuilt = steps.load_train_config(steps.dump_train_config(cfg))
    assert rebuilt == cfg
    with pytest.raises(ConfigError, match="min_improvement"):
        pipeline_arguments("d", "o", cfg, min_improvement=-1)


def test_kfp_minio_artifact_uris_become_s3_uris() -> None:
    assert steps.servable_uri("minio://mlpipeline/v2/artifacts/x/bundle") == "s3://mlpipeline/v2/artifacts/x/bundle"
    assert steps.servable_uri("s3://b/k") == "s3://b/k" and steps.servable_uri("/local/dir") == "/local/dir"


def test_cli_run_prints_bundle_scores_gate_and_report(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_run_local(data: str, out: str, cfg: TrainConfig, options: DataOptions, *args: Any,
                       **kwargs: Any) -> dict[str, Any]:
        seen.update(data=data, out=out, cfg=cfg, options=options, args=args, kwargs=kwargs)
        return {"bundle_uri": out, "weights": {"text": 0.4, "image": 0.6}, "test": _scores(0.5),
                "gate": {"model_version": "7", "decision": "kept the champion: ..."}, "report": "/r.html",
                "mlflow_run_id": "abc"}

    monkeypatch.setattr(local_runner, "run_local", fake_run_local)
    assert cli_main(["pipeline", "run", "data", "--out", "b", "--epochs-text", "2", "--image-weights", "none",
                     "--min-improvement", "0.01", "--on-bad-rows", "drop"]) == 0
    out = capsys.readouterr().out
    assert "bundle: b" in out and "version 7; kept the champion" in out and "report: /r.html" in out
    assert "weighted F1 0.5000" in out and "MLflow run: abc" in out
    assert seen["cfg"].epochs_text == 2 and seen["options"].on_bad_rows == "drop" and 0.01 in seen["args"]


def test_cli_submit_refuses_local_paths() -> None:
    with pytest.raises(ConfigError, match="s3:// URI the cluster can read"):
        cli_main(["pipeline", "submit", "./data", "--host", "http://127.0.0.1:9"])


def test_local_run_checks_its_uris_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the bundle would replace the data"):
        local_runner.run_local(str(tmp_path / "data"), str(tmp_path), TrainConfig())
    with pytest.raises(ConfigError, match="needs a data URI and a bundle URI"):
        local_runner.run_local(str(tmp_path / "data"), "", TrainConfig())
