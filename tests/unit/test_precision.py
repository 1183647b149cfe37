"""How the frozen image backbone runs: precision plans, bf16 detection, layout, and the one forward pass."""

import numpy as np
import pytest
import torch
from torch import nn

from rakuten_mm import precision
from rakuten_mm.errors import ConfigError
from rakuten_mm.image import ImagePreset
from rakuten_mm.vgg import backbone_features, build_backbone

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_precision_env(monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)


@pytest.fixture
def cpu_caps(monkeypatch):
    """Pretend the CPU reports ``caps`` (torch.cpu.get_capabilities)."""
    def set_caps(**caps):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", **caps})
    return set_caps


@pytest.fixture(scope="module")
def vgg():
    return build_backbone("none", seed=0)


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))


def _conv_weight(backbone: nn.Module) -> torch.Tensor:
    return next(p for p in backbone.parameters() if p.dim() == 4 and p.shape[-1] > 1)


@pytest.mark.parametrize("caps", [{"avx512_bf16": True}, {"amx_bf16": True}, {"bf16": True}])
def test_cpus_with_bf16_in_hardware_get_bf16_under_auto(cpu_caps, caps):
    cpu_caps(avx2=True, **caps)
    assert precision.cpu_has_bf16()
    assert precision.resolve("auto", CPU) == precision.Plan("auto", bf16=True, channels_last=True)


def test_cpus_without_bf16_stay_fp32_under_auto_with_channels_last(cpu_caps):
    cpu_caps(avx2=True, avx512_f=True, avx512_bf16=False)
    assert not precision.cpu_has_bf16()
    assert precision.resolve("auto", CPU) == precision.Plan("auto", bf16=False, channels_last=True)


def test_fp32_is_the_nchw_float32_reference_and_bf16_is_forced_even_when_emulated(cpu_caps):
    cpu_caps(avx512_bf16=True)
    assert precision.resolve("fp32", CPU) == precision.Plan("fp32", bf16=False, channels_last=False)
    cpu_caps(avx2=True)
    assert precision.resolve("bf16", CPU) == precision.Plan("bf16", bf16=True, channels_last=True)
    assert precision.resolve("bf16", CPU).describe() == "bf16 → bf16, channels_last"


def test_the_default_comes_from_the_environment_and_bad_values_name_the_choices(monkeypatch):
    assert precision.requested() == "auto"
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.requested() == "fp32"
    assert precision.requested("bf16") == "bf16"  # an explicit value wins
    monkeypatch.setenv(precision.PRECISION_ENV, "fp16")
    with pytest.raises(ConfigError, match=r"RAKUTEN_PRECISION must be one of auto, fp32, bf16, got 'fp16'"):
        precision.requested()
    with pytest.raises(ConfigError, match=r"precision must be one of auto, fp32, bf16, got 'half'"):
        precision.resolve("half", CPU)


def test_auto_matches_fp32_and_switches_the_backbone_layout_in_place(vgg, pixels, cpu_caps):
    cpu_caps(avx2=True)  # auto = fp32 + channels_last, whatever this machine's CPU
    preset = ImagePreset(32)
    reference = backbone_features(vgg, pixels, preset, CPU, precision="fp32")
    assert _conv_weight(vgg).is_contiguous()
    fast = backbone_features(vgg, pixels, preset, CPU, precision="auto")
    assert _conv_weight(vgg).is_contiguous(memory_format=torch.channels_last)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6)
    again = backbone_features(vgg, pixels, preset, CPU, precision="fp32")  # back to NCHW: bit for bit the same
    assert _conv_weight(vgg).is_contiguous()
    assert torch.equal(again, reference)


def test_bf16_features_are_close_to_fp32(vgg, pixels):
    preset = ImagePreset(32)
    reference = backbone_features(vgg, pixels, preset, CPU, precision="fp32")
    bf16 = backbone_features(vgg, pixels, preset, CPU, precision="bf16")
    assert bf16.dtype == torch.float32
    relative = (bf16 - reference).norm() / reference.norm()
    assert 0 < relative < 0.05  # bf16 did run (not bit-identical), and stays within a few percent


def test_the_environment_variable_reaches_the_forward_pass(vgg, pixels, monkeypatch, cpu_caps):
    cpu_caps(avx2=True)
    backbone_features(vgg, pixels, ImagePreset(32), CPU)  # default: auto → channels_last
    assert _conv_weight(vgg).is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    backbone_features(vgg, pixels, ImagePreset(32), CPU)
    assert _conv_weight(vgg).is_contiguous()
