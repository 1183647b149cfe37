"""synth → train → evaluate → predict through the installed ``rakuten`` command, as a user runs it."""

import functools
import json

import pandas as pd
import pytest

from tests.support.cli import rakuten

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
run = functools.partial(rakuten, check=True)  # run(..., check=False) to look at a failure


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    data, bundle = root / "data", root / "bundle"
    run("data", "synth", str(data), "--products", "200", "--seed", "1", "--image-size", "32")
    trained = run("train", str(data), "--out", str(bundle), "--epochs-text", "3", "--epochs-image", "3",
                  "--image-size", "32", "--image-weights", "none")
    return root, data, bundle, trained


def test_train_prints_bundle_and_scores(flow):
    _, _, bundle, trained = flow
    assert f"bundle: {bundle}" in trained.stdout
    assert "held-out test: weighted F1" in trained.stdout
    assert "gate: " in trained.stdout  # the pipeline's register step ran
    assert (bundle / "manifest.json").is_file()
    # The default console: a line per step start and end, not kfp.local's executor dumps; no colour codes in a pipe.
    for step in ("preprocess", "train-lstm", "train-vgg16", "fit-ensemble", "evaluate", "register"):
        assert f"{step}: started\n" in trained.stdout and f"\n{step}: SUCCESS in " in trained.stdout
    assert "executor_input" not in trained.stdout and "\x1b" not in trained.stdout
    assert "text epoch 1: train loss " in trained.stdout  # progress from inside a step
    assert len(trained.stdout.splitlines()) <= 40


def test_train_logged_to_mlflow(flow):
    from mlflow.tracking import MlflowClient

    from rakuten_mm.tracking import TrackingConfig

    cfg = TrackingConfig.from_env()
    client = MlflowClient(cfg.uri)
    experiment = client.get_experiment_by_name("rakuten")
    runs = client.search_runs([experiment.experiment_id])
    # `rakuten train` runs the local Kubeflow pipeline: one parent run, a nested run per member.
    run_ = next(r for r in runs if r.data.params.get("bundle_uri") == str(flow[2]))
    assert run_.info.status == "FINISHED"
    assert {"test_weighted_f1", "test_text_weighted_f1", "epoch_val_text_weighted_f1", "gate_promoted"} <= set(
        run_.data.metrics)
    history = client.get_metric_history(run_.info.run_id, "epoch_train_text_loss")
    assert [m.step for m in history] == [1, 2, 3][: len(history)] and len(history) >= 2
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run_.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["image member", "text member"]
    assert "report" in {a.path for a in client.list_artifacts(run_.info.run_id)}
    # The bundle is the run's logged MLflow model (a pyfunc wrapping it), not a second artifact copy.
    assert len(client.get_run(run_.info.run_id).outputs.model_outputs) == 1


def test_in_process_training_logs_to_mlflow(flow, tmp_path):
    from mlflow.tracking import MlflowClient

    from rakuten_mm.tracking import TrackingConfig

    _, data, _, _ = flow
    out = tmp_path / "bundle"
    run("train", str(data), "--out", str(out), "--in-process", "--epochs-text", "2", "--epochs-image", "1",
        "--image-size", "32", "--image-weights", "none", "--members", "text")
    client = MlflowClient(TrackingConfig.from_env().uri)
    runs = client.search_runs([client.get_experiment_by_name("rakuten").experiment_id])
    run_ = next(r for r in runs if r.data.params.get("out") == str(out))
    assert {"test_weighted_f1", "epoch_val_text_weighted_f1"} <= set(run_.data.metrics)
    assert {"bundle", "reports"} <= {a.path for a in client.list_artifacts(run_.info.run_id)}


def test_evaluate_json_has_the_contract_keys(flow, tmp_path):
    _, data, bundle, _ = flow
    out = run("evaluate", str(bundle), str(data), "--json", "--report-dir", str(tmp_path))
    result = json.loads(out.stdout)
    for key in ("weighted_f1", "macro_f1", "accuracy", "per_class"):
        assert key in result
    for member in ("text", "image"):
        assert {"weighted_f1", "macro_f1", "accuracy"} <= set(result["members"][member])
    assert result["rows"] == len(pd.read_csv(data / "Y_train_CVw08PX.csv"))
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "confusion_matrix_text.csv").is_file()
    test_only = json.loads(run("evaluate", str(bundle), str(data), "--json", "--split", "test").stdout)
    splits = json.loads((bundle / "splits.json").read_text())
    assert test_only["rows"] == len(splits["test"])


def test_predict_writes_one_row_per_test_product(flow):
    root, data, bundle, _ = flow
    out = root / "predictions.csv"
    run("predict", str(bundle), str(data), "--out", str(out))
    preds = pd.read_csv(out, index_col=0)
    test = pd.read_csv(data / "X_test_update.csv", index_col=0)
    assert preds.index.equals(test.index)
    assert list(preds.columns) == ["productid", "imageid", "prdtypecode", "category", "probability"]
    assert preds["probability"].between(0, 1).all()
    from rakuten_mm.labels import KNOWN_CODES

    assert preds["prdtypecode"].isin(KNOWN_CODES).all()


@pytest.mark.parametrize(("args", "message"), [
    (["train", "{missing}", "--out", "{tmp}/b", "--image-weights", "none"], "no such directory"),
    (["train", "{data}", "--out", "{tmp}/b", "--image-weights", "imagenet", "--epochs-text", "1"],
     "Allowed --image-weights: imagenet"),
    (["train", "{data}", "--out", "{tmp}/b", "--members", "text,audio"], "members must be distinct names"),
    (["train", "{data}", "--out", "{tmp}/b", "--no-tracking"], "--no-tracking needs --in-process"),
    (["evaluate", "{tmp}", "{data}"], "manifest.json is missing"),
    (["data", "synth", "{tmp}/s", "--products", "5"], "products must be"),
])
def test_user_errors_are_one_line_without_traceback(flow, tmp_path, args, message, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached ImageNet weights
    for proxy in ("HTTPS_PROXY", "https_proxy"):  # and no download, even on a machine with network access
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    _, data, _, _ = flow
    argv = [a.format(missing=tmp_path / "nope", tmp=tmp_path, data=data) for a in args]
    proc = run(*argv, check=False)
    assert proc.returncode == 1
    # The WHOLE stderr is one line: no warning, log line or traceback around the error.
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "b").exists()  # nothing half-written
