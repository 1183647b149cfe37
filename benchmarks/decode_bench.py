"""Image decoding throughput on the real Rakuten JPEGs, before/after, one thread and all cores (issue 11).

Every image takes the training/serving path to a 224 px preset (:func:`rakuten_mm.image.load_image_file`: decode →
canonical 256 px → preset resize). Variants, interleaved over ``--rounds`` rounds:

- ``before``: the previous decode: ``Image.draft`` asked for the canonical 256 px, which for the challenge's
  500×500 JPEGs means a full-size decode (draft only halves when the half still covers the request);
- ``after``: the current decode: DCT scaling while both sides stay >= 224 px (500 px → 250 px);

each run serially on one thread (``1 thread``) and through :class:`rakuten_mm.decoding.LazyImages` on all the
CPUs available to the process (batches of 32, the next one prefetched: what feature extraction does).

Figures: wall-clock images/s, and images per CPU-second of the process (``per core``: unlike wall time it does
not depend on what else the machine runs). ``cores busy`` = CPU seconds / wall seconds. Also the mean absolute
pixel difference after/before (uint8 levels at 224 px), and where one image's CPU time goes, stage by stage
(single thread, best of the rounds): the JPEG decode in full and at the DCT scale ``after`` uses, the canonical
resize (Pillow, what the serving transformer runs) and the preset resize (torch, what the predictor runs).

    python benchmarks/decode_bench.py [--images N] [--rounds R] [--workers W]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine

from rakuten_mm import decoding, image
from rakuten_mm.image import ImagePreset, load_image_file, load_uint8_images

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"
BATCH = 32


def real_jpegs(limit: int) -> list[Path]:
    paths = sorted((REAL / "images").glob("*.jpg")) + sorted((REAL / "images_test").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no JPEGs under {REAL}: this benchmark needs ../shared/data/rakuten-real")
    return paths[:limit]


class draft_side:  # noqa: N801 - a context manager used like a function
    """Temporarily decode with another ``Image.draft`` target (the ``before`` variant)."""

    def __init__(self, side: int) -> None:
        self.side, self.saved = side, image.DRAFT_MIN_SIZE

    def __enter__(self) -> None:
        image.DRAFT_MIN_SIZE = self.side

    def __exit__(self, *exc: object) -> None:
        image.DRAFT_MIN_SIZE = self.saved


def serial(paths: list[Path], preset: ImagePreset) -> None:
    for path in paths:
        load_image_file(path, preset)


def pooled(paths: list[Path], preset: ImagePreset, workers: int) -> None:
    keys = [slice(s, s + BATCH) for s in range(0, len(paths), BATCH)]
    with load_uint8_images(paths, preset, workers) as images:
        for i, key in enumerate(keys):
            images[key]
            if i + 1 < len(keys):
                images.prefetch(keys[i + 1])


def stages(paths: list[Path], preset: ImagePreset, rounds: int) -> dict[str, float]:
    """CPU milliseconds per image of each stage of ``load_image_file``, single thread, best of ``rounds``."""
    from PIL import Image

    blobs = [path.read_bytes() for path in paths]

    def full(blob: bytes) -> object:
        with draft_side(image.CANONICAL_SIZE):
            return image.decode_image(blob)

    decoded = [image.decode_image(blob) for blob in blobs]
    canonical = [image.to_canonical(img) for img in decoded]
    steps: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "JPEG decode, full size (before)": (full, blobs),
        "JPEG decode, DCT-scaled to ≥ 224 px (after)": (image.decode_image, blobs),
        "canonical resize → 256 px (Pillow, antialiased bilinear)": (image.to_canonical, decoded),
        "preset resize 256 → 224 px (torch, antialiased bilinear)": (lambda c: preset.resize(c[None]), canonical),
        "(for scale) Image.resize to 256 px, nearest neighbour": (
            lambda img: img.resize((256, 256), Image.Resampling.NEAREST), decoded),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (fn, items) in steps.items():
            cpu = time.process_time()
            for item in items:
                fn(item)
            ms = 1000 * (time.process_time() - cpu) / len(items)
            best[name] = min(best.get(name, ms), ms)
    return best


def measure(run: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=767, help="how many real JPEGs (at most 767)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: the CPUs available to the process")
    args = parser.parse_args()
    workers = decoding.decode_workers(args.workers)
    paths = real_jpegs(args.images)
    preset = ImagePreset(224)
    for path in paths:  # page cache warm: time decoding, not the disk
        path.read_bytes()
    old_side = image.CANONICAL_SIZE
    variants: dict[str, Callable[[], None]] = {}
    for label, side in (("before", old_side), ("after", image.DRAFT_MIN_SIZE)):
        def one(side: int = side) -> None:
            with draft_side(side):
                serial(paths, preset)

        def many(side: int = side) -> None:
            with draft_side(side):
                pooled(paths, preset, workers)

        variants[f"{label}, 1 thread"] = one
        variants[f"{label}, {workers} threads"] = many
    print(f"# {machine()}; {len(paths)} real 500×500 JPEGs → 224 px; {workers} decoding threads "
          f"(available CPUs: {decoding.available_cpus()}); torch intra-op threads {torch.get_num_threads()}")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for name, run in variants.items():
            results[name].append(measure(run))
    n = len(paths)
    with draft_side(old_side):
        before = np.stack([load_image_file(p, preset) for p in paths[:100]]).astype(np.int16)
    after = np.stack([load_image_file(p, preset) for p in paths[:100]]).astype(np.int16)
    print(f"# {args.rounds} interleaved rounds, run took {time.perf_counter() - started:.0f} s\n")
    print("| variant | images/s (wall, median) | images per CPU-second (per core) | cores busy |")
    print("|---|---|---|---|")
    per_core: dict[str, float] = {}
    for name, runs in results.items():
        wall = statistics.median(n / w for w, _ in runs)
        per_core[name] = statistics.median(n / c for _, c in runs)
        busy = statistics.median(c / w for w, c in runs)
        print(f"| {name} | {wall:.0f} | {per_core[name]:.0f} | {busy:.2f} |")
    ratio = per_core["after, 1 thread"] / per_core["before, 1 thread"]
    print(f"\nper core, after / before: **{ratio:.2f}×**; mean |after − before| pixel difference at 224 px: "
          f"{np.abs(after - before).mean():.2f} of 255 levels (100 images)")
    print("\n| stage (one thread) | CPU ms per image, best of the rounds |")
    print("|---|---|")
    for name, ms in stages(paths, preset, args.rounds).items():
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
