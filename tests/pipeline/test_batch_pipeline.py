"""Batch prediction as a pipeline: shards cut on whole batches, merged in row order, written in one step; the local
run (kfp.local) gives the rows ``rakuten predict`` gives, from the registry's champion or a bundle URI, rerun to the
same bytes; a failed shard leaves the output URI as it was."""

from __future__ import annotations

import builtins
import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pipeline_helpers import Run, state_dir

from pipelines import local_runner
from rakuten_cli.main import main as rakuten_main
from rakuten_cli.pipeline import main as cli_main
from rakuten_mm import batch, registry, steps
from rakuten_mm.errors import ConfigError, StorageError
from rakuten_mm.tracking import Tracker, TrackingConfig

pytestmark = pytest.mark.pipeline


@pytest.mark.unit
@pytest.mark.parametrize(("rows", "shards", "expected"), [
    (40, 3, [(0, 32), (32, 40)]),  # two batches: at most two shards
    (200, 3, [(0, 96), (96, 192), (192, 200)]),  # 7 batches → 3 + 3 + 1
    (10, 4, [(0, 10)]),
    (64, 1, [(0, 64)]),
    (0, 2, []),
])
def test_shards_are_contiguous_runs_of_whole_batches(rows: int, shards: int,
                                                     expected: list[tuple[int, int]]) -> None:
    bounds = batch.shard_bounds(rows, shards)
    assert bounds == expected
    assert all(start % batch.BATCH_SIZE == 0 for start, _ in bounds)


@pytest.mark.unit
@pytest.mark.parametrize("shards", [0, -1, batch.MAX_SHARDS + 1])
def test_shard_count_is_checked(shards: int) -> None:
    with pytest.raises(ConfigError, match=f"shards must be between 1 and {batch.MAX_SHARDS}"):
        batch.shard_bounds(10, shards)


@pytest.mark.unit
def test_the_output_uri_names_a_writable_file(tmp_path: Path) -> None:
    batch.check_output(str(tmp_path / "new" / "predictions.csv"))
    with pytest.raises(ConfigError, match="names a file"):
        batch.check_output("s3://bucket/predictions/")
    with pytest.raises(StorageError, match="it is a directory"):
        batch.check_output(str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        batch.check_output(str(tmp_path / "file" / "predictions.csv"))


@pytest.mark.unit
@pytest.mark.parametrize(("uri", "parsed"), [
    ("models:/rakuten-product-classifier@champion", ("rakuten-product-classifier", "champion", None)),
    ("models:/m/12", ("m", None, "12")),
    ("models:/team/model@prod", ("team/model", "prod", None)),
])
def test_model_references(uri: str, parsed: tuple[str, str | None, str | None]) -> None:
    assert registry.parse_model_uri(uri) == parsed


@pytest.mark.unit
@pytest.mark.parametrize("uri", ["models:/", "models:/m", "models:/m/latest", "models:/@champion", "runs:/x/y"])
def test_bad_model_references_name_the_forms(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"models:/NAME@ALIAS or models:/NAME/VERSION"):
        registry.parse_model_uri(uri)


@pytest.mark.unit
def test_an_unknown_alias_is_one_clear_error(tmp_path: Path) -> None:
    cfg = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "batch", (tmp_path / "artifacts").as_uri())
    with pytest.raises(ConfigError, match="names no model version in the registry"), \
            registry.model_bundle("models:/nothing-here@champion", cfg):
        pass


def _shard(root: Path, shard: int, index: list[int]) -> Path:
    frame = pd.DataFrame({"productid": index, "imageid": index, "prdtypecode": 10, "category": "Books",
                          "probability": 0.5, batch.HASH_COLUMN: "abc"}, index=pd.Index(index))
    batch.write_shard(frame, root / f"shard-{shard}", shard, (index[0], index[-1] + 1))
    return root / f"shard-{shard}"


@pytest.mark.unit
def test_a_missing_shard_fails_the_merge_and_leaves_the_output_alone(tmp_path: Path) -> None:
    rows = pd.DataFrame({"designation": ["x"] * 40}, index=pd.RangeIndex(100, 140))
    batch.write_rows(rows, tmp_path / "rows", {"data_uri": "d", "version": "v", "model": "m",
                                               batch.HASH_COLUMN: "abc"})
    first = _shard(tmp_path, 0, list(range(100, 132)))
    out = tmp_path / "predictions.csv"
    out.write_text("the previous predictions\n")
    with pytest.raises(RuntimeError, match=r"expected predictions of shards 0\.\.1, got shards \[0\]"):
        steps.merge_predictions([str(first)], str(tmp_path / "rows"), 3, str(out), str(tmp_path / "artifact.csv"))
    assert out.read_text() == "the previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "rows", "shard-0"]
    second = _shard(tmp_path, 1, list(range(132, 140)))
    merged = steps.merge_predictions([str(second), str(first)], str(tmp_path / "rows"), 3, str(out),
                                     str(tmp_path / "artifact.csv"))
    assert merged == steps.Merged(str(out), 40, "abc", "m")
    assert pd.read_csv(out, index_col=0).index.tolist() == list(range(100, 140))
    assert out.read_bytes() == (tmp_path / "artifact.csv").read_bytes()


@pytest.mark.integration
def test_predictions_reach_s3_as_one_object(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    frame = pd.DataFrame({"prdtypecode": [10, 40], "category": ["Books", "Video Games"]})
    uri = f"s3://{s3_bucket}/out/predictions.csv"
    batch.check_output(uri)
    assert batch.write_output(frame, uri) == uri
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["out/predictions.csv"]
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="out/predictions.csv")["Body"].read()
    assert body == frame.to_csv().encode()


@pytest.mark.unit
def test_cli_predict_passes_its_options_and_prints_the_result(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake(data: str, model: str, out: str, shards: int, options: Any, tracking_uri: Any, device: str,
             quiet: bool, verbose: bool) -> dict[str, Any]:
        seen.update(data=data, model=model, out=out, shards=shards, options=options, device=device, quiet=quiet,
                    verbose=verbose)
        return {"predictions_uri": out, "rows": 7, "bundle_sha256": "f" * 64, "model": "models:/m/3"}

    monkeypatch.setattr(local_runner, "predict_local", fake)
    assert cli_main(["pipeline", "predict", "data", "--out", "p.csv", "--shards", "2", "--on-missing-image",
                     "text-only", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 7 predictions to p.csv" in out and f"model: models:/m/3 (bundle sha256 {'f' * 64})" in out
    assert seen["model"] == "models:/rakuten-product-classifier@champion" and seen["shards"] == 2
    assert seen["options"].on_missing_image == "text-only" and seen["device"] == "cpu" and seen["quiet"]
    assert not seen["verbose"]


@pytest.mark.unit
def test_batch_arguments_cover_every_pipeline_parameter() -> None:
    from pipelines.batch_pipeline import build

    args = local_runner.batch_arguments("d", "p.csv", "models:/m@a", 2)
    assert set(args) == set(build().component_spec.inputs)
    with pytest.raises(ConfigError, match="device must be one of"):
        local_runner.batch_arguments("d", "p.csv", "m", 2, device="tpu")


# ---- local pipeline runs (kfp.local) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def champion_run(synth_data: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``rakuten pipeline predict`` with the default model reference: the registry's champion (the tiny bundle)."""
    state = tmp_path_factory.mktemp("batch-state")
    out = tmp_path_factory.mktemp("batch-out") / "predictions.csv"
    with state_dir(state):
        cfg = TrackingConfig.from_env()
        registry.register_bundle(Tracker.start(cfg, run_name="champion"), tiny_bundle,
                                 registry.Comparison(rows=1, data_version="v", challenger_score=0.5))
        result = local_runner.predict_local(str(synth_data), "models:/rakuten-product-classifier@champion",
                                            str(out), shards=3, quiet=True)
    return Run(result, state, str(out))


@pytest.mark.e2e
@pytest.mark.slow
def test_local_run_gives_the_rows_of_rakuten_predict(champion_run: Run, synth_data: Path, tiny_bundle: Path,
                                                     tmp_path: Path) -> None:
    result = champion_run.result
    digest = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    assert result["model"] == "models:/rakuten-product-classifier/1" and result["bundle_sha256"] == digest
    cli_out = tmp_path / "cli.csv"
    assert rakuten_main(["predict", str(tiny_bundle), str(synth_data), "--out", str(cli_out)]) == 0
    expected = pd.read_csv(cli_out, index_col=0)
    got = pd.read_csv(champion_run.out, index_col=0)
    assert result["rows"] == len(expected) == 40  # two shards of the three asked for: 32 + 8 rows
    assert list(got.columns) == [*expected.columns, batch.HASH_COLUMN]
    assert set(got[batch.HASH_COLUMN]) == {digest}
    pd.testing.assert_frame_equal(got.drop(columns=batch.HASH_COLUMN), expected, check_exact=True)
    shards = sorted(p.parent.name for p in Path(result["run_dir"]).rglob(batch.SHARD))
    assert len(shards) == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_a_rerun_from_the_bundle_uri_writes_the_same_bytes(champion_run: Run, synth_data: Path,
                                                           tiny_bundle: Path) -> None:
    print_before = builtins.print
    before = Path(champion_run.out).read_bytes()
    with state_dir(champion_run.state):
        result = local_runner.predict_local(str(synth_data), str(tiny_bundle), champion_run.out, shards=3,
                                            quiet=True)
    # kfp.local swaps builtins.print in each of the parallel shard threads; the run must leave it as it was.
    assert builtins.print is print_before
    assert result["model"] == str(tiny_bundle)
    assert Path(champion_run.out).read_bytes() == before
    assert sorted(p.name for p in Path(champion_run.out).parent.iterdir()) == ["predictions.csv"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_failed_shard_fails_the_run_and_leaves_the_output_as_it_was(synth_data: Path, tiny_bundle: Path,
                                                                      tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("the shards fail here by asking for CUDA on a machine without it")
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("the previous predictions\n")
    with state_dir(tmp_path / "state"), pytest.raises(ConfigError, match="--device cuda was asked for"):
        local_runner.predict_local(str(synth_data), str(tiny_bundle), str(out), shards=2, device="cuda",
                                   quiet=True)
    assert out.read_text() == "the previous predictions\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]
