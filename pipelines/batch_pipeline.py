"""The batch prediction pipeline: one definition for Kubeflow (the compiled ``batch_prediction.yaml``) and for
``kfp.local`` (``rakuten pipeline predict``).

prepare-batch → predict-shard × N (``dsl.ParallelFor``) → merge-predictions

- ``prepare-batch`` checks that ``predictions_uri`` can be written, validates the unlabelled data at ``data_uri``
  (``X_test_update.csv`` + ``image_test/``, with the data options of training), resolves ``model`` once (a registry
  reference ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, or a bundle directory / ``s3://`` URI) into its
  ``bundle`` artifact, and returns the shard numbers: at most ``shards``, each a contiguous run of whole prediction
  batches (:func:`rakuten_mm.batch.shard_bounds`).
- ``predict-shard`` (one task per shard, in parallel) predicts its rows with that bundle, as ``rakuten predict``
  does; it is a GPU step (the training steps' GPU pool, retries) unless compiled ``--cpu-only``.
- ``merge-predictions`` checks that every shard is there and every row predicted once, then writes one CSV
  (``rakuten predict``'s columns plus ``bundle_sha256``) to its artifact and, in one step, to ``predictions_uri``.
  A failed shard fails the run before this step: nothing is written at ``predictions_uri``.

Cluster settings are :class:`pipelines.cluster.ClusterSettings`, as for training (same GPU pool flags, Secret and
image); caching is off (the alias and the data may change under the same names).
"""

from typing import Any, NamedTuple

from kfp import dsl

from pipelines.cluster import REQUIRED, ClusterSettings, Parameters, configure, pipeline
from rakuten_mm.data import DataOptions
from rakuten_mm.registry import CHAMPION, MODEL_NAME, MODELS_SCHEME

PIPELINE_NAME = "rakuten-batch-prediction"
DEFAULT_MODEL = f"{MODELS_SCHEME}{MODEL_NAME}@{CHAMPION}"
DEFAULT_SHARDS = 4
GPU_STEPS = ("predict-shard",)
# step → (CPU request, memory request); sized for the challenge's 13,812 test products.
RESOURCES = {
    "prepare-batch": ("2", "8Gi"),
    "predict-shard": ("4", "16Gi"),
    "merge-predictions": ("1", "4Gi"),
}


class Outputs(NamedTuple):
    predictions: dsl.Dataset
    predictions_uri: str
    rows: int
    bundle_sha256: str
    model: str


def _configure(task: Any, step: str, settings: ClusterSettings) -> Any:
    return configure(task, settings.step_resources(step, RESOURCES[step]), settings, gpu=step in GPU_STEPS)


def _parameters() -> Parameters:
    """The pipeline's parameters ``(name, type, default)``; the data options come from :class:`DataOptions`."""
    return [("data_uri", str, REQUIRED), ("predictions_uri", str, REQUIRED), ("model", str, DEFAULT_MODEL),
            ("shards", int, DEFAULT_SHARDS), ("device", str, "auto"), *DataOptions.pipeline_parameters(),
            ("mlflow_tracking_uri", str, "")]


def build(settings: ClusterSettings | None = None) -> Any:
    """The ``@dsl.pipeline`` for these settings (default :class:`ClusterSettings`)."""
    from components.merge_predictions import merge_predictions
    from components.predict_shard import predict_shard
    from components.prepare_batch import prepare_batch

    settings = settings or ClusterSettings()
    data_options = [name for name, _, _ in DataOptions.pipeline_parameters()]

    def rakuten_batch_prediction(p: dict[str, Any]) -> Outputs:
        prepared = _configure(prepare_batch(
            data_uri=p["data_uri"], model=p["model"], predictions_uri=p["predictions_uri"], shards=p["shards"],
            mlflow_tracking_uri=p["mlflow_tracking_uri"], **{name: p[name] for name in data_options}),
            "prepare-batch", settings)
        with dsl.ParallelFor(prepared.outputs["Output"], name="shards") as shard:
            predicted = _configure(predict_shard(rows=prepared.outputs["rows"], bundle=prepared.outputs["bundle"],
                                                 shard=shard, shards=p["shards"], device=p["device"]),
                                   "predict-shard", settings)
        merged = _configure(merge_predictions(
            shard_predictions=dsl.Collected(predicted.outputs["predictions"]), rows=prepared.outputs["rows"],
            shards=p["shards"], predictions_uri=p["predictions_uri"]), "merge-predictions", settings)
        return Outputs(predictions=merged.outputs["predictions"],
                       **{k: merged.outputs[k] for k in ("predictions_uri", "rows", "bundle_sha256", "model")})

    return pipeline(rakuten_batch_prediction, _parameters(), Outputs, PIPELINE_NAME, description=(
        "Rakuten France product classifier, batch prediction: validate a catalogue (X_test_update.csv + "
        "image_test), predict it in parallel shards with a registered model (default: alias champion) or a "
        "bundle, and write one predictions CSV (prdtypecode, category, probability, bundle sha256)."))
