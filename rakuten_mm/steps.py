"""Pipeline steps: one function per Kubeflow component, plain values in and out.

Each wraps one stage of :mod:`rakuten_mm.training` with its MLflow tracking, so a component (``components/``) is
its typed interface plus one call here. Kubeflow objects enter only as plain callables and dicts (an artifact's
``log_metric``, ``log_confusion_matrix``, ``metadata``): this module never imports kfp.

Tracking: ``preprocess`` opens the parent MLflow run (one per pipeline run) and every later step logs into it by
id; each member trains in a nested run. A failing step tags its runs with the error and marks them FAILED before
re-raising (a retried step that then succeeds is followed by the next steps as usual); ``register`` finishes the
parent run.

Metric names on the parent run, each figure logged once under one name (:func:`rakuten_mm.tracking.metric_name`,
grammar ``[epoch_]<split>_[<member>_]<metric>``):

- ``val_<metric>``, ``test_<metric>`` (the ensemble) and ``val_<member>_<metric>``, ``test_<member>_<metric>``
  (each member on the rows it has input for), metric ∈ weighted_f1, macro_f1, accuracy: from ``fit_ensemble``
  (the bundle's ``metrics.json``). ``evaluate`` re-scores the published bundle on the same test rows and logs no
  second copy (its figures are in the run's ``evaluation/`` artifacts and the report).
- ``epoch_train_<member>_loss``, ``epoch_val_<member>_weighted_f1``: per-epoch curves (step = epoch) from
  ``train_member``; each member's nested run has the same without the member (``epoch_train_loss``...) and its
  final ``val_<metric>``.
- ``weight_<member>``: the tuned ensemble weights.
- ``gate_promoted``, ``gate_rows``, ``gate_champion_weighted_f1``, ``gate_difference`` (challenger − champion on
  the compared rows), ``gate_difference_low`` / ``_high``, ``gate_confidence``: from ``register``.
- ``step_seconds_<step>``: each step's own duration.

The Kubeflow metrics artifacts of the steps keep their own, step-local names (``test_weighted_f1`` for evaluate,
``gate_challenger_weighted_f1`` for register...): each artifact belongs to one step, so nothing repeats there.

Nothing leaves the pipeline's artifact store before ``register``: the bundle is built into ``fit_ensemble``'s
output, verified by ``evaluate`` and published to ``bundle_uri`` by ``register`` just before it is registered
(publishing is atomic: a rename locally, the manifest uploaded last on S3). A run that fails before ``register``
therefore publishes and registers nothing; if registration itself fails, the published bundle stays unregistered.

The gate (:mod:`rakuten_mm.registry`): ``evaluate`` scores the challenger and the registry's champion on the same
held-out test rows and keeps both models' predicted labels (``compared.npz``); ``register`` runs the paired
bootstrap on them with its margin and moves ``champion`` under the promotion lock.

Batch prediction (``prepare_batch`` → ``predict_shard`` × N → ``merge_predictions``; :mod:`rakuten_mm.batch`)
logs nothing to MLflow: it only reads the registry to resolve a ``models:/`` reference.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rakuten_mm import batch, bundle, data, members, process_exit, registry, storage
from rakuten_mm.config import TrainConfig, resolve_device
from rakuten_mm.data import DataOptions
from rakuten_mm.errors import BundleError
from rakuten_mm.report import HEADLINE, render_html
from rakuten_mm.report import write as write_report
from rakuten_mm.tracking import Tracker, TrackingConfig, epoch_metrics

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from rakuten_mm.labels import LabelMap

# A component's process imports this module to run its step, then exits: without the final garbage collection over
# torch's and MLflow's objects, ~2 s less per step (rakuten_mm.process_exit).
process_exit.skip_final_collection()

MetricLogger = Callable[[str, float], None]
ConfusionLogger = Callable[[list[str], list[list[int]]], None]
Metadata = MutableMapping[str, Any]

EVALUATION = "evaluation.json"
COMPARED = "compared.npz"  # the compared rows' labels and both models' predicted labels (prdtypecodes)
SKIPPED = "skipped.json"
NONE = -1.0  # a register output score (champion's weighted F1, confidence) when there is none


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
    challenger_weighted_f1: float  # on the compared rows (the held-out test rows the champion was scored on)
    champion_weighted_f1: float  # the champion's on the same rows; NONE when there was none or it was not scored
    champion_version: str  # "" when there was no champion
    gate_confidence: float  # the paired bootstrap's share of resamples won by more than the margin; NONE: none
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
        prepared = data.preprocess(data_uri, Path(dataset_dir), options, cfg.seed, cfg.val_fraction,
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
    from rakuten_mm import training

    stages = training.STAGES
    cfg = load_train_config(train_config)
    out = Path(model_dir)
    if not members.trained_by(member, cfg.members):
        out.mkdir(parents=True, exist_ok=True)
        bundle.write_json(out / SKIPPED, {"member": member, "members": list(cfg.members)})
        if metadata is not None:
            metadata.update({"member": member, "skipped": True})
        return
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    child = Tracker.start(parent.cfg, run_name=f"{member} member", parent_run_id=parent.run_id,
                          tags={"member": member})

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        # One line per epoch: a step's tqdm bars are off (its output is a pipe), and this is its progress.
        print(f"{member} epoch {epoch}: train loss {record['train_loss']:.4f}, "
              f"val weighted F1 {record['val_weighted_f1']:.4f}", flush=True)
        child.metrics(epoch_metrics(record), step=epoch)
        parent.metrics(epoch_metrics(record, member), step=epoch)

    with _step(f"train_{member}", started, parent, child):
        child.params(cfg.to_json())
        scores = stages[member](data.load_prepared(Path(dataset_dir)), out, cfg, on_epoch=on_epoch)
        child.metrics(_headline(scores, "val_"))  # the parent gets them from fit_ensemble (val_<member>_...)
        child.finish()
    _log(log_metric, {**_headline(scores, "val_"), "val_rows": float(scores["rows"])})
    if metadata is not None:
        metadata.update({"member": member, "mlflow_run_id": child.run_id, "val_weighted_f1": scores["weighted_f1"]})


def fit_ensemble(dataset_dir: str, text_dir: str, image_dir: str, bundle_dir: str, *, train_config: str,
                 mlflow_run_id: str, tracking_uri: str = "", experiment: str = "rakuten",
                 log_metric: MetricLogger | None = None, metadata: Metadata | None = None) -> Fitted:
    """Tune the ensemble weights (validation split, or out-of-fold) and build the bundle into ``bundle_dir``."""
    started = time.perf_counter()
    from rakuten_mm import training

    cfg = load_train_config(train_config)
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    member_paths = training.member_dirs(Path(text_dir), Path(image_dir), cfg)
    with _step("fit_ensemble", started, parent):
        metrics = training.fit_ensemble(data.load_prepared(Path(dataset_dir)), member_paths, bundle_dir, cfg)
        weights = {f"weight_{k}": float(v) for k, v in metrics["weights"].items()}
        scores = {**_headline(metrics["val"], "val_"), **_headline(metrics["test"], "test_"), **weights}
        parent.metrics(scores)
        parent.params({"ensemble_weights": json.dumps(metrics["weights"], sort_keys=True)})
    _log(log_metric, scores)
    if metadata is not None:
        metadata.update({"data_version": metrics["data_version"], "weights": metrics["weights"],
                         "members": list(member_paths), "format": bundle.FORMAT_VERSION})
    return Fitted(float(metrics["val"]["weighted_f1"]))


def _codes(labels: LabelMap, probs: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.asarray(labels.codes, dtype=np.int64)[probs.argmax(1)] if len(probs) else np.zeros(0, np.int64)


def _champion_on(rows: pd.DataFrame, root: Path, data_version: str, cfg: TrackingConfig, model_name: str,
                 device: torch.device, labels: LabelMap) -> dict[str, Any]:
    """The registry's champion scored on ``rows``: ``version`` (None: no champion), and either ``problem`` (why it
    cannot be scored) or ``held_out`` (a mask of ``rows``), ``probs`` (on those rows, columns in ``labels``' order)
    and its ``data_version``. When the champion was trained on this very data version, the rows its own split used
    for training or validation are left out (by row id): neither model has seen a compared row. Row ids of another
    data version name other rows, so then every row is compared (rows it may have trained on favour the champion:
    the gate errs towards keeping it)."""
    from rakuten_mm.inference import predict_rows
    from rakuten_mm.model import load_bundle

    version = registry.alias_version(cfg, registry.CHAMPION, model_name)
    if version is None:
        return {"version": None}
    try:
        with registry.model_bundle(f"{registry.MODELS_SCHEME}{model_name}/{version}", cfg) as (path, _):
            champion = load_bundle(path, device)
    except BundleError as exc:
        return {"version": version, "problem": f"its bundle does not load ({exc})"}
    theirs, ours = set(champion.labels.codes), set(labels.codes)
    if theirs != ours:
        return {"version": version, "problem": (
            f"its label map differs from the challenger's (prdtypecodes only in the challenger's: "
            f"{sorted(ours - theirs)}; only in the champion's: {sorted(theirs - ours)})")}
    trained_on = champion.config.get("data_version")
    seen = ({int(i) for split in ("train", "val") for i in champion.splits.get(split, [])}
            if trained_on == data_version else set())
    held_out = ~rows.index.isin(list(seen))
    if not held_out.any():
        return {"version": version, "problem": f"its own split trained or tuned on every one of the {len(rows)} test "
                                               f"rows of data version {data_version}"}
    probs, _, _ = predict_rows(champion, rows[held_out], root, desc="champion")
    order = [champion.labels.index_of(code) for code in labels.codes]
    return {"version": version, "held_out": held_out, "probs": probs[:, order], "data_version": trained_on}


def _comparison(rows: pd.DataFrame, ens: np.ndarray, labels: LabelMap, champion: dict[str, Any],
                data_version: str, out: Path) -> dict[str, Any]:
    """Both models on the same rows (all test rows when the champion was not scored): their scores into the
    returned summary (for the report and the metrics), the rows' labels and both models' predicted labels into
    ``compared.npz`` (for the register step's bootstrap)."""
    import numpy as np

    from rakuten_mm.evaluation import score

    mask = champion.get("held_out", np.ones(len(rows), bool))
    y = rows["prdtypecode"].to_numpy(np.int64)[mask]
    y_index = np.array([labels.index_of(c) for c in y], dtype=np.int64)
    predicted = {"challenger": ens[mask], **({"champion": champion["probs"]} if "probs" in champion else {})}
    np.savez(out / COMPARED, y=y, **{name: _codes(labels, probs) for name, probs in predicted.items()})  # type: ignore[arg-type]
    return {"champion_version": champion["version"], "problem": champion.get("problem", ""),
            "rows": len(y), "excluded_rows": len(rows) - len(y), "data_version": data_version,
            "champion_data_version": champion.get("data_version"),
            "scores": {name: {k: v for k, v in score(y_index, probs, labels).items() if k in (*HEADLINE, "rows")}
                       for name, probs in predicted.items()}}


def evaluate(dataset_dir: str, bundle_dir: str, evaluation_dir: str, *, mlflow_run_id: str, tracking_uri: str = "",
             experiment: str = "rakuten", model_name: str = registry.MODEL_NAME,
             log_metric: MetricLogger | None = None, log_confusion_matrix: ConfusionLogger | None = None,
             metadata: Metadata | None = None) -> Evaluated:
    """Load the bundle as serving does (checksums verified) and score it on the recorded test split; score the
    registry's champion on the same rows (less those it trained on) for the gate."""
    started = time.perf_counter()
    import pandas as pd

    from rakuten_mm.evaluation import score_predictions
    from rakuten_mm.inference import predict_rows
    from rakuten_mm.model import load_bundle

    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    out = Path(evaluation_dir)
    with _step("evaluate", started, parent):
        prepared = data.load_prepared(Path(dataset_dir))
        manifest_sha256 = batch.bundle_sha256(Path(bundle_dir))  # register checks it is still this bundle
        config = bundle.verify(Path(bundle_dir))
        # This step may run without the training steps' GPU: "cuda" degrades to "auto" here.
        device = resolve_device("cpu" if config["train_config"]["device"] == "cpu" else "auto")
        model = load_bundle(bundle_dir, device)
        rows = prepared.rows("test")
        with data.images_of(prepared.data_uri, rows) as root:  # the test split's images, nothing else
            ens, probs, present = predict_rows(model, rows, root, desc="evaluate")
            result = score_predictions(model.labels, rows["prdtypecode"], ens, probs, present, report_dir=out)
            champion = _champion_on(rows, root, prepared.version, parent.cfg, model_name, device, model.labels)
        comparison = _comparison(rows, ens, model.labels, champion, prepared.version, out)
        files = {k: Path(v).name for k, v in result.pop("confusion_matrix").items()}
        bundle.write_json(out / EVALUATION, {**result, "split": "test", "files": files, "comparison": comparison,
                                             "bundle_manifest_sha256": manifest_sha256})
        parent.artifact(out, "evaluation")
        # Nothing more on the MLflow run: these are fit_ensemble's test_* figures again (the published bundle,
        # loaded as serving loads it, on the same rows) and the gate's comparison, which register logs.
        scores = _headline(result, "test_")
        same_rows = {f"same_rows_{name}_{k}": float(v) for name, s in comparison["scores"].items()
                     for k, v in s.items() if k != "rows"}
        matrix = pd.read_csv(out / files["csv"], index_col=0).to_numpy().astype(int).tolist()
    _log(log_metric, {**scores, "test_rows": float(result["rows"]), **same_rows,
                      "same_rows": float(comparison["rows"])})
    if log_confusion_matrix:
        labels = model.labels
        log_confusion_matrix([f"{n} ({c})" for c, n in zip(labels.codes, labels.names, strict=True)], matrix)
    if metadata is not None:
        metadata.update({"split": "test", "rows": result["rows"], "champion_version": champion["version"] or "",
                         "compared_rows": comparison["rows"], "champion_problem": comparison["problem"]})
    return Evaluated(float(result["weighted_f1"]))


def load_comparison(evaluation_dir: Path, min_improvement: float) -> registry.Comparison:
    """The evaluate step's measurements → the gate's :class:`~rakuten_mm.registry.Comparison` (bootstrap run here,
    with the register step's margin)."""
    import numpy as np

    summary = json.loads((evaluation_dir / EVALUATION).read_text())["comparison"]
    with np.load(evaluation_dir / COMPARED) as arrays:
        y, challenger = arrays["y"], arrays["challenger"]
        champion = arrays.get("champion")
    return registry.compare(y, challenger, champion, data_version=summary["data_version"],
                            champion_version=summary["champion_version"], problem=summary["problem"],
                            margin=min_improvement)


def register(dataset_dir: str, bundle_dir: str, evaluation_dir: str, report_path: str, *, bundle_uri: str,
             bundle_artifact_uri: str, mlflow_run_id: str, tracking_uri: str = "", experiment: str = "rakuten",
             min_improvement: float = 0.0, model_name: str = registry.MODEL_NAME,
             log_metric: MetricLogger | None = None, metadata: Metadata | None = None) -> Registered:
    """Publish the verified bundle, register it as a new model version (an MLflow model: the pyfunc flavor wrapping
    the bundle), apply the gate, write the report at ``report_path`` (Kubeflow's HTML artifact) and as
    ``report.html`` beside it (:func:`rakuten_mm.report.html_path`; its path is the output artifact's
    ``report_html`` metadata).

    ``bundle_uri`` empty: the bundle stays where the pipeline's artifact store put it (``bundle_artifact_uri``).
    """
    started = time.perf_counter()
    min_improvement = registry.check_min_improvement(min_improvement)
    parent = _tracker(tracking_uri, experiment, mlflow_run_id)
    src = Path(bundle_dir)
    with _step("register", started, parent):
        evaluation = json.loads((Path(evaluation_dir) / EVALUATION).read_text())
        # The bundle evaluate verified and scored, file for file: its contents are not checked again here (that
        # would import torch and scikit-learn into a step that neither trains nor predicts).
        bundle.verify_unchanged(src, evaluation["bundle_manifest_sha256"])
        metrics = json.loads((src / "metrics.json").read_text())
        comparison = load_comparison(Path(evaluation_dir), min_improvement)
        published = (storage.publish_dir(src, bundle_uri, last=bundle.MANIFEST) if bundle_uri
                     else servable_uri(bundle_artifact_uri))
        gate = registry.register_bundle(
            parent, src, comparison, min_improvement, model_name,
            tags={"bundle_uri": published, "data_version": metrics["data_version"],
                  registry.SCORE_TAG: repr(float(metrics["val"]["weighted_f1"])),
                  "test_weighted_f1": repr(float(metrics["test"]["weighted_f1"]))})
        png = Path(evaluation_dir) / evaluation["files"]["png"]
        data_uri = json.loads((Path(dataset_dir) / data.PREPARED).read_text())["data_uri"]
        context = {"data": data_uri, "bundle": published, "MLflow run": parent.run_id,
                   "MLflow experiment": parent.cfg.experiment}
        page = render_html(metrics=metrics, evaluation=evaluation, gate=gate.to_json(), context=context,
                           confusion_png=png.read_bytes() if png.is_file() else None)
        report_html = write_report(report_path, page)
        parent.client.log_text(parent.run_id, page, f"report/{report_html.name}")
        parent.params({"registered_model": model_name, "model_version": gate.version, "bundle_uri": published,
                       "min_improvement": min_improvement})
        boot = comparison.bootstrap
        gate_metrics = {"gate_promoted": float(gate.promoted), "gate_rows": float(comparison.rows),
                        **({"gate_champion_weighted_f1": comparison.champion_score}
                           if comparison.champion_score is not None else {}),
                        **({"gate_difference": boot.difference, "gate_confidence": boot.confidence,
                            "gate_difference_low": boot.low, "gate_difference_high": boot.high} if boot else {})}
        # The challenger's score on the compared rows is the champion's plus the difference (and test_weighted_f1
        # itself when every test row was compared): on the MLflow run only once, through those two.
        parent.metrics(gate_metrics)
        parent.client.set_tag(parent.run_id, "gate", gate.reason[:5000])
    parent.finish()
    _log(log_metric, {**gate_metrics, "gate_challenger_weighted_f1": comparison.challenger_score})
    if metadata is not None:
        metadata.update({"gate": gate.to_json(), "report_html": str(report_html)})
    return Registered(bundle_uri=published, promoted=gate.promoted, model_version=gate.version,
                      challenger_weighted_f1=comparison.challenger_score,
                      champion_weighted_f1=NONE if comparison.champion_score is None else comparison.champion_score,
                      champion_version=comparison.champion_version or "",
                      gate_confidence=NONE if boot is None else boot.confidence, decision=gate.reason)


# ---- batch prediction ----------------------------------------------------------------------------------------------

class Merged(NamedTuple):
    predictions_uri: str
    rows: int
    bundle_sha256: str
    model: str  # the model reference as resolved: models:/NAME/VERSION, or the bundle URI


def prepare_batch(data_uri: str, model: str, predictions_uri: str, shards: int, rows_dir: str, bundle_dir: str, *,
                  on_bad_rows: str, on_missing_image: str, tracking_uri: str = "",
                  rows_metadata: Metadata | None = None, bundle_metadata: Metadata | None = None) -> list[int]:
    """Check the output URI, validate the unlabelled data into ``rows_dir``, resolve ``model`` (a ``models:/``
    reference or a bundle URI) once into ``bundle_dir`` (every shard then uses that very bundle, even if the
    alias moves meanwhile) and return the shard numbers to fan out over."""
    import shutil

    batch.check_shards(shards)
    batch.check_output(predictions_uri)
    options = DataOptions(on_bad_rows=on_bad_rows, on_missing_image=on_missing_image)  # type: ignore[arg-type]
    with registry.model_bundle(model, TrackingConfig.from_env(tracking_uri or None)) as (path, pinned):
        # Files and checksums only: each shard's load_bundle verifies the contents, in the step that loads torch.
        bundle.verify_files(path)
        shutil.copytree(path, bundle_dir)
    digest = batch.bundle_sha256(Path(bundle_dir))
    dataset = data.read_unlabelled(data_uri, options)  # an s3 prefix in place: images streamed, none stored
    batch.write_rows(dataset.frame, Path(rows_dir), {"data_uri": data_uri, "version": dataset.version,
                                                     "model": pinned, batch.HASH_COLUMN: digest})
    bounds = batch.shard_bounds(len(dataset.frame), shards)
    if rows_metadata is not None:
        rows_metadata.update({"data_uri": data_uri, "version": dataset.version, "rows": len(dataset.frame),
                              "report": dataset.report.summary(), "shards": len(bounds)})
    if bundle_metadata is not None:
        bundle_metadata.update({"model": model, "resolved": pinned, batch.HASH_COLUMN: digest})
    return list(range(len(bounds)))


def predict_shard(rows_dir: str, bundle_dir: str, shard: int, shards: int, out_dir: str, *, device: str = "auto",
                  metadata: Metadata | None = None) -> None:
    """Predict shard ``shard`` of ``shards`` (:func:`rakuten_mm.batch.shard_bounds`) with the prepared bundle."""
    from rakuten_mm.inference import predict_rows, predictions_frame
    from rakuten_mm.model import load_bundle

    rows, meta = batch.read_rows(Path(rows_dir))
    start, stop = bounds = batch.shard_bounds(len(rows), shards)[int(shard)]
    part = rows.iloc[start:stop]
    model = load_bundle(bundle_dir, resolve_device(device))
    with data.images_of(meta["data_uri"], part) as root:  # this shard's images, nothing else
        probs, _, _ = predict_rows(model, part, root, batch_size=batch.BATCH_SIZE, desc=f"shard {shard}")
    frame = predictions_frame(model, part, probs).assign(**{batch.HASH_COLUMN: meta[batch.HASH_COLUMN]})
    batch.write_shard(frame, Path(out_dir), int(shard), bounds)
    if metadata is not None:
        metadata.update({"shard": int(shard), "start": start, "stop": stop})


def merge_predictions(shard_dirs: list[str], rows_dir: str, shards: int, predictions_uri: str, out_path: str, *,
                      metadata: Metadata | None = None) -> Merged:
    """Every shard's predictions, in row order, written to ``out_path`` (the pipeline's artifact) and then, in one
    step, to ``predictions_uri``."""
    rows, meta = batch.read_rows(Path(rows_dir))
    frame = batch.merge_shards([Path(d) for d in shard_dirs], rows.index, shards)
    batch.write_output(frame, out_path)
    written = batch.write_output(frame, predictions_uri)
    if metadata is not None:
        metadata.update({"predictions_uri": written, "rows": len(frame), "data_version": meta["version"],
                         "model": meta["model"], batch.HASH_COLUMN: meta[batch.HASH_COLUMN]})
    return Merged(written, len(frame), meta[batch.HASH_COLUMN], meta["model"])
