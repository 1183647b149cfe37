"""MLflow model registry and the promotion gate (plain ``MlflowClient``; no kfp).

Every trained bundle becomes a new version of the registered model ``rakuten-product-classifier``: the bundle
directory is logged as artifacts of the pipeline's MLflow run (``bundle/``) and the version is created from that
run's artifact URI (no ``log_model``: the bundle is the served format). The new version gets alias
``challenger``; alias ``champion`` moves to it only when its validation weighted F1 beats the current champion's
by more than ``min_improvement`` (the first version always becomes champion). The scores are kept as version tags,
so the gate never has to re-read old runs.

Two pipeline runs registering at the same moment can both read the same champion; the later alias write wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rakuten_mm.errors import ConfigError
from rakuten_mm.tracking import Tracker, TrackingConfig, mlflow_client

MODEL_NAME = "rakuten-product-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
SCORE_TAG = "val_weighted_f1"  # version tag: the score the gate compares
BUNDLE_ARTIFACT_PATH = "bundle"


@dataclass(frozen=True)
class GateDecision:
    """What ``register_bundle`` did: the new version, both scores and whether ``champion`` moved."""

    model_name: str
    version: str
    promoted: bool
    challenger_score: float
    champion_version: str | None  # the champion it was compared with (None: there was none)
    champion_score: float | None
    min_improvement: float
    reason: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_min_improvement(value: float) -> float:
    """The gate margin: a finite number in [0, 1] (weighted F1 lives in [0, 1])."""
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"min_improvement must be a number between 0 and 1 (a weighted-F1 margin), got {value}")
    return value


def decide(challenger: float, champion: float | None, min_improvement: float) -> tuple[bool, str]:
    """Promote when there is no champion, or the challenger beats it by more than the margin."""
    min_improvement = check_min_improvement(min_improvement)
    if champion is None:
        return True, f"no champion yet: the first version becomes champion (val weighted F1 {challenger:.4f})"
    if challenger > champion + min_improvement:
        return True, (f"promoted: val weighted F1 {challenger:.4f} beats the champion's {champion:.4f} by more than "
                      f"{min_improvement:.4f}")
    return False, (f"kept the champion: val weighted F1 {challenger:.4f} does not beat the champion's {champion:.4f} "
                   f"by more than {min_improvement:.4f}")


def _champion(client: Any, name: str) -> tuple[str | None, float | None]:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    if version is None:
        return None, None
    tags = client.get_model_version(name, str(version)).tags
    score = tags.get(SCORE_TAG)
    if score is None:
        raise ConfigError(f"champion version {version} of {name} has no {SCORE_TAG!r} tag, so the gate cannot compare "
                          f"against it; tag it (or move the alias) and rerun")
    return str(version), float(score)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Rakuten France product classifier: model bundles "
                                                         "(LSTM text + VGG16 image + weighted ensemble)")


def register_bundle(tracker: Tracker, bundle_dir: Path, score: float, min_improvement: float = 0.0,
                    model_name: str = MODEL_NAME, tags: dict[str, str] | None = None) -> GateDecision:
    """Log ``bundle_dir`` into the tracker's run, register it as a new version and apply the gate."""
    min_improvement = check_min_improvement(min_improvement)
    client = tracker.client
    tracker.artifact(Path(bundle_dir), BUNDLE_ARTIFACT_PATH)
    source = f"{client.get_run(tracker.run_id).info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT_PATH}"
    _ensure_registered_model(client, model_name)
    champion_version, champion_score = _champion(client, model_name)
    version = client.create_model_version(model_name, source, run_id=tracker.run_id,
                                          tags={**(tags or {}), SCORE_TAG: repr(float(score))})
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    promoted, reason = decide(float(score), champion_score, min_improvement)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    client.set_model_version_tag(model_name, version.version, "gate", "promoted" if promoted else "not promoted")
    return GateDecision(model_name=model_name, version=str(version.version), promoted=promoted,
                        challenger_score=float(score), champion_version=champion_version,
                        champion_score=champion_score, min_improvement=min_improvement, reason=reason, source=source)


def alias_version(cfg: TrackingConfig, alias: str, model_name: str = MODEL_NAME) -> str | None:
    """The version an alias points at, or None (e.g. before the first registration)."""
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow_client(cfg).get_registered_model(model_name).aliases.get(alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return None if version is None else str(version)
