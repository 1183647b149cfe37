"""Image files → uint8 batches, decoded in parallel and one batch ahead, never more than a batch in memory.

Each image still goes through the one function it is given, :func:`rakuten_mm.image.load_image_file` (decode →
canonical → preset resize; :func:`rakuten_mm.image.load_uint8_images` builds the object below with it), so the
pixels are those of the serving path; only the scheduling changes:

- :class:`LazyImages` is an indexable stand-in for an ``uint8 [N, *shape]`` tensor of image files: ``len`` and
  ``images[index]`` (an int, a slice, or a 1-D integer/bool tensor, array or list) decode exactly the requested
  images on a thread pool (Pillow's JPEG decoder and resize, and torch's, release the GIL) and return a tensor.
  :meth:`LazyImages.prefetch` starts decoding the next batch while the caller works on the current one; at most
  that one prefetched batch is held. :func:`rakuten_mm.fitting.fit` and :func:`~rakuten_mm.fitting.predict_proba`
  prefetch when their inputs can, so ``--no-feature-cache`` training keeps memory bounded by the batch.
- :func:`decode_workers`: the pool's size. ``RAKUTEN_DECODE_WORKERS`` (an integer from 1 to
  :data:`MAX_WORKERS`; anything else is a :class:`~rakuten_mm.errors.ConfigError`), else the CPUs this process
  may use: its CPU affinity (``os.sched_getaffinity``), capped by the cgroup CPU quota where one is set (a
  Kubernetes pod's CPU limit: ``cpu.max`` under cgroup v2, ``cpu.cfs_quota_us`` under v1), rounded up.

Importing this module does not import torch.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rakuten_mm.env import int_setting

if TYPE_CHECKING:
    import torch

WORKERS_ENV = "RAKUTEN_DECODE_WORKERS"
MAX_WORKERS = 256
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 4.0 for a pod limit of ``4``), or ``None``.

    Reads the cgroup v2 ``cpu.max`` (``"400000 100000"``; ``"max ..."`` = no limit) or the v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` pair (-1 = no limit) at ``root``, which inside a container is the
    container's own cgroup. Unreadable or malformed files count as no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _positive_ratio(quota, period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
            return _positive_ratio(quota, period)
        except (OSError, ValueError):
            continue
    return None


def _positive_ratio(quota: str, period: str) -> float | None:
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def decode_workers(value: int | str | None = None) -> int:
    """Decoding threads: ``value``, else ``RAKUTEN_DECODE_WORKERS``, else :func:`available_cpus`."""
    raw = value if value is not None else os.environ.get(WORKERS_ENV, "").strip() or None
    if raw is None:
        return available_cpus()
    return int_setting(raw, WORKERS_ENV, "image decoding threads", MAX_WORKERS)


def _indices(index: Any, length: int) -> tuple[list[int], bool]:
    """An index as a tensor would take it → (positions, whether it was a single int)."""
    if isinstance(index, slice):
        return list(range(*index.indices(length))), False
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -length <= i < length:
            raise IndexError(f"index {i} is out of range for {length} images")
        return [i % length], True
    array = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
    if array.ndim == 0:
        return _indices(int(array), length)
    if array.ndim != 1:
        raise IndexError(f"images can be indexed by an int, a slice or a 1-D index, got {array.ndim}-D")
    if array.dtype == bool:
        if len(array) != length:
            raise IndexError(f"a boolean index must have {length} entries, got {len(array)}")
        return np.flatnonzero(array).tolist(), False
    if len(array) and not np.issubdtype(array.dtype, np.integer):
        raise IndexError(f"images can be indexed by integers, got {array.dtype}")
    out = array.astype(np.int64)
    if len(out) and (out.min() < -length or out.max() >= length):
        raise IndexError(f"an index is out of range for {length} images")
    return (out % max(length, 1)).tolist(), False


class LazyImages:
    """Image files as an indexable ``uint8 [N, *shape]`` batch source, each decoded on demand by ``load`` (a
    path → ``uint8`` array of ``shape``) on ``workers`` threads (see the module doc).

    ``decoded`` counts the images decoded so far and ``peak_held`` the most images it ever held at once (the
    batch being assembled or the one prefetched, never both): what tests use to check that memory is bounded by
    the batch."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Path], np.ndarray], shape: tuple[int, ...],
                 workers: int | None = None) -> None:
        self.paths = list(paths)
        self.load = load
        self.item_shape = tuple(shape)
        self.workers = decode_workers(workers)
        self.decoded = 0
        self.peak_held = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[int, ...], list[Future[np.ndarray]]] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return len(self.paths), *self.item_shape

    def _decode(self, i: int) -> np.ndarray:
        image = self.load(self.paths[i])
        with self._lock:
            self.decoded += 1
        return image

    def _submit(self, positions: list[int]) -> list[Future[np.ndarray]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rakuten-decode")
        return [self._pool.submit(self._decode, i) for i in positions]

    def _drop_pending(self) -> None:
        if self._pending is not None:
            for future in self._pending[1]:
                future.cancel()
            self._pending = None

    def prefetch(self, index: Any) -> None:
        """Start decoding ``index`` (what the next ``images[index]`` will ask for), replacing any earlier
        prefetch; returns at once."""
        positions, _ = _indices(index, len(self))
        key = tuple(positions)
        if self._pending is not None and self._pending[0] == key:
            return
        self._drop_pending()
        self._pending = (key, self._submit(positions))
        self.peak_held = max(self.peak_held, len(positions))

    def __getitem__(self, index: Any) -> torch.Tensor:
        import torch

        positions, single = _indices(index, len(self))
        key = tuple(positions)
        if self._pending is not None and self._pending[0] == key:
            futures = self._pending[1]
            self._pending = None
        else:
            self._drop_pending()
            futures = self._submit(positions)
            self.peak_held = max(self.peak_held, len(positions))
        batch = np.empty((len(positions), *self.item_shape), dtype=np.uint8)
        for row, future in enumerate(futures):
            batch[row] = future.result()
        tensor = torch.from_numpy(batch)
        return tensor[0] if single else tensor

    def close(self) -> None:
        """Stop the decoding threads (also done when the object is garbage-collected)."""
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LazyImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
