"""MLflow tracking: sqlite + a local artifact directory by default, ``MLFLOW_TRACKING_URI`` overrides.

A :class:`Tracker` wraps one run id and an ``MlflowClient`` (no global mlflow state), so pipeline steps in
separate processes can log into the same run by passing the id along.

Metric names follow one grammar, ``[epoch_]<split>_[<member>_]<metric>`` (:func:`metric_name`): ``val_weighted_f1``
(the ensemble on the validation split), ``test_text_macro_f1`` (the text member on the test split),
``epoch_val_image_weighted_f1`` and ``epoch_train_text_loss`` (per-epoch curves, step = epoch). A member's own
nested run drops the member: ``val_weighted_f1``, ``epoch_train_loss``. Each figure is logged once, under one name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rakuten_mm.config import state_dir

EXPERIMENT = "rakuten"


@dataclass(frozen=True)
class TrackingConfig:
    uri: str
    experiment: str = EXPERIMENT
    artifact_root: str | None = None

    @classmethod
    def from_env(cls, uri: str | None = None, experiment: str = EXPERIMENT) -> TrackingConfig:
        """Explicit URI, else ``MLFLOW_TRACKING_URI``, else sqlite under the local state directory."""
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return cls(uri, experiment)
        root = state_dir()
        root.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{root / 'mlflow.db'}", experiment, (root / "mlartifacts").as_uri())


def metric_name(split: str, metric: str, member: str | None = None, epoch: bool = False) -> str:
    """The one name of a figure (see the module doc): ``metric_name("val", "weighted_f1", "text", epoch=True)`` →
    ``epoch_val_text_weighted_f1``."""
    return f"{'epoch_' if epoch else ''}{split}_{f'{member}_' if member else ''}{metric}"


def epoch_metrics(record: dict[str, float], member: str | None = None) -> dict[str, float]:
    """One epoch of a member's training history (``{"epoch", "train_loss", "val_weighted_f1"}``) → its curve
    points, named by :func:`metric_name` (``epoch_train_text_loss``...); the epoch itself is the step."""
    out = {}
    for key, value in record.items():
        if key != "epoch":
            split, _, metric = key.partition("_")
            out[metric_name(split, metric, member, epoch=True)] = float(value)
    return out


def mlflow_client(cfg: TrackingConfig) -> Any:
    """An ``MlflowClient`` for ``cfg`` (tracking and registry on the same store), telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg.uri, registry_uri=cfg.uri)


class Tracker:
    """Logs into one MLflow run."""

    def __init__(self, cfg: TrackingConfig, run_id: str) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.client = mlflow_client(cfg)

    @classmethod
    def start(cls, cfg: TrackingConfig, run_name: str, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Tracker:
        client = mlflow_client(cfg)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(cfg.experiment, artifact_location=cfg.artifact_root))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(cfg, run.info.run_id)

    def params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def metrics(self, metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.client.log_metric(self.run_id, f"{prefix}{key}", float(value), step=step or 0)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
