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
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("test_weighted_f1", float)]):  # type: ignore[valid-type]
    """Load the bundle as serving does (checksums verified) and score it on the held-out test split."""
    from rakuten_mm import steps

    return steps.evaluate(dataset.path, bundle.path, evaluation.path, mlflow_run_id=mlflow_run_id,
                          tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                          log_metric=metrics.log_metric, log_confusion_matrix=confusion.log_confusion_matrix,
                          metadata=evaluation.metadata)
