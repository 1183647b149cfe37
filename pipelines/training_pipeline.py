"""The training pipeline: one definition for Kubeflow (the compiled ``training.yaml``) and for ``kfp.local``.

preprocess → train-lstm ‖ train-vgg16 → fit_ensemble → evaluate → register → [deploy]

Cluster settings (GPU node pool, Secret, image) are compile-time choices, so the pipeline is built by
:func:`build` from a :class:`ClusterSettings`; nothing is built at import time. ``kfp.local`` ignores resources,
accelerators, node selectors, tolerations and Secrets, so the local run executes the same graph (built without
retries: see :mod:`pipelines.local_runner`).

Kubernetes settings baked into the YAML:
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

import copy
import inspect
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl, kubernetes

from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions
from rakuten_mm.errors import ConfigError
from rakuten_mm.members import IMAGE, TEXT
from rakuten_mm.registry import MODEL_NAME
from rakuten_mm.tracking import EXPERIMENT

PIPELINE_NAME = "rakuten-training"
REQUIRED = object()  # a parameter without a default
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_NODE_SELECTOR = (("nvidia.com/gpu.present", "true"),)
DEFAULT_SECRET = "rakuten-pipeline"
REQUIRED_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_SECRET_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
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
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass(frozen=True)
class StepResources:
    """Requests (and optional limits) of one step, as Kubernetes quantities."""

    cpu: str
    memory: str
    cpu_limit: str | None = None
    memory_limit: str | None = None

    @classmethod
    def parse(cls, text: str) -> tuple[str, "StepResources"]:
        """``STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT]`` → (step, resources); STEP is one of :data:`RESOURCES`."""
        step, sep, spec = text.partition("=")
        parts = spec.split(",")
        if (not sep or step not in RESOURCES or len(parts) not in (2, 4)
                or not all(_QUANTITY.match(p) for p in parts)):
            raise ConfigError(f"step resources are STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT] with STEP one of "
                              f"{tuple(RESOURCES)} and Kubernetes quantities (e.g. train-vgg16=4,16Gi), got {text!r}")
        return step, cls(*parts)


def preset_resources(preset: str) -> tuple[tuple[str, StepResources], ...]:
    if preset not in RESOURCE_PRESETS:
        raise ConfigError(f"resource preset must be one of {tuple(RESOURCE_PRESETS)}, got {preset!r}")
    return tuple((step, StepResources(cpu, memory)) for step, (cpu, memory) in RESOURCE_PRESETS[preset].items())


@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str
    value: str | None = None  # None: operator Exists

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """``KEY[=VALUE]:EFFECT`` → a toleration; ``EFFECT`` is one of :data:`TAINT_EFFECTS`."""
        spec, sep, effect = text.rpartition(":")
        key, has_value, value = spec.partition("=")
        if not sep or not key or effect not in TAINT_EFFECTS or (has_value and not value):
            raise ConfigError(f"a GPU toleration is KEY[=VALUE]:EFFECT with EFFECT one of {TAINT_EFFECTS}, "
                              f"got {text!r}")
        return cls(key, effect, value if has_value else None)


DEFAULT_TOLERATIONS = (Toleration(GPU_RESOURCE, "NoSchedule"),)


def parse_node_selector(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"a GPU node selector is KEY=VALUE, got {text!r}")
    return key, value


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time choices: GPU node pool (or none), the credentials Secret and the component image."""

    gpu: bool = True
    node_selector: tuple[tuple[str, str], ...] = DEFAULT_NODE_SELECTOR
    tolerations: tuple[Toleration, ...] = DEFAULT_TOLERATIONS
    secret: str = DEFAULT_SECRET
    image: str | None = None  # None: components.base.IMAGE
    retries: int = 2  # of the training steps (preempted GPU nodes, transient S3/MLflow errors)
    resources: tuple[tuple[str, StepResources], ...] = preset_resources("full")

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("the credentials Secret needs a name")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"retries must be between 0 and 10, got {self.retries}")


class Outputs(NamedTuple):
    bundle: dsl.Model
    report: dsl.HTML
    bundle_uri: str
    promoted: bool
    model_version: str
    decision: str
    challenger_val_weighted_f1: float
    champion_val_weighted_f1: float
    champion_version: str
    mlflow_run_id: str


def _configure(task: Any, step: str, settings: ClusterSettings, secret: bool = True) -> Any:
    res = dict(settings.resources)[step]
    task.set_cpu_request(res.cpu).set_memory_request(res.memory).set_caching_options(False)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    if settings.image:
        task.set_container_image(settings.image)
    if secret:
        kubernetes.use_secret_as_env(task, settings.secret, {k: k for k in REQUIRED_SECRET_KEYS})
        kubernetes.use_secret_as_env(task, settings.secret, {k: k for k in OPTIONAL_SECRET_KEYS}, optional=True)
    if step in GPU_STEPS:
        if settings.retries:
            task.set_retry(num_retries=settings.retries, backoff_duration="60s", backoff_factor=2.0)
        if settings.gpu:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
            for key, value in settings.node_selector:
                kubernetes.add_node_selector(task, key, value)
            for tol in settings.tolerations:
                kubernetes.add_toleration(task, key=tol.key, operator="Equal" if tol.value else "Exists",
                                          value=tol.value, effect=tol.effect)
    return task


def _renamed(component: Any, name: str) -> Any:
    """``component`` under another name: its task's name in the DAG and the Kubeflow UI (one definition, two steps)."""
    renamed = copy.deepcopy(component)
    renamed.component_spec.name = renamed.name = name
    return renamed


def _parameters() -> list[tuple[str, type, Any]]:
    """The pipeline's parameters ``(name, type, default)``, in the order the UI shows them; ``REQUIRED``: none.

    The training options come from :class:`TrainConfig` and the data options from :class:`DataOptions`, so a new
    option reaches the pipeline without a change here.
    """
    return [("data_uri", str, REQUIRED), ("bundle_uri", str, ""), *TrainConfig.pipeline_parameters(),
            *DataOptions.pipeline_parameters(), ("mlflow_tracking_uri", str, ""),
            ("mlflow_experiment", str, EXPERIMENT), ("min_improvement", float, 0.0),
            ("registered_model", str, MODEL_NAME), ("deploy", bool, False), ("canary_percent", int, 0),
            ("deploy_name", str, "rakuten"), ("deploy_namespace", str, "rakuten")]


def _signature(parameters: list[tuple[str, type, Any]]) -> inspect.Signature:
    return inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                           default=inspect.Parameter.empty if default is REQUIRED else default)
         for name, kind, default in parameters], return_annotation=Outputs)


def build(settings: ClusterSettings = ClusterSettings()) -> Any:
    """The ``@dsl.pipeline`` for these settings (a kfp ``GraphComponent``: compile it, or call it under kfp.local)."""
    from components.deploy import deploy as deploy_op
    from components.evaluate import evaluate
    from components.fit_ensemble import fit_ensemble
    from components.preprocess import preprocess
    from components.register import register
    from components.train_member import train_member

    parameters = _parameters()
    signature = _signature(parameters)
    train_options = [name for name, _, _ in TrainConfig.pipeline_parameters()]
    data_options = [name for name, _, _ in DataOptions.pipeline_parameters()]

    def rakuten_training(*args: Any, **kwargs: Any) -> Outputs:
        p = signature.bind(*args, **kwargs).arguments  # kfp passes the parameters' channels positionally
        tracking = {"mlflow_tracking_uri": p["mlflow_tracking_uri"], "mlflow_experiment": p["mlflow_experiment"]}
        prep = _configure(preprocess(
            data_uri=p["data_uri"], **{name: p[name] for name in train_options + data_options},
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **tracking),
            "preprocess", settings)
        run = {"train_config": prep.outputs["train_config"], "mlflow_run_id": prep.outputs["mlflow_run_id"],
               **tracking}
        text, image = (_configure(_renamed(train_member, step)(member=member, dataset=prep.outputs["dataset"], **run),
                                  step, settings) for member, step in ((TEXT, "train-lstm"), (IMAGE, "train-vgg16")))
        fitted = _configure(fit_ensemble(dataset=prep.outputs["dataset"], text_model=text.outputs["model"],
                                         image_model=image.outputs["model"], **run), "fit-ensemble", settings)
        evaluated = _configure(evaluate(dataset=prep.outputs["dataset"], bundle=fitted.outputs["bundle"],
                                        mlflow_run_id=prep.outputs["mlflow_run_id"], **tracking),
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
        return Outputs(bundle=fitted.outputs["bundle"], report=registered.outputs["report"],
                       bundle_uri=registered.outputs["bundle_uri"], promoted=registered.outputs["promoted"],
                       model_version=registered.outputs["model_version"], decision=registered.outputs["decision"],
                       challenger_val_weighted_f1=registered.outputs["challenger_val_weighted_f1"],
                       champion_val_weighted_f1=registered.outputs["champion_val_weighted_f1"],
                       champion_version=registered.outputs["champion_version"],
                       mlflow_run_id=prep.outputs["mlflow_run_id"])

    # kfp reads the pipeline's parameters from the function's signature and annotations.
    rakuten_training.__signature__ = signature  # type: ignore[attr-defined]
    rakuten_training.__annotations__ = {**{name: kind for name, kind, _ in parameters}, "return": Outputs}
    return dsl.pipeline(rakuten_training, name=PIPELINE_NAME, description=(
        "Rakuten France product classifier: validate and split the data, train an LSTM (text) and a VGG16 head "
        "(images), tune their weighted ensemble on the validation split, evaluate the bundle on the test split, "
        "register it in MLflow behind a gate, optionally deploy it to KServe."))
