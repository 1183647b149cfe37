import io

import numpy as np
import pytest
import torch
from PIL import Image

from rakuten_mm.errors import ConfigError, ImageWeightsUnavailable, InputError
from rakuten_mm.image import (
    CANONICAL_SIZE,
    ImagePreset,
    canonical_images,
    declared_pixels,
    decode_image,
    load_image_file,
    to_canonical,
)
from rakuten_mm.vgg import FEATURE_DIM, ImageHead, build_backbone

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
    (b"hello world, not an image", r"bytes are not an image \(JPEG \(MPO too\), PNG, WebP, GIF or BMP\)"),
    (_jpeg()[:200], "truncated or corrupt"),
])
def test_bad_bytes_are_input_errors(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


def test_pixel_limit_guards_against_decompression_bombs():
    with pytest.raises(InputError, match="at most 100 allowed"):
        decode_image(_jpeg((20, 20)), max_pixels=100)


@pytest.mark.parametrize("size", [8, 31, 257, 1024])
def test_preset_rejects_out_of_range_size(size):
    with pytest.raises(ConfigError, match="between 32 and 256 pixels"):
        ImagePreset(size=size)


# ---- the canonical transport form -------------------------------------------------------------------------------

def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def test_canonical_form_is_uint8_3x256x256_and_the_preset_resizes_it():
    canonical = to_canonical(decode_image(_jpeg((500, 300))))
    assert CANONICAL_SIZE == 256
    assert canonical.dtype == np.uint8 and canonical.shape == (3, 256, 256) and canonical.flags.c_contiguous
    resized = ImagePreset(size=64).resize(canonical[None])
    assert resized.dtype == torch.uint8 and tuple(resized.shape) == (1, 3, 64, 64)
    assert ImagePreset(size=256).resize(canonical[None]).numpy().tobytes() == canonical.tobytes()  # no-op at 256


def test_preset_resize_is_the_same_per_image_whatever_the_batch():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 3, 256, 256), dtype=np.uint8)
    preset = ImagePreset(size=224)
    together = preset.resize(batch)
    for i in range(5):
        assert torch.equal(together[i], preset.resize(batch[i:i + 1])[0])


def test_files_and_bytes_take_the_same_steps(tmp_path):
    data = _jpeg((500, 500), (30, 160, 90))
    (tmp_path / "a.jpg").write_bytes(data)
    preset = ImagePreset(size=32)
    canonical, mask = canonical_images([data, None])
    assert mask.tolist() == [True, False] and canonical[1].max() == 0
    np.testing.assert_array_equal(load_image_file(tmp_path / "a.jpg", preset), preset.resize(canonical[:1])[0].numpy())


def test_mpo_is_read_as_jpeg_first_frame():
    first, second = Image.new("RGB", (64, 48), (250, 10, 10)), Image.new("RGB", (64, 48), (10, 10, 250))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = to_canonical(decode_image(data))
    assert out[0].mean() > 200 and out[2].mean() < 50  # red: the first frame


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 40, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright = decode_image(_encode(image, "JPEG", exif=exif, quality=95))
    assert upright.size == (40, 80)
    pixels = np.asarray(upright)
    assert pixels[:30].mean() > 200 and pixels[-30:].mean() < 50  # the white half is now on top


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    image = decode_image(_encode(Image.fromarray(ramp), "PNG"))
    grey = np.asarray(image)[..., 0].astype(int)
    assert image.mode == "RGB" and grey.min() == 0 and grey.max() == 255
    np.testing.assert_allclose(grey, ramp / 257, atol=0.51)  # a clip would make most of the ramp 255


@pytest.mark.parametrize(("size", "decoded"), [((4000, 3000), (500, 375)), ((2100, 1100), (525, 275)),
                                               ((600, 600), (300, 300)), ((500, 500), (250, 250)),
                                               ((448, 448), (224, 224)), ((447, 447), (447, 447))])
def test_large_jpegs_decode_at_a_reduced_scale_that_keeps_both_sides_at_least_224(size, decoded):
    assert decode_image(_jpeg(size)).size == decoded


def test_declared_pixels_reads_the_header_only():
    assert declared_pixels(_jpeg((40, 30))) == 1200
    with pytest.raises(InputError, match="image has 40x30 pixels; at most 1000 allowed"):
        declared_pixels(_jpeg((40, 30)), max_pixels=1000)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO"])
def test_other_formats_are_refused_naming_the_allowed_ones(fmt):
    with pytest.raises(InputError, match=f"image format must be JPEG \\(MPO too\\), PNG, WebP, GIF or BMP, got {fmt}"):
        decode_image(_jpeg((16, 16), fmt=fmt))


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
