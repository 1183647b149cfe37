from kfp.dsl import Dataset, Input, Model, Output

from components.base import component


@component
def predict_shard(
    rows: Input[Dataset],
    bundle: Input[Model],
    shard: int,
    shards: int,
    device: str,
    predictions: Output[Dataset],
):
    """Predict one shard of the rows (contiguous, cut on whole prediction batches) with the prepared bundle."""
    from rakuten_mm import steps

    steps.predict_shard(rows.path, bundle.path, shard, shards, predictions.path, device=device,
                        metadata=predictions.metadata)
