from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

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
) -> NamedTuple("RegisterOutputs", [("bundle_uri", str), ("promoted", bool), ("model_version", str),  # type: ignore[valid-type]
                                    ("challenger_val_weighted_f1", float), ("champion_val_weighted_f1", float),
                                    ("champion_version", str), ("decision", str)]):
    """Publish the bundle to bundle_uri, register it as a new MLflow model version (alias challenger), move alias
    champion only if its validation weighted F1 beats the champion's by min_improvement, and write the report.
    champion_val_weighted_f1 is -1 and champion_version empty when there was no champion yet."""
    from rakuten_mm import steps

    return steps.register(dataset.path, bundle.path, evaluation.path, report.path, bundle_uri=bundle_uri,
                          bundle_artifact_uri=bundle.uri, mlflow_run_id=mlflow_run_id,
                          tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                          min_improvement=min_improvement, model_name=registered_model, metadata=report.metadata)
