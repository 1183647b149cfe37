"""Pipeline steps: one function per Kubeflow component, plain values in and out.

Each wraps one stage of :mod:`rakuten_mm.training` with its MLflow tracking, so a component (``components/``) is
its typed interface plus one call here. Kubeflow objects enter only as plain callables and dicts (an artifact's
``log_metric``, ``log_confusion_matrix``, ``metadata``): this module never imports kfp.

Tracking: ``preprocess`` opens the parent MLflow run (one per pipeline run) and every later step logs into it by
id; each member trains in a nested run. A failing step tags its runs with the error and marks them FAILED before
re-raising (a retried step that then succeeds is followed by the next steps as usual); ``register`` finishes the
parent run. Each step logs its own duration as ``step_seconds_<step>`` on the parent run.

Nothing leaves the pipeline's artifact store before ``register``: the bundle is built into ``fit_ensemble``'s
output, verified by ``evaluate`` and published to ``bundle_uri`` by ``register`` just before it is registered
(publishing is atomic: a rename locally, the manifest uploaded last on S3). A run that fails before ``register``
therefore publishes and registers nothing; if registration itself fails, the published bundle stays unregistered.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

from rakuten_mm import bundle, registry, storage, training
from rakuten_mm.config import TrainConfig, resolve_device
from rakuten_mm.data import DataOptions
from rakuten_mm.report import HEADLINE, render_html
from rakuten_mm.tracking import Tracker, TrackingConfig

MetricLogger = Callable[[str, float], None]
ConfusionLogger = Callable[[list[str], list[list[int]]], None]
Metadata = MutableMapping[str, Any]

EVALUATION = "evaluation.json"
SKIPPED = "skipped.json"
NO_CHAMPION_SCORE = -1.0  # champion_val_weighted_f1 when there was no champion to compare with


class Preprocessed(NamedTuple):
    mlflow_run_id: str
    train_config: str  # TrainConfig as JSON, built once here and handed to every later step
    data_version: str


class Fitted(NamedTuple):
    val_weighted_f1: float


class Evaluated(NamedTuple):
    test_weighted_f1: float


class Registered(NamedTuple):
    bundle_uri: str
    promoted: bool
    model_version: str
    challenger_val_weighted_f1: float
    champion_val_weighted_f1: float  # NO_CHAMPION_SCORE when there was no champion
    champion_version: str  # "" when there was no champion
    decision: str


def dump_train_config(cfg: TrainConfig) -> str:
    """The configuration as the JSON string handed from step to step."""
    return json.dumps(cfg.to_json(), sort_keys=True)


def load_train_config(text: str) -> TrainConfig:
    return TrainConfig.from_json(json.loads(text))


def servable_uri(uri: str) -> str:
    """Kubeflow's MinIO artifact URIs (``minio://bucket/key``) as the ``s3://`` URIs KServe and boto3 read."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def _tracker(tracking_uri: str, experiment: str, run_id: str) -> Tracker:
    return Tracker(TrackingConfig.from_env(tracking_uri or None, experiment), run_id)


@contextlib.contextmanager
def _step(name: str, started: float, parent: Tracker, *more: Tracker) -> Iterator[None]:
    """Log the step's time since ``started`` to the parent run; on failure tag and fail the runs, re-raise."""
    try:
        yield
    except BaseException as exc:
        for tracker in (*more, parent):
            # Best effort: the step's own error is what the user must see, not a tracking-server hiccup.
            with contextlib.suppress(Exception):
                tracker.client.set_tag(tracker.run_id, "error", f"{name}: {exc}"[:5000])
                tracker.finish("FAILED")
        raise
    parent.metrics({f"step_seconds_{name}": time.perf_counter() - started})


def _headline(scores: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {f"{prefix}{k}": float(scores[k]) for k in HEADLINE}
    for name, member in scores.get("members", {}).items():
        out.update({f"{prefix}{name}_{k}": float(member[k]) for k in HEADLINE})
    return out


def _log(log_metric: MetricLogger | None, metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if log_metric:
            log_metric(key, value)


def preprocess(data_uri: str, dataset_dir: str, *, on_bad_rows: str, on_missing_image: str,
               tracking_uri: str = "", experiment: str = "rakuten", run_name: str = "",
               tags: dict[str, str] | None = None, metadata: Metadata | None = None,
               **train_options: Any) -> Preprocessed:
    """Build the configuration from the pipeline's parameters (fail fast), open the parent run, validate the data
    and record the split. ``train_options``: :class:`TrainConfig`'s fields, as the pipeline passes them."""
    started = time.perf_counter()
    cfg = TrainConfig.from_json(train_options)
    options = DataOptions(on_bad_rows=on_bad_rows, on_missing_image=on_missing_image)  # type: ignore[arg-type]
    tracking = TrackingConfig.from_env(tracking_uri or None, experiment)
    parent = Tracker.start(tracking, run_name=run_name or "rakuten-training",
                           tags={k: v for k, v in (tags or {}).items() if v})
    with _step("preprocess", started, parent):
        parent.params({**cfg.to_json(), "data_uri": data_uri, **vars(options)})
        prepared = training.preprocess(data_uri, Path(dataset_dir), options, cfg.seed, cfg.val_fraction,
                                       cfg.test_fraction)
        parent.params({"data_version": prepared.version})
        parent.client.log_text(parent.run_id, prepared.report, "data/validation_report.txt")
    if metadata is not None:
        metadata.update({"data_uri": data_uri, "version": prepared.version, "report": prepared.report,
                         "rows": {split: len(ids) for split, ids in prepared.splits.items()}})
    return Preprocessed(parent.run_id, dump_train_config(cfg), prepared.version)


def preprocess_parameters(parameters: dict[str, Any], dataset_dir: str,
                          metadata: Metadata | None = None) -> Preprocessed:
    """The preprocess component's parameters, by name (TrainConfig's fields, data options, tracking, KFP run)."""
    p = dict(parameters)
    p.pop("dataset", None)
    return preprocess(p.pop("data_uri"), dataset_dir, on_bad_rows=p.pop("on_bad_rows"),
                      on_missing_image=p.pop("on_missing_image"), tracking_uri=p.pop("mlflow_tracking_uri"),
                      experiment=p.pop("mlflow_experiment"), run_name=p["kfp_run_name"],
                      tags={"kfp.run_id": p.pop("kfp_run_id"), "kfp.run_name": p.pop("kfp_run_name")},
                      metadata=metadata, **p)


def train_member(member: str, dataset_dir: str, model_dir: str, *, train_config: str, mlflow_run_id: str,
                 tracking_uri: str = "", experiment: str = "rakuten", log_metric: MetricLogger | None = None,
                 metadata: Metadata | None = None) -> None:
    """Train one ensemble member (``text`` or ``image``) in a nested MLflow run, with per-epoch curves."""
    started = time.perf_counter()
    stages = training.STAGES
    cfg = load_train_config(train_config)
    out = Path(model_dir)
    if member not in cfg.members:
        out.mkdir(parents=True, exist_ok=True)
        bundle.write_json(out / SKIPPED, {"member": member, "members": list(cfg.members)})
        if metadata is not None:
            metadata.update({"member": member, "skipped": True})
        return
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    child = Tracker.start(parent.cfg, run_name=f"{member} member", parent_run_id=parent.run_id,
                          tags={"member": member})

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        curve = {k: v for k, v in record.items() if k != "epoch"}
        child.metrics(curve, step=epoch)
        parent.metrics(curve, step=epoch, prefix=f"{member}_")

    with _step(f"train_{member}", started, parent, child):
        child.params(cfg.to_json())
        scores = stages[member](training.load_prepared(Path(dataset_dir)), out, cfg, on_epoch=on_epoch)
        child.metrics(_headline(scores, "val_"))
        child.finish()
        parent.metrics(_headline(scores, f"val_{member}_"))
    _log(log_metric, {**_headline(scores, "val_"), "val_rows": float(scores["rows"])})
    if metadata is not None:
        metadata.update({"member": member, "mlflow_run_id": child.run_id, "val_weighted_f1": scores["weighted_f1"]})


def fit_ensemble(dataset_dir: str, text_dir: str, image_dir: str, bundle_dir: str, *, train_config: str,
                 mlflow_run_id: str, tracking_uri: str = "", experiment: str = "rakuten",
                 log_metric: MetricLogger | None = None, metadata: Metadata | None = None) -> Fitted:
    """Tune the ensemble weights on the validation split and build the bundle into ``bundle_dir``."""
    started = time.perf_counter()
    cfg = load_train_config(train_config)
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    members = training.member_dirs(Path(text_dir), Path(image_dir), cfg)
    with _step("fit_ensemble", started, parent):
        metrics = training.fit_ensemble(training.load_prepared(Path(dataset_dir)), members, bundle_dir, cfg)
        weights = {f"weight_{k}": float(v) for k, v in metrics["weights"].items()}
        scores = {**_headline(metrics["val"], "val_"), **_headline(metrics["test"], "test_"), **weights}
        parent.metrics(scores)
        parent.params({"ensemble_weights": json.dumps(metrics["weights"], sort_keys=True)})
    _log(log_metric, scores)
    if metadata is not None:
        metadata.update({"data_version": metrics["data_version"], "weights": metrics["weights"],
                         "members": list(members), "format": bundle.FORMAT_VERSION})
    return Fitted(float(metrics["val"]["weighted_f1"]))


def evaluate(dataset_dir: str, bundle_dir: str, evaluation_dir: str, *, mlflow_run_id: str, tracking_uri: str = "",
             experiment: str = "rakuten", log_metric: MetricLogger | None = None,
             log_confusion_matrix: ConfusionLogger | None = None, metadata: Metadata | None = None) -> Evaluated:
    """Load the bundle as serving does (checksums verified) and score it on the recorded test split."""
    started = time.perf_counter()
    import pandas as pd

    from rakuten_mm.inference import evaluate_rows
    from rakuten_mm.model import load_bundle

    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    out = Path(evaluation_dir)
    with _step("evaluate", started, parent):
        prepared = training.load_prepared(Path(dataset_dir))
        config = bundle.verify(Path(bundle_dir))
        # This step may run without the training steps' GPU: "cuda" degrades to "auto" here.
        model = load_bundle(bundle_dir, resolve_device("cpu" if config["train_config"]["device"] == "cpu"
                                                              else "auto"))
        with storage.local_copy(prepared.data_uri) as root:
            result = evaluate_rows(model, prepared.rows("test"), root, report_dir=out)
        files = {k: Path(v).name for k, v in result.pop("confusion_matrix").items()}
        bundle.write_json(out / EVALUATION, {**result, "split": "test", "files": files})
        parent.artifact(out, "evaluation")
        scores = _headline(result, "test_")
        parent.metrics({f"bundle_{k}": v for k, v in scores.items()})
        matrix = pd.read_csv(out / files["csv"], index_col=0).to_numpy().astype(int).tolist()
    _log(log_metric, {**scores, "test_rows": float(result["rows"])})
    if log_confusion_matrix:
        labels = model.labels
        log_confusion_matrix([f"{n} ({c})" for c, n in zip(labels.codes, labels.names, strict=True)], matrix)
    if metadata is not None:
        metadata.update({"split": "test", "rows": result["rows"]})
    return Evaluated(float(result["weighted_f1"]))


def register(dataset_dir: str, bundle_dir: str, evaluation_dir: str, report_path: str, *, bundle_uri: str,
             bundle_artifact_uri: str, mlflow_run_id: str, tracking_uri: str = "", experiment: str = "rakuten",
             min_improvement: float = 0.0, model_name: str = registry.MODEL_NAME,
             metadata: Metadata | None = None) -> Registered:
    """Publish the verified bundle, register it as a new model version, apply the gate, write the report.

    ``bundle_uri`` empty: the bundle stays where the pipeline's artifact store put it (``bundle_artifact_uri``).
    """
    started = time.perf_counter()
    min_improvement = registry.check_min_improvement(min_improvement)
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    src = Path(bundle_dir)
    with _step("register", started, parent):
        bundle.verify(src)
        metrics = json.loads((src / "metrics.json").read_text())
        published = (storage.publish_dir(src, bundle_uri, last=bundle.MANIFEST) if bundle_uri
                     else servable_uri(bundle_artifact_uri))
        gate = registry.register_bundle(parent, src, metrics["val"]["weighted_f1"], min_improvement, model_name,
                                        tags={"bundle_uri": published, "data_version": metrics["data_version"],
                                              "test_weighted_f1": repr(float(metrics["test"]["weighted_f1"]))})
        evaluation = json.loads((Path(evaluation_dir) / EVALUATION).read_text())
        png = Path(evaluation_dir) / evaluation["files"]["png"]
        data_uri = json.loads((Path(dataset_dir) / training.PREPARED).read_text())["data_uri"]
        context = {"data": data_uri, "bundle": published, "MLflow run": parent.run_id,
                   "MLflow experiment": parent.cfg.experiment}
        report = Path(report_path)
        report.parent.mkdir(parents=True, exist_ok=True)
        page = render_html(metrics=metrics, evaluation=evaluation, gate=gate.to_json(), context=context,
                           confusion_png=png.read_bytes() if png.is_file() else None)
        report.write_text(page)
        parent.client.log_text(parent.run_id, page, "report/report.html")
        parent.params({"registered_model": model_name, "model_version": gate.version, "bundle_uri": published,
                       "min_improvement": min_improvement})
        parent.metrics({"gate_promoted": float(gate.promoted), "challenger_val_weighted_f1": gate.challenger_score,
                        **({"champion_val_weighted_f1": gate.champion_score} if gate.champion_score is not None
                           else {})})
        parent.client.set_tag(parent.run_id, "gate", gate.reason)
    parent.finish()
    if metadata is not None:
        metadata.update({"gate": gate.to_json()})
    return Registered(bundle_uri=published, promoted=gate.promoted, model_version=gate.version,
                      challenger_val_weighted_f1=gate.challenger_score,
                      champion_val_weighted_f1=NO_CHAMPION_SCORE if gate.champion_score is None
                      else gate.champion_score,
                      champion_version=gate.champion_version or "", decision=gate.reason)
