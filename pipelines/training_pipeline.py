"""The training pipeline: one definition for Kubeflow (the compiled ``training.yaml``) and for ``kfp.local``.

preprocess → train-lstm ‖ train-vgg16 → fit_ensemble → evaluate → register → [deploy]

Cluster settings (GPU node pool, Secret, image) are compile-time choices, so the pipeline is built by
:func:`build` from a :class:`ClusterSettings`; nothing is built at import time. ``kfp.local`` ignores resources,
accelerators, node selectors, tolerations and Secrets, so the local run executes the same graph (built without
retries: see :mod:`pipelines.local_runner`).

Kubernetes settings baked into the YAML (applied by :func:`pipelines.cluster.configure`, shared with the batch
prediction pipeline):
- ``train-lstm`` and ``train-vgg16`` (two tasks of the ``train_member`` component) request one
  ``nvidia.com/gpu`` and get the GPU pool's node selector and toleration (default: label
  ``nvidia.com/gpu.present=true``, set by NVIDIA's GPU feature discovery, and the ``nvidia.com/gpu:NoSchedule`` taint
  that GPU pools usually carry); both are retried twice with back-off (60 s, then 120 s).
  ``--cpu-only`` compiles a pipeline without any of these.
- Every step requests CPU and memory: a preset of :data:`RESOURCE_PRESETS` (``full`` by default, ``small`` for a
  small cluster), each step overridable, limits optional (``rakuten pipeline compile --resources-preset``,
  ``--step-resources``).
- Every step but deploy reads credentials from the Secret (default ``rakuten-pipeline``):
  ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (required: the pod does not start without them) and,
  optionally, ``AWS_ENDPOINT_URL`` (MinIO), ``AWS_DEFAULT_REGION``, ``MLFLOW_TRACKING_URI``,
  ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``. On a cluster, MLflow must
  be a server (pipeline parameter ``mlflow_tracking_uri`` or the Secret's ``MLFLOW_TRACKING_URI``): each pod has
  its own filesystem, so the local sqlite default cannot carry the run from step to step.
- Caching is off for every step: each one logs into the run's MLflow run, and preprocess reads data that may
  change under the same URI.

Deploy (``deploy=True``) runs only when register moved ``champion`` to the new version; it serves the register
step's ``bundle_uri`` output, so give each run its own ``bundle_uri`` (an ``s3://`` prefix) when deploying: a
fixed one would be overwritten by the next run, promoted or not. The step runs as the run's service account,
which needs the RBAC of ``manifests/base/rbac.yaml``.
"""

from typing import Any, NamedTuple

from kfp import dsl

from pipelines.cluster import (
    DEFAULT_SECRET,
    REQUIRED,
    ClusterSettings,
    Parameters,
    StepResources,
    Toleration,
    configure,
    parse_node_selector,
    pipeline,
    renamed,
)
from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions
from rakuten_mm.errors import ConfigError
from rakuten_mm.members import IMAGE, TEXT
from rakuten_mm.registry import MODEL_NAME
from rakuten_mm.tracking import EXPERIMENT

# Importable from here as before the cluster settings moved to pipelines.cluster (the CLI's compile action uses them).
__all__ = ["DEFAULT_SECRET", "GPU_STEPS", "PIPELINE_NAME", "RESOURCE_PRESETS", "RESOURCES", "ClusterSettings",
           "Outputs", "StepResources", "Toleration", "build", "parse_node_selector", "preset_resources",
           "step_resources"]

PIPELINE_NAME = "rakuten-training"
GPU_STEPS = ("train-lstm", "train-vgg16")
# step → (CPU request, memory request): the presets ``rakuten pipeline compile --resources-preset`` offers.
# "full" is sized for the whole challenge data (85k rows, 224 px images); "small" lets a small or CPU-only cluster
# schedule the demo-sized data (a few thousand rows, 64 px images).
RESOURCE_PRESETS: dict[str, dict[str, tuple[str, str]]] = {
    "full": {
        "preprocess": ("1", "4Gi"),
        "train-lstm": ("4", "16Gi"),
        "train-vgg16": ("8", "32Gi"),
        "fit-ensemble": ("2", "8Gi"),
        "evaluate": ("8", "16Gi"),
        "register": ("1", "4Gi"),
        "deploy": ("500m", "1Gi"),
    },
    "small": {
        "preprocess": ("500m", "1Gi"),
        "train-lstm": ("1", "2Gi"),
        "train-vgg16": ("2", "4Gi"),
        "fit-ensemble": ("500m", "1Gi"),
        "evaluate": ("1", "2Gi"),
        "register": ("500m", "1Gi"),
        "deploy": ("250m", "512Mi"),
    },
}
RESOURCES = RESOURCE_PRESETS["full"]


def preset_resources(preset: str) -> tuple[tuple[str, StepResources], ...]:
    if preset not in RESOURCE_PRESETS:
        raise ConfigError(f"resource preset must be one of {tuple(RESOURCE_PRESETS)}, got {preset!r}")
    return tuple((step, StepResources(cpu, memory)) for step, (cpu, memory) in RESOURCE_PRESETS[preset].items())


def step_resources(text: str) -> tuple[str, StepResources]:
    """``STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT]`` → (step, resources); STEP is one of :data:`RESOURCES`."""
    return StepResources.parse(text, RESOURCES)


class Outputs(NamedTuple):
    bundle: dsl.Model
    report: dsl.HTML
    bundle_uri: str
    promoted: bool
    model_version: str
    decision: str
    challenger_weighted_f1: float
    champion_weighted_f1: float
    champion_version: str
    gate_confidence: float
    mlflow_run_id: str


def _configure(task: Any, step: str, settings: ClusterSettings, secret: bool = True) -> Any:
    return configure(task, settings.step_resources(step, RESOURCES[step]), settings, gpu=step in GPU_STEPS,
                     secret=secret)


def _parameters() -> Parameters:
    """The pipeline's parameters ``(name, type, default)``, in the order the UI shows them; ``REQUIRED``: none.

    The training options come from :class:`TrainConfig` and the data options from :class:`DataOptions`, so a new
    option reaches the pipeline without a change here.
    """
    return [("data_uri", str, REQUIRED), ("bundle_uri", str, ""), *TrainConfig.pipeline_parameters(),
            *DataOptions.pipeline_parameters(), ("mlflow_tracking_uri", str, ""),
            ("mlflow_experiment", str, EXPERIMENT), ("min_improvement", float, 0.0),
            ("registered_model", str, MODEL_NAME), ("deploy", bool, False), ("canary_percent", int, 0),
            ("deploy_name", str, "rakuten"), ("deploy_namespace", str, "rakuten")]


def build(settings: ClusterSettings | None = None) -> Any:
    """The ``@dsl.pipeline`` for these settings (default :class:`ClusterSettings`; a kfp ``GraphComponent``: compile
    it, or call it under kfp.local)."""
    settings = settings or ClusterSettings()
    from components.deploy import deploy as deploy_op
    from components.evaluate import evaluate
    from components.fit_ensemble import fit_ensemble
    from components.preprocess import preprocess
    from components.register import register
    from components.train_member import train_member

    train_options = [name for name, _, _ in TrainConfig.pipeline_parameters()]
    data_options = [name for name, _, _ in DataOptions.pipeline_parameters()]

    def rakuten_training(p: dict[str, Any]) -> Outputs:
        tracking = {"mlflow_tracking_uri": p["mlflow_tracking_uri"], "mlflow_experiment": p["mlflow_experiment"]}
        prep = _configure(preprocess(
            data_uri=p["data_uri"], **{name: p[name] for name in train_options + data_options},
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **tracking),
            "preprocess", settings)
        run = {"train_config": prep.outputs["train_config"], "mlflow_run_id": prep.outputs["mlflow_run_id"],
               **tracking}
        text, image = (_configure(renamed(train_member, step)(member=member, dataset=prep.outputs["dataset"], **run),
                                  step, settings) for member, step in ((TEXT, "train-lstm"), (IMAGE, "train-vgg16")))
        fitted = _configure(fit_ensemble(dataset=prep.outputs["dataset"], text_model=text.outputs["model"],
                                         image_model=image.outputs["model"], **run), "fit-ensemble", settings)
        # The challenger and the registry's champion, scored on this run's held-out test rows.
        evaluated = _configure(evaluate(dataset=prep.outputs["dataset"], bundle=fitted.outputs["bundle"],
                                        mlflow_run_id=prep.outputs["mlflow_run_id"],
                                        registered_model=p["registered_model"], **tracking),
                               "evaluate", settings)
        registered = _configure(register(
            dataset=prep.outputs["dataset"], bundle=fitted.outputs["bundle"],
            evaluation=evaluated.outputs["evaluation"], bundle_uri=p["bundle_uri"],
            mlflow_run_id=prep.outputs["mlflow_run_id"], min_improvement=p["min_improvement"],
            registered_model=p["registered_model"], **tracking), "register", settings)
        # The deploy step's place: only when asked for, and only when the gate moved champion to this bundle.
        with dsl.If(p["deploy"] == True, name="deploy-requested"), \
                dsl.If(registered.outputs["promoted"] == True, name="champion-moved"):  # noqa: E712 (kfp conditions)
            _configure(deploy_op(bundle_uri=registered.outputs["bundle_uri"], name=p["deploy_name"],
                                 namespace=p["deploy_namespace"], canary_percent=p["canary_percent"]),
                       "deploy", settings, secret=False)
        gate = {k: registered.outputs[k] for k in ("bundle_uri", "promoted", "model_version", "decision",
                                                   "challenger_weighted_f1", "champion_weighted_f1",
                                                   "champion_version", "gate_confidence")}
        return Outputs(bundle=fitted.outputs["bundle"], report=registered.outputs["report"],
                       mlflow_run_id=prep.outputs["mlflow_run_id"], **gate)

    return pipeline(rakuten_training, _parameters(), Outputs, PIPELINE_NAME, description=(
        "Rakuten France product classifier: validate and split the data, train an LSTM (text) and a VGG16 head "
        "(images), tune their weighted ensemble on the validation split, score it and the registry's champion on "
        "the same held-out test rows, register it in MLflow behind that gate, optionally deploy it to KServe."))
