"""Parallel, prefetching, batch-bounded image decoding: worker sizing, the lazy image set, fit and features on it."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rakuten_mm import decoding
from rakuten_mm.decoding import LazyImages, available_cpus, cgroup_cpu_limit, decode_workers
from rakuten_mm.errors import ConfigError, InputError
from rakuten_mm.fitting import fit, predict_proba
from rakuten_mm.image import ImagePreset, load_image_file, load_uint8_images
from rakuten_mm.vgg import extract_features

pytestmark = pytest.mark.unit

PRESET = ImagePreset(32)
N = 13


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N):
        path = root / f"image_{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def eager(image_files):
    return torch.from_numpy(np.stack([load_image_file(p, PRESET) for p in image_files]))


@pytest.fixture(autouse=True)
def _no_workers_env(monkeypatch):
    monkeypatch.delenv(decoding.WORKERS_ENV, raising=False)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("files", "cpus"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "250000 100000\n"}, 2.5),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
    ({}, None),
])
def test_cgroup_cpu_limit_reads_v2_and_v1_quotas(tmp_path, files, cpus):
    for name, text in files.items():
        _write(tmp_path / name, text)
    assert cgroup_cpu_limit(tmp_path) == cpus


def test_workers_default_to_the_cpus_available_capped_by_the_pod_limit(tmp_path, monkeypatch):
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))
    _write(tmp_path / "cpu.max", "50000 100000")  # half a CPU: still one thread
    assert available_cpus(tmp_path) == 1
    monkeypatch.setattr(decoding, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(decoding.os, "sched_getaffinity", lambda pid: set(range(16)))
    _write(tmp_path / "cpu.max", "600000 100000")
    assert available_cpus(tmp_path) == 6
    assert decode_workers(3) == 3
    monkeypatch.setenv(decoding.WORKERS_ENV, "5")
    assert decode_workers() == 5
    monkeypatch.setenv(decoding.WORKERS_ENV, "many")
    with pytest.raises(ConfigError, match=r"RAKUTEN_DECODE_WORKERS .* integer from 1 to 256, got 'many'"):
        decode_workers()


@pytest.mark.parametrize("index", [
    slice(0, 4), slice(10, 99), slice(None, None, 3), torch.tensor([5, 0, 12, 5]), np.array([3, -1]), [2, 7],
    torch.arange(N) % 2 == 0, np.array([], dtype=np.int64),
])
def test_lazy_images_index_like_the_eager_tensor(image_files, eager, index):
    with load_uint8_images(image_files, PRESET, workers=2) as lazy:
        assert len(lazy) == N and lazy.shape == tuple(eager.shape)
        batch = lazy[index]
        assert batch.dtype == torch.uint8
        assert torch.equal(batch, eager[index])


def test_single_images_and_bad_indices(image_files, eager):
    lazy = load_uint8_images(image_files, PRESET, workers=1)
    assert isinstance(lazy, LazyImages) and lazy.workers == 1
    assert torch.equal(lazy[-1], eager[-1])
    for bad in (N, torch.tensor([0, N]), np.array([[0]]), np.array([0.5])):
        with pytest.raises(IndexError):
            lazy[bad]
    lazy.close()


def test_a_prefetched_batch_is_decoded_once_and_a_wrong_guess_costs_only_time(image_files, eager):
    lazy = load_uint8_images(image_files, PRESET, workers=2)
    lazy.prefetch(slice(0, 4))
    assert torch.equal(lazy[0:4], eager[0:4])
    assert lazy.decoded == 4
    lazy.prefetch(slice(4, 8))
    assert torch.equal(lazy[[9, 10]], eager[[9, 10]])  # not what was prefetched: right anyway
    assert lazy.peak_held == 4
    lazy.close()


def test_a_corrupt_file_fails_when_its_batch_is_read(tmp_path, image_files):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    lazy = load_uint8_images([image_files[0], bad], PRESET)
    assert lazy[0].shape == (3, 32, 32)
    with pytest.raises(InputError, match="could not be decoded|not an image"):
        lazy[0:2]


class Pixels(nn.Module):
    """A tiny classifier straight on uint8 pixels (stands in for backbone + head)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3 * 32 * 32), nn.Linear(3 * 32 * 32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255)


def _fit(train_x, val_x, epochs=3):
    torch.manual_seed(0)
    model = Pixels()
    y = np.arange(N) % 3
    result = fit(model, train_x, y, val_x, y[:5], num_classes=3, epochs=epochs, device=torch.device("cpu"),
                 seed=0, batch_size=4, lr=1e-2, patience=10)
    return model, result


def test_fit_on_lazy_images_equals_fit_on_the_tensor_with_memory_bounded_by_the_batch(image_files, eager):
    model, result = _fit(eager, eager[:5])
    train = load_uint8_images(image_files, PRESET, workers=2)
    val = load_uint8_images(image_files[:5], PRESET, workers=2)
    lazy_model, lazy_result = _fit(train, val)
    assert lazy_result == result
    for key, value in model.state_dict().items():
        assert torch.equal(lazy_model.state_dict()[key], value), key
    assert train.peak_held <= 4 and val.peak_held <= 5  # never more than one batch held
    # Every epoch decodes each training batch once (13 rows in batches of 4: the lone 13th is skipped) and the
    # validation rows once: nothing decoded twice, nothing kept between batches.
    assert train.decoded == 3 * 12 and val.decoded == 3 * 5
    probs = predict_proba(lazy_model, train, torch.device("cpu"), batch_size=4)
    np.testing.assert_array_equal(probs, predict_proba(model, eager, torch.device("cpu"), batch_size=4))
    assert train.peak_held <= 4


def test_extract_features_decodes_in_parallel_and_takes_the_width_of_the_backbone(image_files, eager):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    expected = backbone(PRESET.normalize(eager)).detach().numpy()
    for workers, batch in ((1, 32), (3, 4)):
        feats = extract_features(backbone, image_files, PRESET, torch.device("cpu"), batch_size=batch,
                                 precision="fp32", workers=workers)
        assert feats.shape == (N, 7) and feats.dtype == np.float32
        np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert extract_features(backbone, [], PRESET, torch.device("cpu")).shape == (0, 0)
