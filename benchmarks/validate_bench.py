"""Validation speed (issue 10): ``rakuten data validate`` on N products with N images (default 20,000).

Every image is decoded by ``rakuten_mm.image.decode_image``, training's own decoder and limits, on a thread pool
(:func:`rakuten_mm.data.check_images`). The images are the real 500×500 product photos of the sample in
``../shared/data/rakuten-real`` (each written out as its own file, cycled to N), or synthetic 500×500 JPEGs when the
sample is absent. Prints a markdown table: one thread vs the default pool, and, for reference, the header-only
``Image.verify()`` check validation used to make (it misses truncated files and oversized images).

    python benchmarks/validate_bench.py [--rows 20000] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from common import machine
from PIL import Image

from rakuten_mm.data import image_name, validate
from rakuten_mm.labels import KNOWN_CODES

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"


def source_images(work: Path) -> tuple[list[bytes], str]:
    real = sorted([*(REAL / "images").glob("*.jpg"), *(REAL / "images_test").glob("*.jpg")])
    if real:
        return [p.read_bytes() for p in real], f"{len(real)} real product photos (500×500 JPEG) from {REAL.name}"
    from rakuten_mm.synth import generate

    data = generate(work / "synth", products=300, seed=0, image_size=500).root
    files = sorted((data / "images" / "image_train").glob("*.jpg"))
    return [p.read_bytes() for p in files], f"{len(files)} synthetic 500×500 JPEGs"


def build(root: Path, rows: int, images: list[bytes]) -> None:
    image_dir = root / "images" / "image_train"
    image_dir.mkdir(parents=True)
    ids = range(rows)
    x = pd.DataFrame({"designation": [f"Produit numéro {i}" for i in ids], "description": "",
                      "productid": [1_000_000 + i for i in ids], "imageid": [2_000_000 + i for i in ids]})
    y = pd.DataFrame({"prdtypecode": [KNOWN_CODES[i % len(KNOWN_CODES)] for i in ids]})
    x.to_csv(root / "X_train_update.csv")
    y.to_csv(root / "Y_train_CVw08PX.csv")
    for i in ids:
        (image_dir / image_name(2_000_000 + i, 1_000_000 + i)).write_bytes(images[i % len(images)])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time barely depends on other load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: the loader's own)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rakuten-validate-bench-"))
    try:
        images, what = source_images(work)
        root = work / "data"
        build(root, args.rows, images)
        size_mb = sum(p.stat().st_size for p in (root / "images" / "image_train").iterdir()) / 1e6
        validate(root)  # warm the page cache and the imports: every run below reads the same files from memory
        pool = args.workers or min(32, (os.cpu_count() or 1) + 4)
        serial = timed(lambda: validate(root, workers=1))
        parallel = timed(lambda: validate(root, workers=pool))
        paths = sorted((root / "images" / "image_train").iterdir())

        def header_only() -> None:
            for p in paths:
                with Image.open(p) as img:
                    img.verify()

        verify_only = timed(header_only)
        load = os.getloadavg()[0]
        print(f"\n### Validation of {args.rows:,} products with {args.rows:,} images ({size_mb:.0f} MB), {machine()}\n")
        print(f"Images: {what}, cycled to {args.rows:,} files. Whole `data.validate` (CSV parsing, per-row checks, "
              "split check, every image decoded by `decode_image`); files in the page cache. "
              f"Load average during the run: {load:.1f} on {os.cpu_count()} cores.\n")
        print("| check | threads | wall (s) | images/s | CPU ms per image |")
        print("|---|---|---|---|---|")
        for name, threads, (seconds, cpu) in (("full decode (`decode_image`), as training", 1, serial),
                                              ("full decode (`decode_image`), as training", pool, parallel),
                                              ("header only (`Image.verify`, the old check; misses truncation)", 1,
                                               verify_only)):
            print(f"| {name} | {threads} | {seconds:.1f} | {args.rows / seconds:,.0f} | {cpu / args.rows * 1e3:.2f} |")
        per_image = parallel[1] / args.rows
        print(f"\n**Thread pool speed-up: {serial[0] / parallel[0]:.1f}× on {os.cpu_count()} cores** "
              f"({args.rows / parallel[0]:,.0f} images/s). CPU cost {per_image * 1e3:.1f} ms per image: "
              f"{args.rows:,} images take about {per_image * args.rows / 16:.0f} s of wall time on 16 idle cores.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
