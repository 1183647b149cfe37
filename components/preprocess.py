from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components.base import component


@component
def preprocess(
    data_uri: str,
    epochs_text: int,
    epochs_image: int,
    image_size: int,
    image_backbone: str,
    image_weights: str,
    device: str,
    precision: str,
    seed: int,
    members: str,
    batch_size: int,
    feature_cache: bool,
    val_fraction: float,
    test_fraction: float,
    max_tokens: int,
    text_vectors: str,
    ensemble_step: float,
    ensemble_folds: int,
    on_bad_rows: str,
    on_missing_image: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_run_id: str,
    kfp_run_name: str,
    dataset: Output[Dataset],
) -> NamedTuple("PreprocessOutputs", [("mlflow_run_id", str), ("train_config", str), ("data_version", str)]):  # type: ignore[valid-type]
    """Validate the labelled data (the validation report is the error), record a seeded stratified train/val/test
    split, and open the pipeline run's parent MLflow run. The parameters from epochs_text to ensemble_step are
    TrainConfig's fields (rakuten_mm.config), passed on by name."""
    parameters = dict(locals())  # every parameter above, by name (taken before any local name exists)
    from rakuten_mm import steps

    return steps.preprocess_parameters(parameters, dataset.path, metadata=dataset.metadata)
