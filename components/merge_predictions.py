from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output

from components.base import component


@component
def merge_predictions(
    shard_predictions: Input[list[Dataset]],
    rows: Input[Dataset],
    shards: int,
    predictions_uri: str,
    predictions: Output[Dataset],
) -> NamedTuple("MergeOutputs", [("predictions_uri", str), ("rows", int), ("bundle_sha256", str),  # type: ignore[valid-type]
                                 ("model", str)]):
    """Check that every shard is there and every row predicted once, then write the predictions CSV (index,
    productid, imageid, prdtypecode, category, probability, bundle_sha256) to the predictions artifact and, in one
    step (a rename; a single S3 object), to predictions_uri. model: the model reference as resolved
    (models:/NAME/VERSION, or the bundle URI)."""
    from rakuten_mm import steps

    return steps.merge_predictions([p.path for p in shard_predictions], rows.path, shards, predictions_uri,
                                   predictions.path, metadata=predictions.metadata)
