from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.base import component


@component
def fit_ensemble(
    dataset: Input[Dataset],
    text_model: Input[Model],
    image_model: Input[Model],
    train_config: str,
    mlflow_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    bundle: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("FitEnsembleOutputs", [("val_weighted_f1", float)]):  # type: ignore[valid-type]
    """Tune the ensemble weights on the validation split and build the model bundle (scores val + test)."""
    from rakuten_mm import steps

    return steps.fit_ensemble(dataset.path, text_model.path, image_model.path, bundle.path,
                              train_config=train_config, mlflow_run_id=mlflow_run_id,
                              tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
                              log_metric=metrics.log_metric, metadata=bundle.metadata)
