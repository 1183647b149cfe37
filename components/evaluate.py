from typing import NamedTuple

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def evaluate(
    dataset: Input[Dataset],
    bundle: Input[Model],
    mlflow_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    registered_model: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("test_weighted_f1", float)]):  # type: ignore[valid-type]
    """Load the bundle as serving does (checksums verified) and score it on the held-out test split; score the
    registry's champion (alias champion of registered_model) on the same rows, less those it trained on, for the
    gate. metrics holds both models' scores on those rows (same_rows_challenger_*, same_rows_champion_*)."""
    from rakuten_mm import steps

    return steps.evaluate(dataset.path, bundle.path, evaluation.path, mlflow_run_id=mlflow_run_id,
                          tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                          model_name=registered_model, log_metric=metrics.log_metric,
                          log_confusion_matrix=confusion.log_confusion_matrix, metadata=evaluation.metadata)
