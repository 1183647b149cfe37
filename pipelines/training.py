"""The training pipeline: one definition for Kubeflow (the compiled ``training.yaml``) and for ``kfp.local``.

preprocess → train_lstm ‖ train_vgg16 → fit_ensemble → evaluate → register → [deploy]

Cluster settings (GPU node pool, Secret, image) are compile-time choices, so the pipeline is built by
:func:`build` from a :class:`ClusterSettings`; nothing is built at import time. ``kfp.local`` ignores resources,
accelerators, node selectors, tolerations and Secrets, so the local run executes the same graph (built without
retries: see :mod:`pipelines.local`).

Kubernetes settings baked into the YAML:
- ``train_lstm`` and ``train_vgg16`` request one ``nvidia.com/gpu`` and get the GPU pool's node selector and
  toleration (default: label ``nvidia.com/gpu.present=true``, set by NVIDIA's GPU feature discovery, and the
  ``nvidia.com/gpu:NoSchedule`` taint that GPU pools usually carry); both are retried twice with back-off
  (60 s, then 120 s).
  ``--cpu-only`` compiles a pipeline without any of these.
- Every step requests CPU and memory (:data:`RESOURCES`).
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

from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl, kubernetes

from rakuten_mm.config import TrainConfig
from rakuten_mm.errors import ConfigError
from rakuten_mm.registry import MODEL_NAME
from rakuten_mm.tracking import EXPERIMENT

PIPELINE_NAME = "rakuten-training"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_NODE_SELECTOR = (("nvidia.com/gpu.present", "true"),)
DEFAULT_SECRET = "rakuten-pipeline"
REQUIRED_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_SECRET_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
GPU_STEPS = ("train-lstm", "train-vgg16")
# step → (CPU request, memory request); sized for the full challenge data (85k rows, 224 px images).
RESOURCES = {
    "preprocess": ("1", "4Gi"),
    "train-lstm": ("4", "16Gi"),
    "train-vgg16": ("8", "32Gi"),
    "fit-ensemble": ("2", "8Gi"),
    "evaluate": ("8", "16Gi"),
    "register": ("1", "4Gi"),
    "deploy": ("500m", "1Gi"),
}


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
    image: str | None = None  # None: components.image.IMAGE
    retries: int = 2  # of the training steps (preempted GPU nodes, transient S3/MLflow errors)

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
    cpu, memory = RESOURCES[step]
    task.set_cpu_request(cpu).set_memory_request(memory).set_caching_options(False)
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


def build(settings: ClusterSettings = ClusterSettings()) -> Any:
    """The ``@dsl.pipeline`` for these settings (a kfp ``GraphComponent``: compile it, or call it under kfp.local)."""
    from components.deploy import deploy as deploy_op
    from components.evaluate import evaluate
    from components.fit_ensemble import fit_ensemble
    from components.preprocess import preprocess
    from components.register import register
    from components.train_lstm import train_lstm
    from components.train_vgg16 import train_vgg16

    d = TrainConfig()

    @dsl.pipeline(name=PIPELINE_NAME, description="Rakuten France product classifier: validate and split the data, "
                  "train an LSTM (text) and a VGG16 head (images), tune their weighted ensemble on the validation "
                  "split, evaluate the bundle on the test split, register it in MLflow behind a gate, optionally "
                  "deploy it to KServe.")
    def rakuten_training(
        data_uri: str,
        bundle_uri: str = "",
        epochs_text: int = d.epochs_text,
        epochs_image: int = d.epochs_image,
        image_size: int = d.image_size,
        image_weights: str = d.image_weights,
        seed: int = d.seed,
        device: str = d.device,
        members: str = ",".join(d.members),
        batch_size: int = d.batch_size,
        feature_cache: bool = d.feature_cache,
        val_fraction: float = d.val_fraction,
        test_fraction: float = d.test_fraction,
        max_tokens: int = d.max_tokens,
        ensemble_step: float = d.ensemble_step,
        on_bad_rows: str = "fail",
        on_missing_image: str = "fail",
        mlflow_tracking_uri: str = "",
        mlflow_experiment: str = EXPERIMENT,
        min_improvement: float = 0.0,
        registered_model: str = MODEL_NAME,
        deploy: bool = False,
        canary_percent: int = 0,
        deploy_name: str = "rakuten",
        deploy_namespace: str = "rakuten",
    ) -> Outputs:
        tracking = {"mlflow_tracking_uri": mlflow_tracking_uri, "mlflow_experiment": mlflow_experiment}
        prep = _configure(preprocess(
            data_uri=data_uri, epochs_text=epochs_text, epochs_image=epochs_image, image_size=image_size,
            image_weights=image_weights, device=device, seed=seed, members=members, batch_size=batch_size,
            feature_cache=feature_cache, val_fraction=val_fraction, test_fraction=test_fraction,
            max_tokens=max_tokens, ensemble_step=ensemble_step, on_bad_rows=on_bad_rows,
            on_missing_image=on_missing_image, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **tracking), "preprocess", settings)
        run = {"train_config": prep.outputs["train_config"], "mlflow_run_id": prep.outputs["mlflow_run_id"],
               **tracking}
        text = _configure(train_lstm(dataset=prep.outputs["dataset"], **run), "train-lstm", settings)
        image = _configure(train_vgg16(dataset=prep.outputs["dataset"], **run), "train-vgg16", settings)
        fitted = _configure(fit_ensemble(dataset=prep.outputs["dataset"], text_model=text.outputs["model"],
                                         image_model=image.outputs["model"], **run), "fit-ensemble", settings)
        evaluated = _configure(evaluate(dataset=prep.outputs["dataset"], bundle=fitted.outputs["bundle"],
                                        mlflow_run_id=prep.outputs["mlflow_run_id"], **tracking),
                               "evaluate", settings)
        registered = _configure(register(
            dataset=prep.outputs["dataset"], bundle=fitted.outputs["bundle"],
            evaluation=evaluated.outputs["evaluation"], bundle_uri=bundle_uri,
            mlflow_run_id=prep.outputs["mlflow_run_id"], min_improvement=min_improvement,
            registered_model=registered_model, **tracking), "register", settings)
        # The deploy step's place: only when asked for, and only when the gate moved champion to this bundle.
        with dsl.If(deploy == True, name="deploy-requested"), \
                dsl.If(registered.outputs["promoted"] == True, name="champion-moved"):  # noqa: E712 (kfp conditions)
            _configure(deploy_op(bundle_uri=registered.outputs["bundle_uri"], name=deploy_name,
                                 namespace=deploy_namespace, canary_percent=canary_percent),
                       "deploy", settings, secret=False)
        return Outputs(bundle=fitted.outputs["bundle"], report=registered.outputs["report"],
                       bundle_uri=registered.outputs["bundle_uri"], promoted=registered.outputs["promoted"],
                       model_version=registered.outputs["model_version"], decision=registered.outputs["decision"],
                       challenger_val_weighted_f1=registered.outputs["challenger_val_weighted_f1"],
                       champion_val_weighted_f1=registered.outputs["champion_val_weighted_f1"],
                       champion_version=registered.outputs["champion_version"],
                       mlflow_run_id=prep.outputs["mlflow_run_id"])

    return rakuten_training
