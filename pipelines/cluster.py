"""What every compiled pipeline shares: the cluster settings chosen at compile time and how a task gets them.

:class:`ClusterSettings` (GPU node pool, credentials Secret, component image, retries) is a compile-time choice, so
each pipeline module builds its graph from one (``build(settings)``); :func:`configure` applies it to a task;
:func:`pipeline` turns a function taking generated parameters into a ``@dsl.pipeline``.

Per task (:func:`configure`):
- CPU and memory requests (optionally limits): each pipeline's defaults, any step overridden by
  ``ClusterSettings.resources``; caching off (steps read data and registry aliases that change under the same name).
- ``gpu=True`` tasks request one ``nvidia.com/gpu`` and get the GPU pool's node selector and tolerations (default:
  label ``nvidia.com/gpu.present=true``, set by NVIDIA's GPU feature discovery, and the ``nvidia.com/gpu:NoSchedule``
  taint GPU pools usually carry), and are retried ``settings.retries`` times with back-off (60 s, then 120 s):
  preempted GPU nodes, transient S3/MLflow errors. ``ClusterSettings(gpu=False)`` (``--cpu-only``) compiles
  neither the GPU request nor the node pool settings, but keeps the retries.
- ``secret=True`` tasks read credentials from the Secret (default ``rakuten-pipeline``): ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` (required: the pod does not start without them) and, optionally,
  ``AWS_ENDPOINT_URL`` (MinIO), ``AWS_DEFAULT_REGION``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``,
  ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from rakuten_mm.errors import ConfigError

REQUIRED = object()  # a parameter without a default
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_NODE_SELECTOR = (("nvidia.com/gpu.present", "true"),)
DEFAULT_SECRET = "rakuten-pipeline"
REQUIRED_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_SECRET_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

Parameters = list[tuple[str, type, Any]]  # (name, type, default or REQUIRED), in the order the UI shows them
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass(frozen=True)
class StepResources:
    """Requests (and optional limits) of one step, as Kubernetes quantities."""

    cpu: str
    memory: str
    cpu_limit: str | None = None
    memory_limit: str | None = None

    @classmethod
    def parse(cls, text: str, steps: Iterable[str]) -> tuple[str, StepResources]:
        """``STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT]`` → (step, resources); STEP is one of ``steps``."""
        steps = tuple(steps)
        step, sep, spec = text.partition("=")
        parts = spec.split(",")
        if (not sep or step not in steps or len(parts) not in (2, 4)
                or not all(_QUANTITY.match(p) for p in parts)):
            raise ConfigError(f"step resources are STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT] with STEP one of "
                              f"{steps} and Kubernetes quantities (e.g. {steps[0]}=4,16Gi), got {text!r}")
        return step, cls(*parts)


@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str
    value: str | None = None  # None: operator Exists

    @classmethod
    def parse(cls, text: str) -> Toleration:
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
    retries: int = 2  # of the GPU steps (preempted GPU nodes, transient S3/MLflow errors)
    resources: tuple[tuple[str, StepResources], ...] = ()  # step → requests; a step not named keeps its default

    def step_resources(self, step: str, default: tuple[str, str]) -> StepResources:
        return dict(self.resources).get(step) or StepResources(*default)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("the credentials Secret needs a name")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"retries must be between 0 and 10, got {self.retries}")


def configure(task: Any, resources: StepResources, settings: ClusterSettings, *, gpu: bool = False,
              secret: bool = True) -> Any:
    """Apply ``settings`` to ``task``: ``resources`` (requests, optional limits), no caching, the image, the Secret
    (``secret``), and for a GPU step (``gpu``) the retries, the accelerator and the node pool."""
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory).set_caching_options(False)
    if resources.cpu_limit:
        task.set_cpu_limit(resources.cpu_limit)
    if resources.memory_limit:
        task.set_memory_limit(resources.memory_limit)
    if settings.image:
        task.set_container_image(settings.image)
    if secret:
        kubernetes.use_secret_as_env(task, settings.secret, {k: k for k in REQUIRED_SECRET_KEYS})
        kubernetes.use_secret_as_env(task, settings.secret, {k: k for k in OPTIONAL_SECRET_KEYS}, optional=True)
    if gpu:
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


def renamed(component: Any, name: str) -> Any:
    """``component`` under another name: its task's name in the DAG and the Kubeflow UI (one definition, two steps)."""
    twin = copy.deepcopy(component)
    twin.component_spec.name = twin.name = name
    return twin


def pipeline(body: Callable[[dict[str, Any]], Any], parameters: Parameters, outputs: type, name: str,
             description: str) -> Any:
    """A ``@dsl.pipeline`` named ``name`` whose parameters are ``parameters``; ``body`` gets them by name (kfp's
    channels) and returns an ``outputs`` NamedTuple. The parameter list is built from configuration classes at
    run time, so kfp reads it from the generated signature and annotations."""
    signature = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                           default=inspect.Parameter.empty if default is REQUIRED else default)
         for p, kind, default in parameters], return_annotation=outputs)

    def func(*args: Any, **kwargs: Any) -> Any:
        return body(signature.bind(*args, **kwargs).arguments)  # kfp passes the channels positionally

    func.__name__ = func.__qualname__ = name.replace("-", "_")
    func.__signature__ = signature  # type: ignore[attr-defined]
    func.__annotations__ = {**{p: kind for p, kind, _ in parameters}, "return": outputs}
    return dsl.pipeline(func, name=name, description=description)
