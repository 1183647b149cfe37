"""MLflow tracking: sqlite + a local artifact directory by default, ``MLFLOW_TRACKING_URI`` overrides.

A :class:`Tracker` wraps one run id and an ``MlflowClient`` (no global mlflow state), so pipeline steps in
separate processes can log into the same run by passing the id along.
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
