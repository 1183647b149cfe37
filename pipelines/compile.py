"""Compile the training pipeline to the YAML the Kubeflow UI uploads (``pipelines/training.yaml``, checked in).

``rakuten pipeline compile [options]`` (what ``make compile`` runs) calls :func:`compile_pipeline`.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.training_pipeline import ClusterSettings, build

DEFAULT_PACKAGE = Path(__file__).resolve().with_name("training.yaml")


def compile_pipeline(out: Path | str = DEFAULT_PACKAGE, settings: ClusterSettings | None = None) -> Path:
    """Write the pipeline for ``settings`` (default: :class:`ClusterSettings`) to ``out`` (YAML; deterministic for a
    given kfp version)."""
    from kfp import compiler

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build(settings or ClusterSettings()), package_path=str(path))
    return path
