"""MLflow model registry and the promotion gate (plain ``MlflowClient``; no kfp).

Every trained bundle becomes a new version of the registered model ``rakuten-product-classifier``, and every
version is an MLflow model: the bundle is wrapped in a ``python_function`` flavor (:mod:`rakuten_mm.mlflow_model`:
the bundle directory is the model's only artifact, with a signature, an input example and pinned
requirements), logged as the pipeline run's logged model ``model`` (the run page lists it under "Logged models")
and registered from there, so ``mlflow.pyfunc.load_model("models:/rakuten-product-classifier@champion")`` loads
it. :func:`model_bundle` finds the bundle inside a version's artifacts (or takes the version's directory as the
bundle itself, as registered before the flavor existed). The new version gets alias ``challenger``.

The gate compares like with like. The pipeline's evaluate step scores the challenger **and** the current champion
(the bundle of the version alias ``champion`` points at) on the same rows: the challenger's held-out test split,
of this run's data version. When the champion was trained on that same data version, the rows its own split used
for training or validation (row ids of its ``splits.json``) are left out, so neither model has seen a compared row
(another data version's row ids name other rows: then every test row is compared, which can only favour the
champion). Alias ``champion`` moves to the challenger only when
its weighted F1 on those rows beats the champion's by more than ``min_improvement``. A paired bootstrap over the
rows (:func:`paired_bootstrap`: resample rows with replacement, rescore both models on each resample) gives the
confidence reported next to the decision: the share of resamples in which the challenger wins by more than the
margin, with a 95% interval of the difference. Validation scores play no part: the challenger's validation split
chose its epoch and ensemble weights, and the champion's came from another split.

The gate does not promote, and says why, when the champion cannot be scored on the rows (its bundle does not
load, or its label map differs from the challenger's, so the two models answer different questions) or when no row
is left to compare. The first version becomes champion.

Concurrent runs: moving the alias happens under a promotion lock, a registered model named
``<model>.promotion-lock`` that only one run can create (the registry's unique model names make the create atomic)
and that is deleted right after. Under the lock the gate re-reads ``champion``: if it no longer points at the
version this run was compared with (another run moved it meanwhile), this run is not promoted and its decision says
so, so two runs registering at the same moment never both win on a stale comparison. A lock older than
:data:`LOCK_STALE_SECONDS` was left by a step that died while holding it and is broken; a lock held longer than
the timeout otherwise fails the step with a clear error.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rakuten_mm import storage
from rakuten_mm.errors import ConfigError, RakutenError
from rakuten_mm.tracking import Tracker, TrackingConfig, mlflow_client

MODEL_NAME = "rakuten-product-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
SCORE_TAG = "val_weighted_f1"  # version tag: the bundle's own validation score (informational; not the gate's)
BUNDLE_ARTIFACT_PATH = "bundle"  # the bundle's key in the MLflow model's artifacts (mlflow_model.BUNDLE_ARTIFACT)
LOGGED_MODEL_NAME = "model"  # the run's logged model
MODELS_SCHEME = "models:/"
LOCK_SUFFIX = ".promotion-lock"
LOCK_TIMEOUT_SECONDS = 120.0
LOCK_STALE_SECONDS = 600.0  # the lock is held for a few registry calls: older means its holder died
RESAMPLES = 1000
CONFIDENCE_LEVEL = 0.95  # of the reported interval of the difference

# Gate outcomes (the version's ``gate`` tag).
FIRST, PROMOTED, KEPT, INCOMPARABLE, CHAMPION_MOVED = ("first version", "promoted", "kept the champion",
                                                      "incomparable", "champion moved")


class PromotionLockTimeout(RakutenError):
    """Another registration held the promotion lock for longer than the timeout."""


@dataclass(frozen=True)
class Bootstrap:
    """The paired bootstrap of the weighted-F1 difference challenger − champion over the compared rows."""

    difference: float  # on the rows themselves
    confidence: float  # share of resamples where the challenger wins by more than the margin
    low: float  # CONFIDENCE_LEVEL percentile interval of the difference
    high: float
    resamples: int


@dataclass(frozen=True)
class Comparison:
    """The challenger and the champion on the same rows (what the evaluate step measured for the gate)."""

    rows: int  # compared rows
    data_version: str
    challenger_score: float  # weighted F1 on the compared rows
    champion_version: str | None = None  # None: there was no champion
    champion_score: float | None = None  # None: no champion, or it could not be scored
    problem: str = ""  # why the champion could not be scored on the rows ("" when it was)
    bootstrap: Bootstrap | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    """What ``register_bundle`` did: the new version, the comparison and whether ``champion`` moved."""

    model_name: str
    version: str
    promoted: bool
    outcome: str  # FIRST, PROMOTED, KEPT, INCOMPARABLE or CHAMPION_MOVED
    comparison: Comparison
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


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The challenge metric on labels (prdtypecodes): :func:`resampled_weighted_f1` with every row drawn once,
    sklearn's weighted F1 to rounding (the unit tests hold the two equal). The register step then loads no
    scikit-learn for the figures it already computes for the bootstrap."""
    return float(resampled_weighted_f1(y_true, y_pred, np.ones((1, len(y_true))))[0])


def resampled_weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Weighted F1 of ``y_pred`` on each resample at once: ``counts[r, i]`` is how often row ``i`` is drawn in
    resample ``r``. Per class F1 = 2 TP / (support + predicted), weighted by support (sklearn's ``average=
    "weighted"`` with ``zero_division=0``; the unit tests hold the two equal), as one matrix product per term
    instead of a thousand sklearn calls."""
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    truth, guess = codes[:len(y_true)], codes[len(y_true):]
    onehot = np.eye(len(classes))
    support, predicted = counts @ onehot[truth], counts @ onehot[guess]
    hits = counts @ (onehot[truth] * (truth == guess)[:, None])
    denominator = support + predicted
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return np.asarray((f1 * support).sum(1) / support.sum(1))


def paired_bootstrap(y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray, margin: float,
                     resamples: int = RESAMPLES, seed: int = 0, chunk: int = 100) -> Bootstrap:
    """Resample the rows with replacement (the same draw for both models) and rescore both on each resample."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        diffs.append(resampled_weighted_f1(y_true, challenger, counts)
                     - resampled_weighted_f1(y_true, champion, counts))
    diff = np.concatenate(diffs)
    tail = (1 - CONFIDENCE_LEVEL) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return Bootstrap(difference=weighted_f1(y_true, challenger) - weighted_f1(y_true, champion),
                     confidence=float(np.mean(diff > margin)), low=float(low), high=float(high), resamples=resamples)


def compare(y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, *, data_version: str,
            champion_version: str | None, problem: str = "", margin: float = 0.0, resamples: int = RESAMPLES,
            seed: int = 0) -> Comparison:
    """Both models' predicted labels on the same rows → the :class:`Comparison` the gate decides on."""
    margin = check_min_improvement(margin)
    comparison = Comparison(rows=len(y_true), data_version=data_version,
                            challenger_score=weighted_f1(y_true, challenger), champion_version=champion_version,
                            problem=problem)
    if champion is None or problem or not len(y_true):
        return comparison
    return replace(comparison, champion_score=weighted_f1(y_true, champion),
                   bootstrap=paired_bootstrap(y_true, challenger, champion, margin, resamples, seed))


def decide(challenger: float, champion: float | None, min_improvement: float) -> tuple[bool, str]:
    """Promote when there is no champion, or the challenger beats it by more than the margin (same rows)."""
    min_improvement = check_min_improvement(min_improvement)
    if champion is None:
        return True, f"no champion yet: the first version becomes champion (weighted F1 {challenger:.4f})"
    if challenger > champion + min_improvement:
        return True, (f"promoted: weighted F1 {challenger:.4f} beats the champion's {champion:.4f} by more than "
                      f"{min_improvement:.4f}")
    return False, (f"kept the champion: weighted F1 {challenger:.4f} does not beat the champion's {champion:.4f} "
                   f"by more than {min_improvement:.4f}")


def gate(comparison: Comparison, min_improvement: float) -> tuple[str, str]:
    """(outcome, reason) for a comparison: :data:`FIRST`, :data:`PROMOTED`, :data:`KEPT` or :data:`INCOMPARABLE`."""
    c = comparison
    if c.champion_version is None:
        return FIRST, decide(c.challenger_score, None, min_improvement)[1]
    where = f"on the same {c.rows} held-out test rows (data version {c.data_version})"
    if c.problem or c.champion_score is None or c.bootstrap is None:
        why = c.problem or "no held-out row is left to compare"
        return INCOMPARABLE, (f"not promoted: champion version {c.champion_version} cannot be scored {where}: {why}; "
                              "compare the two by hand and move alias champion if the new version should serve")
    promoted, reason = decide(c.challenger_score, c.champion_score, min_improvement)
    b = c.bootstrap
    return (PROMOTED if promoted else KEPT), (
        f"{reason} {where} (champion version {c.champion_version}); paired bootstrap: the challenger wins by more "
        f"than the margin in {b.confidence:.1%} of {b.resamples} resamples, {CONFIDENCE_LEVEL:.0%} interval of the "
        f"difference [{b.low:+.4f}, {b.high:+.4f}]")


# ---- the registry --------------------------------------------------------------------------------------------------

def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _exists(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


def _champion_version(client: Any, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        return None
    return None if version is None else str(version)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        try:
            client.create_registered_model(name, description="Rakuten France product classifier: model bundles "
                                                             "(LSTM text + VGG16 image + weighted ensemble)")
        except MlflowException as again:  # another run created it meanwhile
            if not _exists(again):
                raise


@contextlib.contextmanager
def promotion_lock(client: Any, name: str, timeout: float = LOCK_TIMEOUT_SECONDS,
                   stale_after: float = LOCK_STALE_SECONDS) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` for the block (see the module doc)."""
    from mlflow.exceptions import MlflowException

    lock, holder = f"{name}{LOCK_SUFFIX}", uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder}, description=(
                f"promotion lock of {name}: held while a pipeline run moves its champion alias; deleted right after"))
            break
        except MlflowException as exc:
            if not (_exists(exc) or _missing(exc)):  # missing: released between the create and its error's lookup
                raise
        with contextlib.suppress(MlflowException):
            held = client.get_registered_model(lock)
            if time.time() - held.creation_timestamp / 1000 > stale_after:
                client.delete_registered_model(lock)  # its holder died while holding it
                continue
        if time.monotonic() > deadline:
            raise PromotionLockTimeout(
                f"another run has held the promotion lock of {name} for over {timeout:.0f} s; if no run is "
                f"registering, delete the registered model {lock!r} and rerun")
        time.sleep(0.05 + 0.2 * np.random.default_rng().random())
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def log_bundle_model(tracker: Tracker, bundle_dir: Path) -> tuple[str, str]:
    """Log ``bundle_dir`` wrapped in the pyfunc flavor as the logged model of the tracker's run (what
    ``mlflow.pyfunc.log_model`` does, through the tracker's client instead of mlflow's global tracking URI and active
    run) → (the logged model's id, its artifact location: the source of the model version)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from rakuten_mm import mlflow_model

    client = tracker.client
    run = client.get_run(tracker.run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=LOGGED_MODEL_NAME, source_run_id=tracker.run_id)
    try:
        client.log_outputs(tracker.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="rakuten-mlmodel-") as tmp:
            local = Path(tmp) / "model"
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=tracker.run_id,
                         model_id=logged.model_id)
            mlflow_model.save(bundle_dir, local, meta)
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        with contextlib.suppress(Exception):  # the registration's own error is the one to see
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id, logged.artifact_location


def register_bundle(tracker: Tracker, bundle_dir: Path, comparison: Comparison, min_improvement: float = 0.0,
                    model_name: str = MODEL_NAME, tags: dict[str, str] | None = None,
                    lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> GateDecision:
    """Log ``bundle_dir`` as the tracker's run's logged model (the pyfunc flavor), register it as a new version and
    apply the gate to
    ``comparison`` (the challenger and the champion it names, on the same rows)."""
    min_improvement = check_min_improvement(min_improvement)
    client = tracker.client
    model_id, source = log_bundle_model(tracker, Path(bundle_dir))
    _ensure_registered_model(client, model_name)
    version = str(client.create_model_version(model_name, source, run_id=tracker.run_id, tags=tags or {},
                                              model_id=model_id).version)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    outcome, reason = gate(comparison, min_improvement)
    promoted = outcome in (FIRST, PROMOTED)
    if promoted:
        with promotion_lock(client, model_name, lock_timeout):
            now = _champion_version(client, model_name)
            if now == comparison.champion_version:
                client.set_registered_model_alias(model_name, CHAMPION, version)
            else:
                compared = comparison.champion_version
                outcome, promoted = CHAMPION_MOVED, False
                reason = (f"not promoted: alias champion moved to version {now} while this run was compared with "
                          f"{'no champion' if compared is None else f'version {compared}'} (another run registered "
                          f"meanwhile); rerun to compare with the new champion. The comparison was: {reason}")
    client.set_model_version_tag(model_name, version, "gate", outcome)
    client.set_model_version_tag(model_name, version, "gate_reason", reason[:5000])
    return GateDecision(model_name=model_name, version=version, promoted=promoted, outcome=outcome,
                        comparison=comparison, min_improvement=min_improvement, reason=reason, source=source)


def alias_version(cfg: TrackingConfig, alias: str, model_name: str = MODEL_NAME) -> str | None:
    """The version an alias points at, or None (e.g. before the first registration)."""
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow_client(cfg).get_registered_model(model_name).aliases.get(alias)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        return None
    return None if version is None else str(version)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` → (NAME, ALIAS, None); ``models:/NAME/VERSION`` → (NAME, None, VERSION)."""
    rest = uri[len(MODELS_SCHEME):] if uri.startswith(MODELS_SCHEME) else ""
    name, at, alias = rest.partition("@")
    if at and name and alias and "/" not in alias:
        return name, alias, None
    name, slash, number = rest.rpartition("/")
    if slash and name and number.isdigit():
        return name, None, number
    raise ConfigError(f"a registry model reference is models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")


def resolve_version(cfg: TrackingConfig, uri: str) -> tuple[str, str]:
    """A ``models:/`` reference → (its pinned form ``models:/NAME/VERSION``, the version's artifact URI)."""
    from mlflow.exceptions import MlflowException

    name, alias, number = parse_model_uri(uri)
    client = mlflow_client(cfg)
    try:
        number = str(client.get_model_version_by_alias(name, alias).version) if alias else number
        return f"{MODELS_SCHEME}{name}/{number}", client.get_model_version_download_uri(name, str(number))
    except MlflowException as exc:
        if not _missing(exc) and getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise
        raise ConfigError(f"{uri} names no model version in the registry at {cfg.uri} ({exc.message}); "
                          "train and register one first, or pass a bundle URI") from None


@contextlib.contextmanager
def model_bundle(ref: str, cfg: TrackingConfig) -> Iterator[tuple[Path, str]]:
    """A local directory holding the bundle ``ref`` names, and ``ref`` pinned: a ``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION`` registry reference (downloaded from the version's artifacts, the copy the registry
    keeps; the bundle inside the version's MLflow model) → ``models:/NAME/VERSION``; a bundle directory or
    ``s3://`` URI → itself."""
    if not ref.startswith(MODELS_SCHEME):
        with storage.local_copy(ref) as root:
            yield root, ref
        return
    from mlflow.artifacts import download_artifacts

    from rakuten_mm.mlflow_model import bundle_in, quiet

    pinned, artifact_uri = resolve_version(cfg, ref)
    with tempfile.TemporaryDirectory(prefix="rakuten-model-") as tmp:
        with quiet():
            local = Path(download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=cfg.uri))
        yield bundle_in(local), pinned
