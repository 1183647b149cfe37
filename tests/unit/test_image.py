import io

import numpy as np
import pytest
import torch
from PIL import Image

from rakuten_mm.errors import ConfigError, ImageWeightsUnavailable, InputError
from rakuten_mm.image import FEATURE_DIM, ImageHead, ImagePreset, build_backbone, decode_image

pytestmark = pytest.mark.unit


def _jpeg(size=(40, 30), colour=(200, 10, 10), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def test_preset_gives_uint8_chw_of_the_preset_size():
    preset = ImagePreset(size=32)
    out = preset.to_uint8(decode_image(_jpeg()))
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32)
    assert out[0].mean() > 150 and out[1].mean() < 60  # red stays red through resize


def test_png_and_greyscale_are_accepted_as_rgb():
    buf = io.BytesIO()
    Image.new("L", (10, 10), 128).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).mode == "RGB"


def test_normalize_matches_torchvision_normalize():
    from torchvision.transforms import v2

    preset = ImagePreset(size=32)
    batch = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = v2.Normalize(preset.mean, preset.std)(batch.float() / 255)
    torch.testing.assert_close(preset.normalize(batch), expected)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "image is empty"),
    (b"hello world, not an image", "not a JPEG or PNG"),
    (_jpeg()[:200], "truncated or corrupt"),
])
def test_bad_bytes_are_input_errors(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


def test_pixel_limit_guards_against_decompression_bombs():
    with pytest.raises(InputError, match="at most 100 allowed"):
        decode_image(_jpeg((20, 20)), max_pixels=100)


def test_preset_rejects_out_of_range_size():
    with pytest.raises(ConfigError, match="between 32 and 1024"):
        ImagePreset(size=8)


def test_imagenet_weights_unavailable_names_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: no weights on disk, no network here
    # Offline here anyway; the patch keeps a networked machine from downloading 528 MB.
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(ImageWeightsUnavailable, match="none .*PATH_OR_URI"):
        build_backbone("imagenet")


def test_weights_from_a_saved_state_dict(tmp_path):
    source = build_backbone("none", seed=3)
    path = tmp_path / "vgg16.pt"
    torch.save({f"features.{k}": v for k, v in source[0].state_dict().items()}, path)
    loaded = build_backbone(str(path), seed=99)
    for (k, a), b in zip(source[0].state_dict().items(), loaded[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in loaded.parameters())


def test_weights_path_that_is_not_vgg16(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ImageWeightsUnavailable, match="not a VGG16 state_dict"):
        build_backbone(str(path))
    with pytest.raises(ImageWeightsUnavailable, match="allowed --image-weights"):
        build_backbone(str(tmp_path / "missing.pt"))


def test_backbone_features_and_head_shapes():
    backbone = build_backbone("none")
    with torch.no_grad():
        feats = backbone(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, FEATURE_DIM)
    assert ImageHead(27).eval()(feats).shape == (2, 27)
