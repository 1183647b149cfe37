"""Serving benchmark (issue: KServe serving). Prints a markdown section for BENCHMARKS.md.

Measured side by side on this machine, same run, 224×224 bundle:

1. in-process ``Classifier.predict_tensors`` (the ensemble forward of the core benchmark) at batch 1 and 16;
2. end to end through tritonclient → transformer → predictor (both real processes on loopback): latency p50/p99 at
   concurrency 1, throughput at concurrency 4 and 16, with micro-batching on (``--max-batch-size 16``) and off
   (``--max-batch-size 1``); one product with a JPEG per request;
3. bytes per request on the transformer → predictor hop (the transformer's own histogram: raw text + the canonical
   uint8 [3, 256, 256] image, whatever the bundle's size) and both servers' resident memory.

Goals (issue): p50 at concurrency 1 ≤ 1.15× in-process batch-1 p50; saturated throughput ≥ 0.85× in-process
batch-16 throughput. Loops are bounded (fixed request counts); traffic stays on 127.0.0.1.

    python benchmarks/serve_bench.py [--bundle BUNDLE] [--rounds 4] [--seed 0]

Peak memory under 16 concurrent maximum-size requests: ``benchmarks/serve_memory_bench.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Like `rakuten serve` (serving/cli.py), and before torch loads OpenMP: waiting OpenMP threads sleep instead of
# spinning, so the in-process reference is measured under the same policy as the servers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import tritonclient.http as triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # serving/ from the checkout

from common import machine  # noqa: E402

from devtools.local_servers import LocalServers  # noqa: E402
from rakuten_mm.config import TrainConfig  # noqa: E402
from rakuten_mm.model import load_bundle  # noqa: E402
from rakuten_mm.synth import generate  # noqa: E402
from rakuten_mm.training import train  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"


def make_bundle(work: Path, seed: int) -> Path:
    data = generate(work / "data", products=120, seed=seed, image_size=224).root
    cfg = TrainConfig(epochs_text=1, epochs_image=1, image_size=224, image_weights="none", seed=seed)
    return Path(train(str(data), str(work / "bundle"), cfg).bundle_uri)


def sample_products(count: int) -> tuple[list[tuple[str, str, bytes]], str]:
    """Real products with their original 500×500 JPEGs when the sample is there, else synthetic 500×500 ones."""
    import pandas as pd

    if (REAL / "X.csv").is_file():
        frame = pd.read_csv(REAL / "X.csv", index_col=0, keep_default_na=False)
        out = []
        for row in frame.itertuples():
            path = REAL / "images" / f"image_{row.imageid}_product_{row.productid}.jpg"
            if path.is_file():
                out.append((str(row.designation), str(row.description), path.read_bytes()))
            if len(out) == count:
                return out, "real Rakuten products, original 500×500 JPEGs"
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "d", products=max(count, 60), seed=1, image_size=500).root
        frame = pd.read_csv(data / "X_train_update.csv", index_col=0, keep_default_na=False).head(count)
        out = [(str(r.designation), str(r.description),
                (data / "images" / "image_train" / f"image_{r.imageid}_product_{r.productid}.jpg").read_bytes())
               for r in frame.itertuples()]
    return out, "synthetic products, 500×500 JPEGs"


def percentiles(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), float(np.percentile(times, 99))


class InProcess:
    """``Classifier.predict_tensors`` on pre-encoded tensors (the core benchmark's ensemble forward)."""

    def __init__(self, bundle: Path, products: list[tuple[str, str, bytes]]) -> None:
        self.model = load_bundle(bundle, "cuda" if torch.cuda.is_available() else "cpu")
        self.products = products
        self.tensors = {}
        for batch in (1, 16):
            rows = [products[i % len(products)] for i in range(batch)]
            ids = self.model.pre.encode_text([r[0] for r in rows], [r[1] for r in rows])
            self.tensors[batch] = (ids, *self.model.pre.encode_images([r[2] for r in rows]))
            self.model.predict_tensors(*self.tensors[batch])  # warm-up

    def forward(self, batch: int, reps: int) -> list[float]:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            self.model.predict_tensors(*self.tensors[batch])
            times.append(time.perf_counter() - start)
        return times

    def decode_and_forward(self, reps: int) -> list[float]:
        times = []
        for i in range(reps):
            d, desc, jpeg = self.products[i % len(self.products)]
            start = time.perf_counter()
            ids = self.model.pre.encode_text([d], [desc])
            images, mask = self.model.pre.encode_images([jpeg])
            self.model.predict_tensors(ids, images, mask)
            times.append(time.perf_counter() - start)
        return times


def _request(product: tuple[str, str, bytes]) -> list[triton.InferInput]:
    inputs = []
    for name, value in (("designation", product[0].encode()), ("description", product[1].encode()),
                        ("image", product[2])):
        inp = triton.InferInput(name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        inputs.append(inp)
    return inputs


def latencies(address: str, products: list[tuple[str, str, bytes]], count: int, offset: int = 0) -> list[float]:
    client = triton.InferenceServerClient(address, network_timeout=300)
    times = []
    try:
        for i in range(offset, offset + count):
            start = time.perf_counter()
            client.infer("rakuten", _request(products[i % len(products)]))
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return times


def throughput(address: str, products: list[tuple[str, str, bytes]], concurrency: int, count: int) -> float:
    def worker(indices: list[int]) -> None:
        client = triton.InferenceServerClient(address, network_timeout=300)
        try:
            for i in indices:
                client.infer("rakuten", _request(products[i % len(products)]))
        finally:
            client.close()

    chunks = [list(range(w, count, concurrency)) for w in range(concurrency)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, chunks))
    return count / (time.perf_counter() - start)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^{name}{{model_name="rakuten"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


_OMP_PROBE = """
import statistics, sys, time
from rakuten_mm.model import load_bundle
m = load_bundle(sys.argv[1])
ids = m.pre.encode_text(["lampe de chevet"])
images, mask = m.pre.encode_images([open(sys.argv[2], "rb").read()])
m.predict_tensors(ids, images, mask)
times = []
for _ in range(6):
    t = time.perf_counter(); m.predict_tensors(ids, images, mask); times.append(time.perf_counter() - t)
print(statistics.median(times), max(times))
"""


def omp_policy_probe(bundle: Path, jpeg: bytes, work: Path) -> dict[str, tuple[float, float]]:
    """Batch-1 forward (p50, max) in fresh processes with OpenMP's ACTIVE (spinning) vs PASSIVE wait policy."""
    import subprocess

    image = work / "probe.jpg"
    image.write_bytes(jpeg)
    out = {}
    for policy in ("ACTIVE", "PASSIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        res = subprocess.run([sys.executable, "-c", _OMP_PROBE, str(bundle), str(image)], env=env, check=True,
                             capture_output=True, text=True, timeout=600)
        p50, worst = (float(x) for x in res.stdout.split()[-2:])
        out[policy] = (p50, worst)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="a 224×224 bundle (default: train a small one with --image-weights none)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved measurement rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        bundle = Path(args.bundle) if args.bundle else make_bundle(work, args.seed)
        products, source = sample_products(32)
        local = InProcess(bundle, products)
        size = local.model.pre.image_preset.size
        configs = {"on": ["--max-batch-size", "16", "--max-batch-delay-ms", "5"], "off": ["--max-batch-size", "1"]}
        servers = {k: LocalServers(bundle, predictor_args=v, log_dir=work / f"logs-{k}") for k, v in configs.items()}
        try:
            for s in servers.values():
                s.start()
            address = {k: s.transformer.address for k, s in servers.items() if s.transformer}
            for a in address.values():
                latencies(a, products, 3)  # warm-up
            # The machine is shared and its load drifts: every figure is measured in each round, the rounds
            # interleave in-process and served runs, and ratios are taken within a round (then the median).
            t: dict[str, list[float]] = {"b1": [], "b16": [], "dec": [], "on": [], "off": []}
            tput: dict[str, list[float]] = {"on4": [], "on16": [], "off4": [], "off16": []}
            r_lat, r_tput, r_onoff = [], [], []
            for r in range(args.rounds):
                b1 = local.forward(1, 4)
                lat = {k: latencies(a, products, 5, offset=5 * r) for k, a in address.items()}
                b16 = local.forward(16, 1)
                for k, a in address.items():
                    for c in (4, 16):
                        tput[f"{k}{c}"].append(throughput(a, products, c, 16))
                t["b1"] += b1
                t["b16"] += b16
                t["dec"] += local.decode_and_forward(2)
                t["on"] += lat["on"]
                t["off"] += lat["off"]
                r_lat.append(statistics.median(lat["on"]) / statistics.median(b1))
                r_tput.append(max(tput["on4"][-1], tput["on16"][-1]) / (16 / b16[0]))
                r_onoff.append(tput["on16"][-1] / tput["off16"][-1])
            rss = {k: psutil.Process(s.predictor.pid).memory_info().rss for k, s in servers.items() if s.predictor}
            rss_t = {k: psutil.Process(s.transformer.pid).memory_info().rss for k, s in servers.items()
                     if s.transformer}
            on = servers["on"]
            assert on.transformer is not None and on.predictor is not None
            hop = (metric(on.transformer.url, "rakuten_transformer_predictor_request_bytes_sum")
                   / metric(on.transformer.url, "rakuten_transformer_predictor_request_bytes_count"))
            rows = {k: metric(s.predictor.url, "rakuten_batch_rows_sum")  # type: ignore[union-attr]
                    / metric(s.predictor.url, "rakuten_batch_rows_count")  # type: ignore[union-attr]
                    for k, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()
        omp = omp_policy_probe(bundle, products[0][2], work)
        elapsed = time.perf_counter() - started

    ms = 1e3
    print(f"\n### Serving: tritonclient → transformer → predictor vs in-process ({size}×{size}, {machine()})\n")
    print(f"One product per request ({source}); servers on 127.0.0.1, one uvicorn worker each; {args.rounds} "
          f"interleaved rounds (in-process, served with batching on and off, in turn); run took {elapsed:.0f} s.\n")
    print("| path | p50 latency (ms) | p99 latency (ms) | throughput (products/s) |")
    print("|---|---|---|---|")

    def row(label: str, times: list[float], batch: int = 1) -> None:
        p50, p99 = percentiles(times)
        print(f"| {label} | {p50 * ms:.1f} | {p99 * ms:.1f} | {batch / p50:.2f} |")

    row("in-process `predict_tensors`, batch 1", t["b1"])
    row("in-process `predict_tensors`, batch 16", t["b16"], 16)
    row("in-process decode + tokenise + forward, batch 1", t["dec"])
    for key, label in (("on", "micro-batching on (max 16, 5 ms)"), ("off", "micro-batching off (max 1)")):
        row(f"served, {label}, concurrency 1", t[key])
        for c in (4, 16):
            print(f"| served, {label}, concurrency {c} | – | – | {statistics.median(tput[f'{key}{c}']):.2f} |")
    print()
    print("| ratio (median over rounds of the per-round ratio) | value | goal |")
    print("|---|---|---|")
    print(f"| served p50 at concurrency 1 (batching on) / in-process batch-1 forward p50 | "
          f"{statistics.median(r_lat):.2f}× | ≤ 1.15× |")
    print(f"| served throughput (batching on, best of c=4/16) / in-process batch-16 throughput | "
          f"{statistics.median(r_tput):.2f}× | ≥ 0.85× |")
    print(f"| served throughput at c=16: batching on / off | {statistics.median(r_onoff):.2f}× | – |")
    print()
    print(f"- bytes per request on the transformer → predictor hop: {hop / 1e3:.1f} KB (canonical uint8 image "
          f"{3 * 256 * 256 / 1e3:.1f} KB + raw text + mask + JSON header, for any bundle size; the {size}×{size} "
          f"preset is applied in the predictor)")
    print(f"- rows per predictor forward pass: {rows['on']:.2f} with batching on, {rows['off']:.2f} off")
    print("- OpenMP wait policy, batch-1 forward in a fresh process, same moment (p50 / worst of 6): ACTIVE "
          f"{omp['ACTIVE'][0] * ms:.0f} / {omp['ACTIVE'][1] * ms:.0f} ms, PASSIVE {omp['PASSIVE'][0] * ms:.0f} / "
          f"{omp['PASSIVE'][1] * ms:.0f} ms (`rakuten serve` and this benchmark use PASSIVE unless OMP_WAIT_POLICY "
          "is set)")
    print(f"- resident memory after the run: predictor {rss['on'] / 2**20:.0f} MiB (batching on), "
          f"{rss['off'] / 2**20:.0f} MiB (off); transformer {rss_t['on'] / 2**20:.0f} MiB (no bundle, no torch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
