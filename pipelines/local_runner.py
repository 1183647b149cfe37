"""Run the training pipeline on this machine with ``kfp.local`` (no cluster): the embedded default.

The graph is :func:`pipelines.training_pipeline.build`'s, the one compiled into ``training.yaml``; every step runs as a
subprocess of the current interpreter (``SubprocessRunner(use_venv=False)``), so the components' imports resolve
in this virtualenv. Resources, accelerators, node selectors and Secrets are ignored locally. Retries are not (kfp
2.17 honours them, back-off included), so the local graph is built without them: here a failed step is a bug or a
user error, which a retry 60 s later would only repeat. ``deploy`` is always False here (no cluster).

Where things go (all under :func:`rakuten_mm.config.state_dir`, ``RAKUTEN_STATE_DIR``):
- ``pipelines/runs/``: the pipeline root, one directory per run with every step's artifacts (dataset split,
  member models, bundle, metrics, the HTML report); kept, like a Kubeflow artifact store.
- MLflow: the sqlite store and artifacts of :class:`rakuten_mm.tracking.TrackingConfig` (unless a tracking URI is
  given), shared by all steps.
- A scratch directory per run, used as ``TMPDIR`` by the steps (kfp's ``mktemp -d`` program dirs, the workspace)
  and removed afterwards, so no ``/tmp/tmp.*`` directories are left behind.

A failing step stops the run. When it failed on a user error (:class:`rakuten_mm.errors.RakutenError`: bad data,
bad option...), that error is raised again here with the step's message (for bad data: the validation report),
so ``rakuten`` prints it as one line; any other failure raises :class:`PipelineFailed`.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.step_log import ANSI, StepLog
from rakuten_mm import errors, storage
from rakuten_mm.config import TrainConfig, state_dir
from rakuten_mm.data import DataOptions
from rakuten_mm.registry import MODEL_NAME, check_min_improvement
from rakuten_mm.report import html_path
from rakuten_mm.tracking import EXPERIMENT

RUNNERS = ("subprocess", "docker")


class PipelineFailed(RuntimeError):
    """A step failed on something other than a user error (a bug, an out-of-memory kill...)."""


def pipeline_arguments(data_uri: str, out_uri: str, cfg: TrainConfig, options: DataOptions = DataOptions(),
                       tracking_uri: str | None = None, experiment: str = EXPERIMENT, min_improvement: float = 0.0,
                       registered_model: str = MODEL_NAME) -> dict[str, Any]:
    """The pipeline's parameters for one training run (also what ``rakuten pipeline submit`` sends)."""
    return {"data_uri": data_uri, "bundle_uri": out_uri, **cfg.pipeline_arguments(), **options.pipeline_arguments(),
            "mlflow_tracking_uri": tracking_uri or "", "mlflow_experiment": experiment,
            "min_improvement": check_min_improvement(min_improvement), "registered_model": registered_model}


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def step_error(log: str, failure: RuntimeError) -> Exception:
    """The error a failed run should raise, from the failed step's traceback in ``log`` (the steps' output).

    The last ``Traceback`` block ends with the exception line (``module.Type: message``) and the message's
    continuation lines; a :class:`RakutenError` type is rebuilt with that message.
    """
    lines = ANSI.sub("", log).splitlines()
    summary = ANSI.sub("", str(failure))
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("Traceback (most recent call last):")]
    if not starts:
        return PipelineFailed(summary)
    indent = len(lines[starts[-1]]) - len(lines[starts[-1]].lstrip())  # kfp indents the steps' output
    tail = [line[indent:] for line in lines[starts[-1] + 1:]]
    first = next((i for i, line in enumerate(tail) if line and not line[0].isspace()), None)
    if first is None:
        return PipelineFailed(summary)
    message_lines = []
    for line in tail[first:]:
        if not line.strip() or line.startswith("[KFP Executor"):
            break
        message_lines.append(line)
    kind, _, message = "\n".join(message_lines).partition(": ")
    module, _, name = kind.rpartition(".")
    error_type = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(error_type, type) and issubclass(error_type, errors.RakutenError):
        return error_type(message)
    return PipelineFailed(f"{summary} {message_lines[0] if message_lines else ''}".strip())


def run_local(data_uri: str, out_uri: str, cfg: TrainConfig, options: DataOptions = DataOptions(),
              tracking_uri: str | None = None, experiment: str = EXPERIMENT, min_improvement: float = 0.0, *,
              registered_model: str = MODEL_NAME, quiet: bool = False, verbose: bool = False,
              runner: str = "subprocess", image: str | None = None) -> dict[str, Any]:
    """Run the pipeline locally; return the bundle's metrics plus ``bundle_uri``, ``gate``, ``mlflow_run_id``,
    ``report`` (the HTML report's path) and ``run_dir`` (the run's artifacts). Console: a line per step start and
    end and the steps' own lines (:mod:`pipelines.step_log`); ``verbose``: kfp.local's whole log; ``quiet``: nothing.
    ``runner``: ``subprocess`` (this venv) or ``docker`` (every step in ``image``, default the pipeline image
    ``components.base.IMAGE``: see :mod:`pipelines.docker_runner`)."""
    from kfp import local

    from pipelines.training_pipeline import ClusterSettings, build

    if not data_uri or not out_uri:
        raise errors.ConfigError(f"a local run needs a data URI and a bundle URI, got {data_uri!r} and {out_uri!r}")
    if runner not in RUNNERS:
        raise errors.ConfigError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if image and runner != "docker":
        raise errors.ConfigError("--image applies to --runner docker (a subprocess run uses this virtualenv)")
    data_uri, out_uri = _absolute(data_uri), _absolute(out_uri)
    if not storage.is_s3(out_uri) and not storage.is_s3(data_uri) and Path(out_uri) in (Path(data_uri),
                                                                                          *Path(data_uri).parents):
        raise errors.ConfigError(f"the bundle would replace the data: --out {out_uri} holds {data_uri}")
    if not storage.is_s3(data_uri) and not Path(data_uri).is_dir():
        # Checked here, before any step starts: a step would report it only after seconds of start-up.
        raise errors.StorageError(f"no such directory: {data_uri}")
    storage.check_writable(out_uri)
    arguments = pipeline_arguments(data_uri, out_uri, cfg, options, tracking_uri, experiment, min_improvement,
                                   registered_model)
    root, scratch = _scratch()
    docker_plan = None
    try:
        if runner == "docker":
            from components.base import IMAGE
            from pipelines import docker_runner

            docker_runner.check_image(docker_runner.docker_client(), image or IMAGE)
            docker_plan = docker_runner.plan(data_uri, out_uri, state_dir(), scratch, tracking_uri, os.environ)
            docker_runner.prepare(docker_plan)
            step_runner: Any = local.DockerRunner(**docker_runner.runner_arguments(docker_plan, os.getgid()))
        else:
            step_runner = local.SubprocessRunner(use_venv=False)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    task = _execute(build(ClusterSettings(retries=0, image=image)), arguments, step_runner, root, scratch, quiet,
                    verbose, finish=None if docker_plan is None else lambda: docker_runner.finish(docker_plan))
    out = task.outputs
    bundle_dir = Path(out["bundle"].path)
    metrics: dict[str, Any] = json.loads((bundle_dir / "metrics.json").read_text())
    gate = {k: out[k] for k in ("promoted", "model_version", "decision", "challenger_weighted_f1",
                                "champion_weighted_f1", "champion_version", "gate_confidence")}
    gate["champion_version"] = gate["champion_version"] or None
    for key in ("champion_weighted_f1", "gate_confidence"):  # -1: no champion, or it could not be scored
        gate[key] = None if gate[key] < 0 else gate[key]
    return {**metrics, "bundle_uri": out["bundle_uri"], "gate": gate, "mlflow_run_id": out["mlflow_run_id"],
            "report": str(html_path(out["report"].path)), "run_dir": str(bundle_dir.parents[1])}


def _scratch() -> tuple[Path, Path]:
    """The pipeline root's parent (under the state dir) and a fresh scratch directory for one run."""
    root = state_dir() / "pipelines"
    (root / "runs").mkdir(parents=True, exist_ok=True)
    tempfile.gettempdir()  # pin this process's own temp dir before TMPDIR changes for the steps
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=root))
    (scratch / "workspace").mkdir()
    return root, scratch


def _execute(pipeline: Any, arguments: dict[str, Any], step_runner: Any, root: Path, scratch: Path, quiet: bool,
             verbose: bool = False, finish: Any = None) -> Any:
    """Run ``pipeline(**arguments)`` with kfp.local and ``step_runner``, steps' temp files in ``scratch`` (removed
    afterwards), its log shown on stdout as :class:`~pipelines.step_log.StepLog` shows it (nothing if ``quiet``);
    ``finish()`` after a successful run. A failed step raises :func:`step_error`'s error."""
    from kfp import local

    log = StepLog(None if quiet else sys.stdout, verbose=verbose)
    # kfp.local indents step logs by swapping builtins.print for the duration of a step; dsl.ParallelFor runs steps
    # in threads, so those swaps interleave and the last restore can leave an indenting print installed for good.
    original_print = builtins.print
    try:
        with _environ(TMPDIR=str(scratch), MLFLOW_DISABLE_TELEMETRY="true"), contextlib.redirect_stdout(log), \
                warnings.catch_warnings():
            # The project image's name does not contain "python"; kfp warns about that for every step.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            # Resources and accelerators are for the cluster; kfp.local says so for every step.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            local.init(runner=step_runner, pipeline_root=str(root / "runs"),
                       workspace_root=str(scratch / "workspace"), raise_on_error=True)
            try:
                task = pipeline(**arguments)
            except RuntimeError as exc:
                raise step_error(log.getvalue(), exc) from None
            finally:
                log.close()
        if finish is not None:
            finish()
    finally:
        builtins.print = original_print
        shutil.rmtree(scratch, ignore_errors=True)
    return task


def batch_arguments(data_uri: str, predictions_uri: str, model: str, shards: int,
                    options: DataOptions = DataOptions(), tracking_uri: str | None = None,
                    device: str = "auto") -> dict[str, Any]:
    """The batch prediction pipeline's parameters (:mod:`pipelines.batch_pipeline`)."""
    from rakuten_mm.batch import check_shards
    from rakuten_mm.config import DEVICES

    if device not in DEVICES:
        raise errors.ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    return {"data_uri": data_uri, "predictions_uri": predictions_uri, "model": model, "shards": check_shards(shards),
            "device": device, **options.pipeline_arguments(), "mlflow_tracking_uri": tracking_uri or ""}


def predict_local(data_uri: str, model: str, predictions_uri: str, shards: int, options: DataOptions = DataOptions(),
                  tracking_uri: str | None = None, device: str = "auto", *, quiet: bool = False,
                  verbose: bool = False) -> dict[str, Any]:
    """Run the batch prediction pipeline locally (subprocess steps, shards in parallel); return
    ``predictions_uri``, ``rows``, ``bundle_sha256``, ``model`` (the reference as resolved, e.g.
    ``models:/NAME/VERSION``) and ``run_dir``."""
    from kfp import local

    from pipelines.batch_pipeline import build
    from pipelines.cluster import ClusterSettings

    if not data_uri or not predictions_uri or not model:
        raise errors.ConfigError(f"batch prediction needs a data URI, a model and a predictions URI, got "
                                 f"{data_uri!r}, {model!r} and {predictions_uri!r}")
    data_uri, predictions_uri = _absolute(data_uri), _absolute(predictions_uri)
    if not storage.is_s3(data_uri) and not Path(data_uri).is_dir():
        raise errors.StorageError(f"no such directory: {data_uri}")
    if not model.startswith("models:/"):
        model = _absolute(model)
    arguments = batch_arguments(data_uri, predictions_uri, model, shards, options, tracking_uri, device)
    root, scratch = _scratch()
    task = _execute(build(ClusterSettings(retries=0)), arguments, local.SubprocessRunner(use_venv=False), root,
                    scratch, quiet, verbose)
    out = task.outputs
    return {"predictions_uri": out["predictions_uri"], "rows": int(out["rows"]), "bundle_sha256": out["bundle_sha256"],
            "model": out["model"], "run_dir": str(Path(out["predictions"].path).parents[1])}
