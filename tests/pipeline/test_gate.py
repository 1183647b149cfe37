"""The promotion gate compares like with like: both models on the same rows, a paired bootstrap, no silent promotion
of a champion that cannot be scored, and registrations that race never both win.

Constructed cases run on a real sqlite MLflow registry with stand-in bundles; the evaluate step's own cases load real
(tiny) bundles from the registry and score them on real rows."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import state_dir

from rakuten_mm import registry, steps
from rakuten_mm.data import load_prepared, preprocess
from rakuten_mm.errors import ConfigError
from rakuten_mm.tracking import Tracker, TrackingConfig
from tests.unit.bundle_edits import edit_json

pytestmark = pytest.mark.pipeline

CODES = np.array([10, 40, 50, 60, 1140])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrackingConfig:
    """One sqlite registry for the module (creating one takes seconds); each test registers its own model."""
    root = tmp_path_factory.mktemp("registry")
    return TrackingConfig(f"sqlite:///{root / 'mlflow.db'}", "gate", (root / "artifacts").as_uri())


@pytest.fixture
def cfg(store: TrackingConfig) -> TrackingConfig:
    return store


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"gate-{request.node.name.removeprefix('test_')[:60]}"


def _stand_in(root: Path, name: str) -> Path:
    """A directory registered as a version (the registry never opens it: the evaluate step does)."""
    path = root / name
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"name": name}))
    return path


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(CODES, n)


def _wrong(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``y`` with a ``share`` of its rows (chosen at random) predicted as another code."""
    out = y.copy()
    rows = np.random.default_rng(seed).choice(len(y), int(share * len(y)), replace=False)
    out[rows] = np.where(y[rows] == CODES[0], CODES[1], CODES[0])
    return out


def _register(cfg: TrackingConfig, bundle: Path, comparison: registry.Comparison, *, margin: float = 0.0,
              name: str = registry.MODEL_NAME, tags: dict[str, str] | None = None) -> registry.GateDecision:
    return registry.register_bundle(Tracker.start(cfg, run_name=bundle.name), bundle, comparison, margin, name,
                                    tags=tags)


def _first(cfg: TrackingConfig, root: Path, name: str, tags: dict[str, str] | None = None) -> registry.GateDecision:
    return _register(cfg, _stand_in(root, "first"), registry.Comparison(rows=10, data_version="v1",
                                                                       challenger_score=0.5), name=name, tags=tags)


@pytest.mark.unit
def test_paired_bootstrap_reports_the_confidence_of_a_clear_win_and_of_a_tie() -> None:
    y = _labels(400)
    clear = registry.paired_bootstrap(y, _wrong(y, 0.1, 1), _wrong(y, 0.4, 2), margin=0.0, resamples=300)
    assert clear.difference > 0.2 and clear.confidence == 1.0 and 0 < clear.low < clear.difference < clear.high
    same = registry.paired_bootstrap(y, _wrong(y, 0.3, 3), _wrong(y, 0.3, 3), margin=0.0, resamples=300)
    assert (same.difference, same.confidence, same.low, same.high) == (0.0, 0.0, 0.0, 0.0)
    # The margin is part of the question: a 0.3 lead rarely clears a 0.3 margin.
    assert registry.paired_bootstrap(y, _wrong(y, 0.1, 1), _wrong(y, 0.4, 2), margin=0.3,
                                     resamples=300).confidence < 0.7


@pytest.mark.unit
def test_the_resampled_weighted_f1_is_sklearns_with_row_counts() -> None:
    from sklearn.metrics import f1_score

    y = _labels(500)
    pred = _wrong(y, 0.3, 4)
    pred[:20] = 2583  # a class the rows do not hold
    counts = np.random.default_rng(1).multinomial(len(y), np.full(len(y), 1 / len(y)), size=5).astype(float)
    expected = [f1_score(y, pred, average="weighted", sample_weight=c, zero_division=0) for c in counts]
    np.testing.assert_allclose(registry.resampled_weighted_f1(y, pred, counts), expected, rtol=1e-12)
    # The gate's single figures (register loads no scikit-learn) are the same metric.
    assert registry.weighted_f1(y, pred) == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0),
                                                          rel=1e-12)


@pytest.mark.unit
def test_the_same_comparison_gives_the_same_confidence() -> None:
    y = _labels(200)
    a, b = _wrong(y, 0.2, 1), _wrong(y, 0.25, 2)
    assert registry.paired_bootstrap(y, a, b, 0.0) == registry.paired_bootstrap(y, a, b, 0.0)


def test_a_challenger_better_only_on_its_own_validation_rows_is_not_promoted(cfg: TrackingConfig, name: str,
                                                                           tmp_path: Path) -> None:
    _first(cfg, tmp_path, name, {"val_weighted_f1": "0.50"})
    y = _labels(300)
    # Its own validation split (which chose its epoch and weights) says 0.99; on the rows both models are scored
    # on, it is worse than the champion.
    comparison = registry.compare(y, _wrong(y, 0.35, 1), _wrong(y, 0.15, 2), data_version="v2",
                                  champion_version="1")
    decision = _register(cfg, _stand_in(tmp_path, "lucky"), comparison, name=name, tags={"val_weighted_f1": "0.99"})
    assert (decision.promoted, decision.outcome) == (False, registry.KEPT)
    assert decision.comparison.challenger_score < decision.comparison.champion_score  # type: ignore[operator]
    assert "kept the champion" in decision.reason and "on the same 300 held-out test rows" in decision.reason
    assert "in 0.0% of 1000 resamples" in decision.reason
    assert registry.alias_version(cfg, registry.CHAMPION, name) == "1"
    assert registry.alias_version(cfg, registry.CHALLENGER, name) == "2"

    # A challenger whose own validation score is lower, but which wins on the same rows, is promoted.
    comparison = registry.compare(y, _wrong(y, 0.05, 3), _wrong(y, 0.15, 2), data_version="v2",
                                  champion_version="1")
    decision = _register(cfg, _stand_in(tmp_path, "better"), comparison, name=name, tags={"val_weighted_f1": "0.40"})
    assert (decision.promoted, decision.outcome) == (True, registry.PROMOTED)
    assert decision.comparison.bootstrap is not None and decision.comparison.bootstrap.confidence > 0.95
    assert "in 100.0% of 1000 resamples" in decision.reason
    assert registry.alias_version(cfg, registry.CHAMPION, name) == "3"
    client = registry.mlflow_client(cfg)
    version = client.get_model_version(name, "3")
    assert version.tags["gate"] == registry.PROMOTED and version.tags["gate_reason"] == decision.reason
    assert version.tags["val_weighted_f1"] == "0.40"  # kept for the record, not compared
    # The version is the run's logged model (the registry's own copy): an MLflow model wrapping the bundle.
    logged = client.get_logged_model(client.get_run(version.run_id).outputs.model_outputs[0].model_id)
    assert decision.source == version.source == logged.artifact_location
    with registry.model_bundle(f"models:/{name}/3", cfg) as (path, pinned):
        assert pinned == f"models:/{name}/3" and json.loads((path / "manifest.json").read_text()) == {"name": "better"}
        assert (path.parents[1] / "MLmodel").is_file()  # <model>/artifacts/<bundle dir>


def test_the_margin_applies_to_the_scores_on_the_same_rows(cfg: TrackingConfig, name: str, tmp_path: Path) -> None:
    _first(cfg, tmp_path, name)
    y = _labels(300)
    comparison = registry.compare(y, _wrong(y, 0.10, 1), _wrong(y, 0.15, 2), data_version="v1",
                                  champion_version="1", margin=0.2)
    decision = _register(cfg, _stand_in(tmp_path, "small-lead"), comparison, margin=0.2, name=name)
    assert not decision.promoted and "by more than 0.2000" in decision.reason
    with pytest.raises(ConfigError, match="min_improvement must be a number between 0 and 1"):
        _register(cfg, _stand_in(tmp_path, "bad-margin"), comparison, margin=1.5, name=name)


def test_a_champion_that_cannot_be_scored_is_never_replaced_silently(cfg: TrackingConfig, name: str,
                                                                     tmp_path: Path) -> None:
    _first(cfg, tmp_path, name)
    y = _labels(50)
    comparison = registry.compare(y, y, None, data_version="v2", champion_version="1",
                                  problem="its label map differs from the challenger's (...)")
    assert comparison.champion_score is None and comparison.bootstrap is None
    decision = _register(cfg, _stand_in(tmp_path, "perfect"), comparison, name=name)
    assert (decision.promoted, decision.outcome) == (False, registry.INCOMPARABLE)
    assert decision.reason.startswith("not promoted: champion version 1 cannot be scored on the same 50 held-out "
                                      "test rows (data version v2): its label map differs")
    assert registry.alias_version(cfg, registry.CHAMPION, name) == "1"


def _race(cfg: TrackingConfig, name: str, tmp_path: Path, comparisons: list[registry.Comparison],
          monkeypatch: pytest.MonkeyPatch) -> list[registry.GateDecision]:
    """Register every comparison from its own thread, all at once, the alias check held open for 0.3 s."""
    read = registry._champion_version

    def slow_read(client: Any, model: str) -> str | None:
        version = read(client, model)
        time.sleep(0.3)  # a wide window between reading the alias and moving it
        return version

    monkeypatch.setattr(registry, "_champion_version", slow_read)
    bundles = [_stand_in(tmp_path, f"racer-{i}") for i in range(len(comparisons))]
    trackers = [Tracker.start(cfg, run_name=b.name) for b in bundles]
    start = threading.Barrier(len(comparisons))
    decisions: list[registry.GateDecision] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        start.wait()
        try:
            decisions.append(registry.register_bundle(trackers[i], bundles[i], comparisons[i], model_name=name))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(len(comparisons))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return sorted(decisions, key=lambda d: int(d.version))


def test_two_registrations_racing_cannot_both_move_the_champion(cfg: TrackingConfig, name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _first(cfg, tmp_path, name)
    y = _labels(200)
    champion = _wrong(y, 0.4, 9)
    both_better = [registry.compare(y, _wrong(y, share, i), champion, data_version="v2", champion_version="1")
                   for i, share in enumerate((0.1, 0.2))]
    decisions = _race(cfg, name, tmp_path, both_better, monkeypatch)
    assert [d.outcome for d in decisions].count(registry.PROMOTED) == 1
    (winner,) = [d for d in decisions if d.promoted]
    (loser,) = [d for d in decisions if not d.promoted]
    assert loser.outcome == registry.CHAMPION_MOVED
    assert loser.reason.startswith(f"not promoted: alias champion moved to version {winner.version} while this "
                                   "run was compared with version 1")
    assert registry.alias_version(cfg, registry.CHAMPION, name) == winner.version
    client = registry.mlflow_client(cfg)
    assert client.get_model_version(name, loser.version).tags["gate"] == registry.CHAMPION_MOVED
    assert [m.name for m in client.search_registered_models(f"name LIKE '{name}%'")] == [name]  # the lock is gone


def test_two_first_registrations_racing_make_one_champion(cfg: TrackingConfig, name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = registry.Comparison(rows=10, data_version="v1", challenger_score=0.5)
    decisions = _race(cfg, name, tmp_path, [first, first], monkeypatch)
    assert sorted(d.outcome for d in decisions) == sorted([registry.FIRST, registry.CHAMPION_MOVED])
    (winner,) = [d for d in decisions if d.promoted]
    assert registry.alias_version(cfg, registry.CHAMPION, name) == winner.version


def test_a_held_lock_times_out_clearly_and_a_stale_one_is_broken(cfg: TrackingConfig, name: str) -> None:
    client = registry.mlflow_client(cfg)
    lock = f"{name}{registry.LOCK_SUFFIX}"
    client.create_registered_model(lock)
    with pytest.raises(registry.PromotionLockTimeout, match=rf"delete the registered model '{lock}' and rerun"), \
            registry.promotion_lock(client, name, timeout=0.3):
        pass
    with registry.promotion_lock(client, name, timeout=5, stale_after=0.0):
        assert client.get_registered_model(lock).tags["holder"]  # broken, then taken
    assert client.search_registered_models(f"name = '{lock}'") == []


# ---- the evaluate and register steps on real bundles -------------------------------------------------------------

def _run(cfg: TrackingConfig) -> str:
    return Tracker.start(cfg, run_name="pipeline run").run_id


def _evaluate(data: Path, bundle: Path, tmp_path: Path, name: str, cfg: TrackingConfig) -> tuple[Path, str]:
    dataset, evaluation = tmp_path / f"{name}-dataset", tmp_path / f"{name}-evaluation"
    preprocess(str(data), dataset)
    run_id = _run(cfg)
    steps.evaluate(str(dataset), str(bundle), str(evaluation), mlflow_run_id=run_id)
    return evaluation, run_id


@pytest.fixture
def registry_state(tmp_path: Path) -> Any:
    with state_dir(tmp_path / "state"):
        yield TrackingConfig.from_env()


@pytest.mark.slow
def test_the_champion_is_scored_on_the_challengers_new_rows(registry_state: TrackingConfig, tiny_bundle: Path,
                                                            tmp_path: Path) -> None:
    from rakuten_mm.synth import generate

    cfg = registry_state
    _register(cfg, tiny_bundle, registry.Comparison(rows=1, data_version="old", challenger_score=0.5))
    new = generate(tmp_path / "new-data", products=120, seed=7, image_size=32).root  # another data version
    evaluation, run_id = _evaluate(new, tiny_bundle, tmp_path, "new", cfg)
    result = json.loads((evaluation / steps.EVALUATION).read_text())
    compared = result["comparison"]
    test_rows = len(load_prepared(tmp_path / "new-dataset").rows("test"))
    assert compared["champion_version"] == "1" and compared["problem"] == ""
    assert compared["data_version"] != compared["champion_data_version"]
    assert compared["rows"] == test_rows == result["rows"] and compared["excluded_rows"] == 0
    assert set(compared["scores"]) == {"challenger", "champion"}
    assert compared["scores"]["champion"]["rows"] == test_rows
    # The challenger is the champion's own bundle here: the same predictions, so a tie, kept.
    assert compared["scores"]["champion"] == compared["scores"]["challenger"]
    report = tmp_path / "report.html"
    registered = steps.register(str(tmp_path / "new-dataset"), str(tiny_bundle), str(evaluation), str(report),
                                bundle_uri="", bundle_artifact_uri=str(tiny_bundle), mlflow_run_id=run_id)
    assert registered.promoted is False and registered.champion_version == "1"
    assert registered.challenger_weighted_f1 == registered.champion_weighted_f1
    assert registered.gate_confidence == 0.0
    assert registered.decision.startswith("kept the champion") and f"same {test_rows} held-out" in registered.decision
    page = report.read_text()
    for needle in ("Both models on the same held-out test rows", "challenger", "champion", "paired bootstrap"):
        assert needle in page, needle


@pytest.mark.slow
def test_a_champion_with_another_label_map_is_reported_not_compared(registry_state: TrackingConfig,
                                                                    tiny_bundle: Path, synth_data: Path,
                                                                    tmp_path: Path) -> None:
    cfg = registry_state
    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other-labels"))

    def recode(config: dict[str, Any]) -> None:
        config["labels"]["codes"][0] = 99999  # a category the challenger's data does not have

    edit_json(other, "config.json", recode)
    _register(cfg, other, registry.Comparison(rows=1, data_version="old", challenger_score=0.5))
    evaluation, run_id = _evaluate(synth_data, tiny_bundle, tmp_path, "same", cfg)
    compared = json.loads((evaluation / steps.EVALUATION).read_text())["comparison"]
    assert compared["problem"].startswith("its label map differs from the challenger's (prdtypecodes only in the "
                                          "challenger's: [10]; only in the champion's: [99999])")
    registered = steps.register(str(tmp_path / "same-dataset"), str(tiny_bundle), str(evaluation),
                                str(tmp_path / "report.html"), bundle_uri="", bundle_artifact_uri=str(tiny_bundle),
                                mlflow_run_id=run_id)
    assert registered.promoted is False and registered.champion_weighted_f1 == steps.NONE
    assert "cannot be scored" in registered.decision and "label map differs" in registered.decision
    assert registry.alias_version(cfg, registry.CHAMPION) == "1"
