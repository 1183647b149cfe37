"""Per-step resource requests and limits are compile-time options, with a small-cluster preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.training_pipeline import RESOURCE_PRESETS
from rakuten_cli.pipeline import main as cli_main
from rakuten_mm.errors import ConfigError

pytestmark = pytest.mark.pipeline


def _resources(path: Path) -> dict[str, dict[str, object]]:
    spec = next(yaml.safe_load_all(path.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    return {name.removeprefix("exec-"): e["container"]["resources"] for name, e in executors.items()}


def test_small_preset_and_a_step_override_with_limits(tmp_path: Path) -> None:
    out = tmp_path / "small.yaml"
    assert cli_main(["compile", "--out", str(out), "--cpu-only", "--resources-preset", "small",
                     "--step-resources", "train-vgg16=2,8Gi,4,12Gi"]) == 0
    resources = _resources(out)
    for step, (cpu, memory) in RESOURCE_PRESETS["small"].items():
        if step != "train-vgg16":
            assert (resources[step]["resourceCpuRequest"], resources[step]["resourceMemoryRequest"]) == (cpu, memory)
            assert "resourceMemoryLimit" not in resources[step]
    vgg = resources["train-vgg16"]
    assert (vgg["resourceCpuRequest"], vgg["resourceMemoryRequest"]) == ("2", "8Gi")
    assert (vgg["resourceCpuLimit"], vgg["resourceMemoryLimit"]) == ("4", "12Gi")


@pytest.mark.parametrize("bad", ["train=1,2Gi", "train-vgg16=1", "train-vgg16=lots,2Gi", "train-vgg16", "x=1,2,3"])
def test_bad_step_resources_name_what_is_allowed(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"STEP=CPU,MEMORY.*got"):
        cli_main(["compile", "--out", str(tmp_path / "x.yaml"), "--step-resources", bad])
    assert not (tmp_path / "x.yaml").exists()
