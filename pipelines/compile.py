"""Compile the training pipeline to the YAML the Kubeflow UI uploads (``pipelines/training.yaml``, checked in).

``python -m pipelines.compile [options]`` is ``rakuten pipeline compile [options]`` (what ``make compile`` runs).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.training import ClusterSettings, build

DEFAULT_PACKAGE = Path(__file__).resolve().with_name("training.yaml")


def compile_pipeline(out: Path | str = DEFAULT_PACKAGE, settings: ClusterSettings | None = None) -> Path:
    """Write the pipeline for ``settings`` (default: :class:`ClusterSettings`) to ``out`` (YAML; deterministic for a
    given kfp version)."""
    from kfp import compiler

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build(settings or ClusterSettings()), package_path=str(path))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["compile", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
