"""Datasets on S3 read where they lie: only the objects a step needs, concurrently, retried on transient errors.

Against a real moto server over HTTP; ``devtools.s3_proxy`` (a real process on loopback) in front of it adds
latency, injects 5xx answers and broken bodies, and logs every request so a test can count what was read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

from devtools import s3_proxy
from rakuten_mm import data, storage
from rakuten_mm.errors import ConfigError, DataValidationError, StorageError

pytestmark = pytest.mark.integration


@pytest.fixture
def dataset(synth_data: Path, s3_bucket: str) -> str:
    uri = f"s3://{s3_bucket}/data"
    storage.upload_dir(synth_data, uri)
    return uri


@pytest.fixture
def proxy(moto_s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[Callable[..., Path]]:
    """``proxy(*options)``: boto3 pointed at a proxy in front of moto; returns the proxy's request log."""
    with contextlib.ExitStack() as stack:
        def start(*options: str) -> Path:
            log = tmp_path / f"requests-{uuid.uuid4().hex[:6]}.log"
            running = stack.enter_context(s3_proxy.start(moto_s3["AWS_ENDPOINT_URL"], "--log", str(log), *options))
            monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
            return log

        yield start


def _requests(log: Path) -> list[tuple[str, str, str, int]]:
    """``(method, path, status, in_flight)`` of every request the proxy saw."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(m, p, s, int(n)) for m, p, s, n in (line.split(" ") for line in lines)]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _train_images(synth_data: Path, n: int) -> list[str]:
    return sorted(p.relative_to(synth_data).as_posix() for p in (synth_data / "images/image_train").iterdir())[:n]


def test_fetch_downloads_exactly_the_given_keys(synth_data, dataset, proxy, tmp_path):
    proxied = proxy()
    keys = _train_images(synth_data, 12)
    dest = storage.fetch(dataset, keys + keys[:3], tmp_path / "dest", concurrency=4)  # duplicates read once
    assert _files(dest) == keys
    for key in keys:
        assert (dest / key).read_bytes() == (synth_data / key).read_bytes()
    bucket = dataset.split("/")[2]
    assert sorted((m, p) for m, p, _, _ in _requests(proxied)) == sorted(
        ("GET", f"/{bucket}/data/{key}") for key in keys)  # one GET each: no listing, no HEAD


def test_fetch_runs_requests_concurrently(synth_data, dataset, proxy, tmp_path):
    proxied = proxy("--latency-ms", "50")
    keys = _train_images(synth_data, 32)
    storage.fetch(dataset, keys, tmp_path / "dest", concurrency=8)
    assert len(_files(tmp_path / "dest")) == 32
    in_flight = max(n for *_, n in _requests(proxied))
    assert 2 <= in_flight <= 8  # overlapping requests, never more than asked for


def test_a_transient_error_is_retried(synth_data, dataset, proxy, tmp_path):
    proxied = proxy("--fail", "503:2:GET /[^/]+/data/images/")
    keys = _train_images(synth_data, 4)
    dest = storage.fetch(dataset, keys, tmp_path / "dest", concurrency=1)
    assert _files(dest) == keys and (dest / keys[0]).read_bytes() == (synth_data / keys[0]).read_bytes()
    seen = _requests(proxied)
    assert [s for _, p, s, _ in seen if p.endswith(keys[0])] == ["503", "503", "200"]


def test_a_body_that_breaks_off_is_fetched_again_and_never_left_half_written(synth_data, dataset, proxy, tmp_path):
    proxied = proxy("--truncate", "1:GET /[^/]+/data/images/")
    keys = _train_images(synth_data, 3)
    dest = storage.fetch(dataset, keys, tmp_path / "dest", concurrency=1)
    assert _files(dest) == keys  # no leftover temporary file
    assert (dest / keys[0]).read_bytes() == (synth_data / keys[0]).read_bytes()
    assert [s for _, p, s, _ in _requests(proxied) if p.endswith(keys[0])] == ["truncated", "200"]


def test_a_denied_read_is_a_storage_error_naming_the_object(synth_data, dataset, proxy, tmp_path):
    proxied = proxy("--fail", "403:-1:GET /[^/]+/data/images/")
    key = _train_images(synth_data, 1)[0]
    with pytest.raises(StorageError, match=f"cannot read {dataset}/{key} .*AccessDenied"):
        storage.fetch(dataset, [key], tmp_path / "dest")
    assert _files(tmp_path / "dest") == []
    assert len(_requests(proxied)) == 1  # not a transient error: not retried


def test_a_missing_object_is_a_storage_error(dataset, tmp_path):
    with pytest.raises(StorageError, match=f"cannot read {dataset}/images/nope.jpg .*no such object"):
        storage.fetch(dataset, ["images/nope.jpg"], tmp_path / "dest")


@pytest.mark.parametrize("rel", ["../../{name}", "a/../../{name}", "/{name}", "a//{name}", "./{name}", ""])
def test_fetch_refuses_keys_that_would_land_outside_the_destination(dataset, tmp_path, rel):
    name = f"escape-{uuid.uuid4().hex}.txt"
    key = rel.format(name=name)
    if key:
        boto3.client("s3").put_object(Bucket=dataset.split("/")[2], Key=f"data/{key}", Body=b"pwned")
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(StorageError, match=f"refusing object key 'data/{re.escape(key)}' under {dataset}"):
        storage.fetch(dataset, ["X_train_update.csv", key], dest)
    assert not dest.exists()  # every key is checked before anything is created or written
    assert not [p for p in tmp_path.rglob("*") if p.name == name]


def test_fetch_refuses_a_symlink_out_of_the_destination(synth_data, dataset, tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "images").symlink_to(outside)
    with pytest.raises(StorageError, match="points outside"):
        storage.fetch(dataset, _train_images(synth_data, 1), dest)
    assert list(outside.iterdir()) == []


def test_concurrency_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.delenv(storage.CONCURRENCY_ENV, raising=False)
    assert storage.transfer_concurrency() == storage.DEFAULT_CONCURRENCY
    monkeypatch.setenv(storage.CONCURRENCY_ENV, "12")
    assert storage.transfer_concurrency() == 12
    assert storage.transfer_concurrency(3) == 3
    for bad in ("0", "-1", "abc", "1.5", str(storage.MAX_CONCURRENCY + 1)):
        monkeypatch.setenv(storage.CONCURRENCY_ENV, bad)
        with pytest.raises(ConfigError, match=f"RAKUTEN_S3_CONCURRENCY .* from 1 to {storage.MAX_CONCURRENCY}, "
                                              f"got '{bad}'"):
            storage.transfer_concurrency()


# ---- the data steps: validation in place, then only each split's images ---------------------------------------------

def test_validation_on_s3_matches_local_and_writes_no_image(synth_data, dataset, proxy, monkeypatch, tmp_path):
    proxied = proxy()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    stored: list[Path] = []
    check = data._check_content

    def spy(rel: str, content: bytes | None) -> data.ImageCheck:
        stored.extend(scratch.rglob("*.jpg"))  # what lies on disk while images are being checked
        return check(rel, content)

    monkeypatch.setattr(data, "_check_content", spy)
    remote, local = data.read_labelled(dataset), data.load_labelled(synth_data)
    pd.testing.assert_frame_equal(remote.frame, local.frame)
    assert remote.version == local.version and remote.root == dataset
    assert stored == []  # images are streamed through the check, never stored
    paths = [p for m, p, _, _ in _requests(proxied) if m == "GET"]
    assert not [p for p in paths if "image_test" in p]  # the test split's images are not read
    assert len([p for p in paths if "image_train" in p]) == len(list((synth_data / "images/image_train").iterdir()))


def test_validation_on_s3_reports_bad_and_missing_images_as_locally(synth_data, s3_bucket, tmp_path):
    local = tmp_path / "data"
    shutil.copytree(synth_data, local)
    images = sorted((local / "images/image_train").iterdir())
    images[0].write_bytes(b"not a jpeg")
    images[1].unlink()
    uri = f"s3://{s3_bucket}/bad"
    storage.upload_dir(local, uri)
    with pytest.raises(DataValidationError) as remote:
        data.validate(uri)
    with pytest.raises(DataValidationError) as here:
        data.validate(local)
    assert remote.value.report.problems == here.value.report.problems  # type: ignore[attr-defined]
    kinds = {why.split(":")[0] for _, why in here.value.report.problems}  # type: ignore[attr-defined]
    assert kinds == {"missing image", "unreadable image"}
    kept = data.read_labelled(uri, data.DataOptions(on_bad_rows="drop", on_missing_image="text-only"))
    assert kept.version == data.load_labelled(local, data.DataOptions("drop", "text-only")).version


def test_each_step_reads_only_its_split(synth_data, dataset, tmp_path):
    prepared = data.preprocess(dataset, tmp_path / "prepared", seed=0)
    assert prepared.data_uri == dataset
    for split in ("test", "val"):
        rows = prepared.rows(split)
        with data.images_of(prepared.data_uri, rows) as root:
            assert _files(root) == sorted(p for p in rows["image"] if p)
            for rel in rows["image"].head(3):
                assert (root / rel).read_bytes() == (synth_data / rel).read_bytes()
    with data.images_of(synth_data, prepared.rows("test")) as root:
        assert root == synth_data  # a local directory is used in place, nothing copied


def test_a_missing_data_prefix_is_one_clear_error(s3_bucket, tmp_path):
    with pytest.raises(StorageError, match="nothing found under"):
        data.read_labelled(f"s3://{s3_bucket}/nope")
    with pytest.raises(StorageError, match="no such directory"):
        data.read_labelled(tmp_path / "nope")


def test_tempdir_env_is_respected_by_local_files(dataset, synth_data, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    keys = _train_images(synth_data, 2)
    with storage.local_files(dataset, keys) as root:
        assert root.parent == tmp_path and _files(root) == keys
    assert not root.exists()  # removed afterwards
    assert os.listdir(tmp_path) == []


def test_a_data_prefix_holding_an_escaping_key_is_refused_before_anything_is_read(dataset, tmp_path):
    bucket = dataset.split("/")[2]
    boto3.client("s3").put_object(Bucket=bucket, Key="data/../../../../tmp/x.txt", Body=b"x")
    with pytest.raises(StorageError, match=f"refusing object key 'data/../../../../tmp/x.txt' under {dataset}"):
        data.read_labelled(dataset)
    with pytest.raises(StorageError, match="refusing object key"):
        data.validate(dataset)


@pytest.mark.slow
def test_the_evaluate_step_reads_only_the_test_split_images(tiny_bundle, dataset, proxy, tmp_path, monkeypatch):
    from rakuten_mm import steps
    from rakuten_mm.tracking import Tracker, TrackingConfig

    prepared = data.preprocess(dataset, tmp_path / "dataset", seed=0)
    monkeypatch.setenv("RAKUTEN_STATE_DIR", str(tmp_path / "state"))  # an empty registry: no champion to score
    run_id = Tracker.start(TrackingConfig.from_env(), run_name="pipeline run").run_id
    proxied = proxy()
    result = steps.evaluate(str(tmp_path / "dataset"), str(tiny_bundle), str(tmp_path / "evaluation"),
                            mlflow_run_id=run_id)
    assert 0 <= result.test_weighted_f1 <= 1
    bucket = dataset.split("/")[2]
    read = sorted(p for m, p, _, _ in _requests(proxied) if m == "GET")
    wanted = [f"/{bucket}/data/{rel}" for rel in prepared.rows("test")["image"] if rel]
    pointer = f"/{bucket}/data/{storage.POINTER}"  # the publish-pointer probe (404 on a dataset)
    assert read == sorted([pointer, *wanted])  # the held-out split's images, each once; no listing, no CSV
