from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components.image import component


@component
def preprocess(
    data_uri: str,
    epochs_text: int,
    epochs_image: int,
    image_size: int,
    image_weights: str,
    device: str,
    seed: int,
    members: str,
    batch_size: int,
    feature_cache: bool,
    val_fraction: float,
    test_fraction: float,
    max_tokens: int,
    ensemble_step: float,
    on_bad_rows: str,
    on_missing_image: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_run_id: str,
    kfp_run_name: str,
    dataset: Output[Dataset],
) -> NamedTuple("PreprocessOutputs", [("mlflow_run_id", str), ("train_config", str), ("data_version", str)]):  # type: ignore[valid-type]
    """Validate the labelled data (the validation report is the error), record a seeded stratified train/val/test
    split, and open the pipeline run's parent MLflow run."""
    from rakuten_mm import steps

    return steps.preprocess(
        data_uri, dataset.path, epochs_text=epochs_text, epochs_image=epochs_image, image_size=image_size,
        image_weights=image_weights, device=device, seed=seed, members=members, batch_size=batch_size,
        feature_cache=feature_cache, val_fraction=val_fraction, test_fraction=test_fraction, max_tokens=max_tokens,
        ensemble_step=ensemble_step, on_bad_rows=on_bad_rows, on_missing_image=on_missing_image,
        tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment, run_name=kfp_run_name,
        tags={"kfp.run_id": kfp_run_id, "kfp.run_name": kfp_run_name}, metadata=dataset.metadata)
