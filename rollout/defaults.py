"""The InferenceService a deploy creates from: the shipped base manifest, or a YAML file the user names.

The default is ``manifests/base/inferenceservice.yaml`` itself, read as package data: ``rollout/
inferenceservice.yaml`` is a symlink to it, which an editable install reads through and a wheel build
copies as a plain file (``[tool.setuptools.package-data]``), so the pipeline image carries the same file
kustomize renders. There is no second copy to keep equal.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from rakuten_mm.errors import ConfigError
from rollout.spec import pick_inferenceservice

PACKAGED_MANIFEST = "inferenceservice.yaml"


def default_manifest() -> dict:
    """The InferenceService of ``manifests/base/inferenceservice.yaml`` (shipped inside the package).

    Its image is the ``rakuten-serving`` placeholder that kustomize replaces: creating from it needs an image
    (``deploy(..., image=...)``, ``rakuten deploy --image``). For an overlay's settings pass its rendered
    output instead (``kubectl kustomize manifests/overlays/gpu``, ``rakuten deploy --manifest FILE``).
    """
    return load_manifest(files("rollout").joinpath(PACKAGED_MANIFEST), f"the packaged rollout/{PACKAGED_MANIFEST}")


def load_manifest(path: Path | Traversable, what: str | None = None) -> dict:
    """The one InferenceService in the YAML file ``path`` (e.g. ``kubectl kustomize`` output); ``what`` names
    the file in error messages."""
    import yaml

    what = what or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from exc
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from exc
    return pick_inferenceservice(docs, what)
