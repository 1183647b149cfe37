"""Compile the pipelines to the YAML the Kubeflow UI uploads (checked in beside this module): the training
pipeline (``training.yaml``) and the batch prediction pipeline (``batch_prediction.yaml``).

``rakuten pipeline compile [--pipeline training|batch-prediction] [options]`` calls :func:`compile_pipeline`;
``make compile`` regenerates both checked-in files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.cluster import ClusterSettings

HERE = Path(__file__).resolve().parent
DEFAULT_PACKAGE = HERE / "training.yaml"
BATCH_PACKAGE = HERE / "batch_prediction.yaml"
PACKAGES = {"training": DEFAULT_PACKAGE, "batch-prediction": BATCH_PACKAGE}


def _builders() -> dict[str, Callable[[ClusterSettings], Any]]:
    from pipelines import batch_pipeline, training_pipeline

    return {"training": training_pipeline.build, "batch-prediction": batch_pipeline.build}


def compile_pipeline(out: Path | str | None = None, settings: ClusterSettings | None = None,
                     pipeline: str = "training") -> Path:
    """Write ``pipeline`` (one of :data:`PACKAGES`) for ``settings`` (default: :class:`ClusterSettings`) to ``out``
    (default: its checked-in file); YAML, deterministic for a given kfp version."""
    from kfp import compiler

    from rakuten_mm.errors import ConfigError

    if pipeline not in PACKAGES:
        raise ConfigError(f"pipeline must be one of {tuple(PACKAGES)}, got {pipeline!r}")
    path = Path(out) if out else PACKAGES[pipeline]
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=_builders()[pipeline](settings or ClusterSettings()),
                                package_path=str(path))
    return path
