from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def register(
    dataset: Input[Dataset],
    bundle: Input[Model],
    evaluation: Input[Artifact],
    bundle_uri: str,
    mlflow_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    min_improvement: float,
    registered_model: str,
    report: Output[HTML],
    metrics: Output[Metrics],
) -> NamedTuple("RegisterOutputs", [("bundle_uri", str), ("promoted", bool), ("model_version", str),  # type: ignore[valid-type]
                                    ("challenger_weighted_f1", float), ("champion_weighted_f1", float),
                                    ("champion_version", str), ("gate_confidence", float), ("decision", str)]):
    """Publish the bundle to bundle_uri, register it as a new MLflow model version (alias challenger), and move
    alias champion only if its weighted F1 beats the champion's by more than min_improvement on the same held-out
    test rows (evaluate's comparison; a paired bootstrap over the rows gives gate_confidence); write the report.
    champion_weighted_f1 and gate_confidence are -1 when there was no champion or it could not be scored (the
    decision says why); champion_version is empty when there was none."""
    from rakuten_mm import steps

    return steps.register(dataset.path, bundle.path, evaluation.path, report.path, bundle_uri=bundle_uri,
                          bundle_artifact_uri=bundle.uri, mlflow_run_id=mlflow_run_id,
                          tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                          min_improvement=min_improvement, model_name=registered_model,
                          log_metric=metrics.log_metric, metadata=report.metadata)
