from kfp.dsl import Dataset, Model, Output

from components.base import component


@component
def prepare_batch(
    data_uri: str,
    model: str,
    predictions_uri: str,
    shards: int,
    on_bad_rows: str,
    on_missing_image: str,
    mlflow_tracking_uri: str,
    rows: Output[Dataset],
    bundle: Output[Model],
) -> list:
    """Check that predictions_uri can be written, validate the unlabelled data (X_test_update.csv + image_test) into
    rows, resolve model (models:/NAME@ALIAS, models:/NAME/VERSION or a bundle URI) once into bundle, and return
    the shard numbers (at most shards) to predict in parallel."""
    from rakuten_mm import steps

    return steps.prepare_batch(data_uri, model, predictions_uri, shards, rows.path, bundle.path,
                               on_bad_rows=on_bad_rows, on_missing_image=on_missing_image,
                               tracking_uri=mlflow_tracking_uri, rows_metadata=rows.metadata,
                               bundle_metadata=bundle.metadata)
