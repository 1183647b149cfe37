"""``rakuten pipeline run --runner docker`` without a container engine: the mounts, environment and permissions it
plans, and its user errors. The real container run is ``make smoke-images`` (tools/smoke_images.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipelines import docker_runner as dr
from pipelines.local_runner import run_local
from rakuten_cli.pipeline import build_parser
from rakuten_mm.config import TrainConfig
from rakuten_mm.errors import ConfigError

pytestmark = [pytest.mark.pipeline, pytest.mark.unit]

STATE = Path("/home/u/.rakuten")
SCRATCH = STATE / "pipelines" / "scratch-1"


def _mounts(p: dr.DockerPlan) -> dict[str, tuple[str, bool]]:
    return {str(m.target): (str(m.source), m.read_only) for m in p.mounts}


def test_local_data_read_only_state_writable_out_staged():
    p = dr.plan("/home/u/data", "/home/u/models/bundle", STATE, SCRATCH, None, {})
    assert _mounts(p) == {str(STATE): (str(STATE), False), "/home/u/data": ("/home/u/data", True),
                          "/home/u/models": (str(SCRATCH / "out"), False)}
    assert p.staged_out == SCRATCH / "out" and p.out == Path("/home/u/models/bundle")
    assert set(p.writable) == {STATE, SCRATCH / "out"}
    assert p.environment == {"RAKUTEN_STATE_DIR": str(STATE), "MLFLOW_DISABLE_TELEMETRY": "true"}
    assert p.sqlite_store == STATE / "mlflow.db"


def test_paths_inside_the_state_dir_need_no_mount_of_their_own():
    p = dr.plan(str(STATE / "data"), str(STATE / "bundles" / "b"), STATE, SCRATCH, None, {})
    assert _mounts(p) == {str(STATE): (str(STATE), False)}
    assert p.staged_out is None and p.out == STATE / "bundles" / "b"


def test_s3_data_and_bundle_mount_nothing_and_credentials_are_passed():
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "HOME": "/home/u", "AWS_DEFAULT_REGION": ""}
    p = dr.plan("s3://b/data", "s3://b/bundle", STATE, SCRATCH, None, env)
    assert _mounts(p) == {str(STATE): (str(STATE), False)}
    assert p.out is None and p.staged_out is None
    assert p.environment == {"RAKUTEN_STATE_DIR": str(STATE), "MLFLOW_DISABLE_TELEMETRY": "true",
                             "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                             "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                             "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}


@pytest.mark.parametrize("uri", ["sqlite:////elsewhere/mlflow.db", "file:///elsewhere/mlruns", "/elsewhere/mlruns"])
def test_a_local_mlflow_store_outside_the_state_dir_is_refused(uri):
    with pytest.raises(ConfigError, match="state directory"):
        dr.plan("/d", "/o/b", STATE, SCRATCH, uri, {})
    with pytest.raises(ConfigError, match="MLflow server"):
        dr.plan("/d", "/o/b", STATE, SCRATCH, None, {"MLFLOW_TRACKING_URI": uri})


@pytest.mark.parametrize(("uri", "store"), [(f"sqlite:///{STATE}/other.db", STATE / "other.db"),
                                            ("http://mlflow:5000", None), ("https://m.example.com", None)])
def test_a_store_in_the_state_dir_and_servers_are_accepted(uri, store):
    assert dr.plan("/d", "/o/b", STATE, SCRATCH, uri, {}).sqlite_store == store


def test_a_bundle_inside_the_read_only_data_is_refused():
    with pytest.raises(ConfigError, match="read-only"):
        dr.plan("/home/u/data", "/home/u/data/bundle", STATE, SCRATCH, None, {})


def test_runner_arguments_are_what_docker_runner_accepts():
    from kfp import local

    p = dr.plan("/home/u/data", "/home/u/models/bundle", STATE, SCRATCH, None, {})
    args = dr.runner_arguments(p, gid=1234)
    local.DockerRunner(**args)  # raises on an argument kfp does not pass to containers.run
    assert {m["Target"]: (m["Source"], m["ReadOnly"]) for m in args["mounts"]} == {
        "/home/u/data": ("/home/u/data", True), "/home/u/models": (str(SCRATCH / "out"), False),
        str(STATE): (str(STATE), False)}
    assert all(m["Type"] == "bind" for m in args["mounts"])
    assert args["group_add"] == ["1234"] and args["network_mode"] == "host"
    assert args["entrypoint"][:2] == ["/bin/sh", "-c"] and "umask 0002" in args["entrypoint"][2]


def test_parent_mounts_come_before_the_mounts_inside_them():
    p = dr.plan("/home/u/work/data", "/home/u/work/bundle", STATE, SCRATCH, None, {})
    targets = [m["Target"] for m in dr.runner_arguments(p, gid=0)["mounts"]]
    assert targets.index("/home/u/work") < targets.index("/home/u/work/data")


def test_grant_group_write_makes_directories_setgid_and_files_group_writable(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "f").write_text("x")
    os.chmod(tmp_path / "a" / "f", 0o600)
    os.chmod(tmp_path / "a" / "b", 0o700)
    (tmp_path / "a" / "link").symlink_to("/etc/hostname")
    dr.grant_group_write([tmp_path / "a", tmp_path / "missing"])
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) & (stat.S_IRWXG | stat.S_ISGID) == stat.S_IRWXG | stat.S_ISGID
    assert stat.S_IMODE((tmp_path / "a" / "f").stat().st_mode) == 0o660


def test_prepare_then_finish_publishes_the_staged_bundle(tmp_path):
    state, out = tmp_path / "state", tmp_path / "models" / "bundle"
    state.mkdir()
    p = dr.plan(str(tmp_path / "data"), str(out), state, state / "scratch", None, {})
    dr.prepare(p)
    assert p.staged_out is not None and p.staged_out.is_dir()
    assert (state / "mlflow.db").is_file() and (state / "mlflow.db").stat().st_mode & stat.S_IWGRP
    written = p.staged_out / "bundle"  # what the register step writes at /…/models/bundle inside the container
    written.mkdir()
    (written / "manifest.json").write_text("{}")
    dr.finish(p)
    assert (out / "manifest.json").read_text() == "{}"


def test_cli_run_takes_runner_and_image():
    args = build_parser().parse_args(["run", "d", "--out", "o", "--runner", "docker", "--image", "r/i:1"])
    assert (args.runner, args.image) == ("docker", "r/i:1")
    assert build_parser().parse_args(["run", "d", "--out", "o"]).runner == "subprocess"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "d", "--out", "o", "--runner", "k8s"])


def test_image_without_the_docker_runner_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="--image applies to --runner docker"):
        run_local(str(tmp_path), str(tmp_path / "o"), TrainConfig(), image="r/i:1")


def test_no_docker_api_is_a_user_error_naming_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    monkeypatch.setenv("RAKUTEN_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="podman system service"):
        run_local(str(tmp_path / "data"), str(tmp_path / "o"), TrainConfig(), runner="docker")
    assert not list((tmp_path / "state" / "pipelines").glob("scratch-*")), "scratch left behind"
