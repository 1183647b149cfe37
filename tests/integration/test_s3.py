"""Bundles and datasets on S3, against a real moto server over HTTP."""


import boto3
import numpy as np
import pytest

from rakuten_mm import storage
from rakuten_mm.bundle import load_bundle
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import BundleError, StorageError
from rakuten_mm.inference import predict_rows

pytestmark = pytest.mark.integration


def test_bundle_round_trip(tiny_bundle, s3_bucket, synth_data):
    uri = f"s3://{s3_bucket}/models/v1"
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "models/v1/manifest.json" in keys
    rows = load_labelled(synth_data).frame.head(6)
    local, _, _ = predict_rows(load_bundle(tiny_bundle), rows, synth_data)
    remote, _, _ = predict_rows(load_bundle(uri), rows, synth_data)
    np.testing.assert_array_equal(local, remote)


def test_manifest_is_uploaded_last_so_a_partial_upload_never_verifies(tiny_bundle, s3_bucket, monkeypatch):
    uploaded: list[str] = []
    client = storage.s3_client()
    real_upload = client.upload_file

    def failing_upload(path, bucket, key):
        uploaded.append(key)
        if key.endswith("manifest.json"):
            raise OSError("connection reset")  # crash just before the commit marker
        real_upload(path, bucket, key)

    monkeypatch.setattr(client, "upload_file", failing_upload)
    monkeypatch.setattr(storage, "s3_client", lambda: client)
    with pytest.raises(OSError):
        storage.publish_dir(tiny_bundle, f"s3://{s3_bucket}/half", last="manifest.json")
    assert uploaded[-1].endswith("manifest.json")
    monkeypatch.undo()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(f"s3://{s3_bucket}/half")


def test_dataset_from_s3_trains_and_evaluates(synth_data, s3_bucket, tmp_path):
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.training import train

    storage.upload_dir(synth_data, f"s3://{s3_bucket}/data")
    cfg = TrainConfig(epochs_text=1, epochs_image=1, image_size=32, image_weights="none", members=("text",))
    result = train(f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/bundle", cfg)
    assert result.bundle_uri == f"s3://{s3_bucket}/bundle"
    model = load_bundle(result.bundle_uri)
    assert model.config["ensemble"]["members"] == ["text"] and model.backbone is None
    with storage.local_copy(f"s3://{s3_bucket}/data") as root:
        assert load_labelled(root).version == load_labelled(synth_data).version


def test_missing_prefix_is_a_clear_error(s3_bucket):
    with pytest.raises(StorageError, match="nothing found under"):
        load_bundle(f"s3://{s3_bucket}/nope")
    with pytest.raises(StorageError, match="no bucket"):
        storage.split_s3("s3:///x")
