"""Bundles and datasets on S3, against a real moto server over HTTP."""

import json
import shutil
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from rakuten_cli.main import main
from rakuten_mm import storage
from rakuten_mm.data import load_labelled
from rakuten_mm.errors import BundleError, StorageError
from rakuten_mm.inference import predict_rows
from rakuten_mm.model import load_bundle
from tests.unit.bundle_edits import tfidf_bundle_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def tfidf_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tfidf_bundle_for(synth_data, tmp_path_factory)


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bundle_round_trip(tiny_bundle, s3_bucket, synth_data):
    uri = f"s3://{s3_bucket}/models/v1"
    assert storage.publish_dir(tiny_bundle, uri, last="manifest.json") == uri
    version = storage.resolve(uri)
    assert version.startswith(f"{uri}/versions/")
    assert f"{version[len(f's3://{s3_bucket}/'):]}/manifest.json" in _keys(s3_bucket)
    rows = load_labelled(synth_data).frame.head(6)
    local, _, _ = predict_rows(load_bundle(tiny_bundle), rows, synth_data)
    remote, _, _ = predict_rows(load_bundle(uri), rows, synth_data)
    pinned, _, _ = predict_rows(load_bundle(version), rows, synth_data)  # the immutable copy loads on its own
    np.testing.assert_array_equal(local, remote)
    np.testing.assert_array_equal(local, pinned)


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
    monkeypatch.setattr(storage, "s3_client", lambda config=None: client)
    with pytest.raises(StorageError, match="connection reset"):
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


# ---- path traversal --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", ["../../{name}", "a/../../{name}", "/{name}", "a//{name}", "./{name}"])
def test_keys_that_would_land_outside_the_destination_are_refused(tiny_bundle, s3_bucket, tmp_path, rel):
    name = f"escape-{uuid.uuid4().hex}.txt"
    prefix = f"evil-{uuid.uuid4().hex[:8]}"  # parametrized cases share a bucket (its name is cut to 40 characters)
    storage.upload_dir(tiny_bundle, f"s3://{s3_bucket}/{prefix}", last="manifest.json")
    key = f"{prefix}/{rel.format(name=name)}"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=key, Body=b"pwned")
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(StorageError, match=f"refusing object key '{key}' under s3://{s3_bucket}/{prefix}"):
        storage.download_dir(f"s3://{s3_bucket}/{prefix}", dest)
    assert not dest.exists()  # every key is checked before the first byte is written
    assert not [p for p in tmp_path.rglob("*") if p.name == name]
    with pytest.raises(StorageError, match="refusing object key"):
        load_bundle(f"s3://{s3_bucket}/{prefix}")  # and the bundle no longer loads


def test_cli_on_a_prefix_with_an_escaping_key_is_one_error_line(tiny_bundle, s3_bucket, synth_data, capsys):
    storage.upload_dir(tiny_bundle, f"s3://{s3_bucket}/evil", last="manifest.json")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="evil/../../../../../../../tmp/x.txt", Body=b"x")
    for argv in (["evaluate", f"s3://{s3_bucket}/evil", str(synth_data)],
                 ["data", "validate", f"s3://{s3_bucket}/evil"]):
        code, out, err = _run(capsys, *argv)
        assert code == 1 and out == ""
        assert err.splitlines() == [err.strip()] and err.startswith("error: refusing object key"), err


def test_a_pointer_naming_a_path_is_refused(tiny_bundle, s3_bucket):
    uri = f"s3://{s3_bucket}/p"
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="p/current.json", Body=json.dumps({"version": "../../x"}))
    with pytest.raises(StorageError, match=r"names version '../../x'; expected a plain id"):
        load_bundle(uri)


# ---- S3 errors are storage errors ---------------------------------------------------------------------------------

def test_download_wraps_client_errors(s3_bucket, tmp_path, monkeypatch):
    with pytest.raises(StorageError, match=r"cannot read s3://no-such-bucket-\w+/x: .*NoSuchBucket"):
        storage.download_dir(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", tmp_path / "a")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="d/one.txt", Body=b"1")
    client = storage.s3_client()

    def denied(bucket, key, filename):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")

    monkeypatch.setattr(client, "download_file", denied)
    monkeypatch.setattr(storage, "s3_client", lambda config=None: client)
    with pytest.raises(StorageError, match=f"cannot read s3://{s3_bucket}/d: .*AccessDenied"):
        storage.download_dir(f"s3://{s3_bucket}/d", tmp_path / "b")


def test_upload_to_a_missing_bucket_is_a_storage_error(tiny_bundle):
    with pytest.raises(StorageError, match="cannot write s3://no-such-bucket"):
        storage.publish_dir(tiny_bundle, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/b", last="manifest.json")


def test_check_writable_fails_fast_on_a_missing_bucket_and_leaves_nothing(s3_bucket):
    started = time.monotonic()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-.*' does not exist"):
        storage.check_writable(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out")
    assert time.monotonic() - started < 10
    storage.check_writable(f"s3://{s3_bucket}/out")
    assert _keys(s3_bucket) == []  # the probe object is deleted


# ---- republishing ---------------------------------------------------------------------------------------------------

def test_republishing_fewer_files_leaves_exactly_the_new_bundle(tfidf_bundle, tiny_bundle, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/m"
    storage.publish_dir(tfidf_bundle, uri, last="manifest.json")  # text + tfidf (has tfidf.npz)
    assert load_bundle(uri).tfidf is not None
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")  # text + image (no tfidf.npz)
    model = load_bundle(uri)
    assert model.config["ensemble"]["members"] == ["text", "image"] and model.tfidf is None
    with storage.local_copy(uri) as root:
        assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    storage.publish_dir(tfidf_bundle, uri, last="manifest.json")
    versions = {k.split("/")[2] for k in _keys(s3_bucket, "m/versions/")}
    assert len(versions) == storage.KEEP_VERSIONS  # the current one and the one it replaced
    assert storage.resolve(uri).rsplit("/", 1)[1] in versions
    assert _keys(s3_bucket, "m/") == sorted(["m/current.json", *(k for k in _keys(s3_bucket, "m/versions/"))])


@pytest.mark.parametrize("fail_on", ["config.json", "manifest.json", "current.json"])
def test_an_interrupted_republish_leaves_the_previous_bundle_loadable(tfidf_bundle, tiny_bundle, s3_bucket,
                                                                     monkeypatch, fail_on):
    uri = f"s3://{s3_bucket}/m-{fail_on}"
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    before = load_bundle(uri).config
    client = storage.s3_client()
    real_upload, real_put = client.upload_file, client.put_object

    def upload(path, bucket, key):
        if key.endswith(fail_on):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "interrupted"}}, "PutObject")
        real_upload(path, bucket, key)

    def put(**kwargs):
        if kwargs["Key"].endswith(fail_on):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "interrupted"}}, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(client, "upload_file", upload)
    monkeypatch.setattr(client, "put_object", put)
    monkeypatch.setattr(storage, "s3_client", lambda config=None: client)
    with pytest.raises(StorageError, match="interrupted"):
        storage.publish_dir(tfidf_bundle, uri, last="manifest.json")
    monkeypatch.undo()
    assert load_bundle(uri).config == before


def test_a_publish_whose_cleanup_fails_still_serves_the_new_bundle(tfidf_bundle, tiny_bundle, s3_bucket,
                                                                   monkeypatch, caplog):
    uri = f"s3://{s3_bucket}/m"
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    client = storage.s3_client()

    def no_delete(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no delete"}}, "DeleteObjects")

    monkeypatch.setattr(client, "delete_objects", no_delete)
    monkeypatch.setattr(storage, "s3_client", lambda config=None: client)
    storage.publish_dir(tfidf_bundle, uri, last="manifest.json")
    monkeypatch.undo()
    assert "could not delete its old versions" in caplog.text
    assert load_bundle(uri).tfidf is not None
    storage.publish_dir(tfidf_bundle, uri, last="manifest.json")  # the next publish cleans up
    assert len({k.split("/")[2] for k in _keys(s3_bucket, "m/versions/")}) == storage.KEEP_VERSIONS


def test_publishing_over_a_legacy_flat_bundle_removes_only_its_files(tfidf_bundle, tiny_bundle, s3_bucket):
    uri = f"s3://{s3_bucket}/m"
    storage.upload_dir(tfidf_bundle, uri, last="manifest.json")  # published by hand or by an older version
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="m/README.txt", Body=b"not ours")
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    assert load_bundle(uri).config["ensemble"]["members"] == ["text", "image"]
    top = [k for k in _keys(s3_bucket, "m/") if not k.startswith("m/versions/")]
    assert top == ["m/README.txt", "m/current.json"]


def test_a_local_mirror_of_a_published_prefix_loads_the_current_version(tfidf_bundle, tiny_bundle, s3_bucket,
                                                                       tmp_path):
    # What KServe's storage initializer puts in /mnt/models for storageUri s3://bucket/m: the whole prefix.
    uri = f"s3://{s3_bucket}/m"
    storage.publish_dir(tfidf_bundle, uri, last="manifest.json")
    storage.publish_dir(tiny_bundle, uri, last="manifest.json")
    mirror = storage.download_dir(uri, tmp_path / "models")
    assert (mirror / "current.json").is_file() and len(list((mirror / "versions").iterdir())) == 2
    assert load_bundle(mirror).config["ensemble"]["members"] == ["text", "image"]
    shutil.rmtree(mirror / "versions" / json.loads((mirror / "current.json").read_text())["version"])
    with pytest.raises(StorageError, match="names version .* but .* is missing"):
        load_bundle(mirror)


def test_local_publish_replaces_a_pointer_mirror_and_refuses_other_directories(tiny_bundle, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(StorageError, match="refusing to replace .*photos: it is a directory of other files"):
        storage.publish_dir(tiny_bundle, other, last="manifest.json")
    assert (other / "holiday.jpg").read_bytes() == b"x"
    assert Path(storage.publish_dir(tiny_bundle, tmp_path / "new", last="manifest.json")).is_dir()
