"""Serving memory benchmark (issue: production-safe serving). Prints a markdown section for BENCHMARKS.md.

Both servers run as real processes on loopback with their default limits (``serving/settings.py``) and a 224×224
bundle; a sampler thread reads each process's resident memory (RSS) every 50 ms. Three loads, each 16 concurrent
requests of the largest kind the defaults allow along one axis:

- ``pixels``: 2 PNGs of 6300×6300 (39.7 M pixels, just under ``--max-image-pixels``) per request: 79 M of the
  100 M ``--max-request-pixels``; PNG cannot be decoded at a reduced scale, so this is the decoding worst case;
- ``text``: 256 text-only products (``--max-products``) with 200-character designations and 50,000-character
  descriptions (``--max-text-chars``): ≈ 13 MB bodies, near the transformer's 16 MiB ``--max-request-bytes``;
- ``images``: ``--products`` products with real 500×500 JPEGs per request (the transformer sends them in hop chunks
  of 32): the predictor's worst case (queued canonical images + VGG16 activations).

The pass mark is the pod memory limits in ``manifests/base/inferenceservice.yaml`` (transformer 2 Gi, predictor
4 Gi). The transformer is started with a 600 s hop timeout so that queueing on this 2-core CPU (the ``images`` load
is minutes of VGG16 work) measures memory, not 504s.

    python benchmarks/serve_memory_bench.py [--bundle BUNDLE] [--products 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tritonclient.http as triton  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402
from serve_bench import make_bundle, sample_products  # noqa: E402

from devtools.local_servers import LocalServers  # noqa: E402

LIMITS_MIB = {"transformer": 2048, "predictor": 4096}  # manifests/base/inferenceservice.yaml
CONCURRENCY = 16


class PeakRSS:
    """Samples the RSS of some processes every ``period`` seconds in a thread; keeps the maximum of each."""

    def __init__(self, pids: dict[str, int], period: float = 0.05) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)
            time.sleep(self.period)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def column(name: str, values: list[bytes]) -> triton.InferInput:
    inp = triton.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
    return inp


def big_png(side: int = 6300) -> bytes:
    x = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, np.outer(np.ones(side), x)], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def load(name: str, products: int, designation: Callable[[int], str], description: str,
         image: Callable[[int], bytes] | None) -> tuple[str, int, list[triton.InferInput], int]:
    """One request's inputs and its binary payload size (4-byte length prefix + bytes per element)."""
    values = {"designation": [designation(i).encode() for i in range(products)],
              "description": [description.encode()] * products}
    if image is not None:
        values["image"] = [image(i) for i in range(products)]
    size = sum(4 + len(v) for column_values in values.values() for v in column_values)
    return name, products, [column(k, v) for k, v in values.items()], size


def run_load(address: str, inputs: list[triton.InferInput]) -> tuple[float, list[str]]:
    def one(_: int) -> str:
        client = triton.InferenceServerClient(address, network_timeout=900, connection_timeout=60)
        try:
            client.infer("rakuten", inputs)
            return "200"
        except Exception as exc:  # noqa: BLE001 - a benchmark reports whatever the server answered
            return str(exc)[:120]
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(one, range(CONCURRENCY)))
    return time.perf_counter() - start, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="a 224×224 bundle (default: train a small one with --image-weights none)")
    parser.add_argument("--products", type=int, default=8, help="products with an image per request, 'images' load")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-mem-") as tmp:
        work = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else make_bundle(work, args.seed)
        real, source = sample_products(32)
        png = big_png()
        loads = [
            load("pixels", 2, lambda i: f"Affiche murale {i}", "", lambda i: png),
            load("text", 256, lambda i: f"Produit {i} " + "lampe " * 32, "description détaillée " * 2272, None),
            load("images", args.products, lambda i: real[i % len(real)][0], "", lambda i: real[i % len(real)][2]),
        ]
        servers = LocalServers(bundle, log_dir=work / "logs",
                               transformer_args=["--predictor_request_timeout_seconds", "600"])
        rows = []
        try:
            servers.start(timeout=300)
            assert servers.transformer is not None and servers.predictor is not None
            pids = {"transformer": servers.transformer.pid, "predictor": servers.predictor.pid}
            idle = {name: rss(pid) for name, pid in pids.items()}
            warm = load("warm-up", 2, lambda i: real[i][0], "", lambda i: real[i][2])
            run_load(servers.transformer.address, warm[2])
            for name, products, inputs, body in loads:
                with PeakRSS(pids) as peak:
                    took, answers = run_load(servers.transformer.address, inputs)
                rows.append((name, products, body, took, answers, dict(peak.peak)))
        finally:
            servers.stop()
    elapsed = time.perf_counter() - started

    mib = 2**20
    print(f"\n### Serving memory: 16 concurrent maximum-size requests ({machine()})\n")
    print(f"Default limits, one uvicorn worker each, 224×224 bundle, images from {source}; RSS sampled every 50 ms; "
          f"run took {elapsed:.0f} s. Idle after start-up and one warm-up request: transformer "
          f"{idle['transformer'] / mib:.0f} MiB, predictor {idle['predictor'] / mib:.0f} MiB.\n")
    print("| load (16 concurrent requests of) | request body | wall time | answers | transformer peak RSS | "
          "predictor peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, products, body, took, answers, peaks in rows:
        ok = answers.count("200")
        other = sorted(set(a for a in answers if a != "200"))
        print(f"| {name}: {products} products | {body / mib:.1f} MiB | {took:.0f} s | {ok}/16 × 200"
              f"{' ' + '; '.join(other) if other else ''} | {peaks['transformer'] / mib:.0f} MiB | "
              f"{peaks['predictor'] / mib:.0f} MiB |")
    worst = {role: max(r[5][role] for r in rows) for role in LIMITS_MIB}
    print()
    for role, limit in LIMITS_MIB.items():
        verdict = "under" if worst[role] < limit * mib else "OVER"
        print(f"- {role}: highest peak {worst[role] / mib:.0f} MiB, {verdict} its {limit} MiB pod limit "
              f"({100 * worst[role] / (limit * mib):.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
