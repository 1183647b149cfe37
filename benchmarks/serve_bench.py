"""Serving benchmark (issue: KServe serving). Prints a markdown section for BENCHMARKS.md.

Measured side by side on this machine, same run, 224×224 bundle:

1. in-process ``Classifier.predict_tensors`` (the ensemble forward of the core benchmark) at batch 1 and 16;
2. end to end through tritonclient → transformer → predictor (both real processes on loopback): latency p50/p99 at
   concurrency 1, throughput at concurrency 4 and 16, with micro-batching on (``--max-batch-size 16``) and off
   (``--max-batch-size 1``); one product with a JPEG per request;
3. bytes per request on the transformer → predictor hop (the transformer's own histogram) and the predictor's
   resident memory.

Goals (issue): p50 at concurrency 1 ≤ 1.15× in-process batch-1 p50; saturated throughput ≥ 0.85× in-process
batch-16 throughput. Loops are bounded (fixed request counts); traffic stays on 127.0.0.1.

    python benchmarks/serve_bench.py [--bundle BUNDLE] [--requests 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
import tritonclient.http as triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # serving/ from the checkout

from rakuten_mm.bundle import load_bundle  # noqa: E402
from rakuten_mm.config import TrainConfig  # noqa: E402
from rakuten_mm.synth import generate  # noqa: E402
from rakuten_mm.training import train  # noqa: E402
from serving.local import LocalServers  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"


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


def in_process(bundle: Path, products: list[tuple[str, str, bytes]]) -> dict[str, tuple[float, float]]:
    model = load_bundle(bundle, "cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for batch, reps in ((1, 20), (16, 4)):
        rows = [products[i % len(products)] for i in range(batch)]
        ids = model.pre.encode_text([r[0] for r in rows], [r[1] for r in rows])
        images, mask = model.pre.encode_images([r[2] for r in rows])
        model.predict_tensors(ids, images, mask)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model.predict_tensors(ids, images, mask)
            times.append(time.perf_counter() - start)
        results[f"forward b{batch}"] = percentiles(times)
    # The same product with decoding and tokenising included (what the transformer adds to the forward).
    times = []
    d, desc, jpeg = products[0]
    for _ in range(10):
        start = time.perf_counter()
        ids = model.pre.encode_text([d], [desc])
        images, mask = model.pre.encode_images([jpeg])
        model.predict_tensors(ids, images, mask)
        times.append(time.perf_counter() - start)
    results["decode+forward b1"] = percentiles(times)
    return results


def _request(product: tuple[str, str, bytes]) -> list[triton.InferInput]:
    inputs = []
    for name, value in (("designation", product[0].encode()), ("description", product[1].encode()),
                        ("image", product[2])):
        inp = triton.InferInput(name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        inputs.append(inp)
    return inputs


def latency(address: str, products: list[tuple[str, str, bytes]], count: int) -> tuple[float, float]:
    client = triton.InferenceServerClient(address, network_timeout=300)
    times = []
    try:
        for i in range(count):
            start = time.perf_counter()
            client.infer("rakuten", _request(products[i % len(products)]))
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return percentiles(times)


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


def serve(bundle: Path, products: list[tuple[str, str, bytes]], batch_size: int, requests: int,
          log_dir: Path) -> dict[str, float]:
    args = ["--max-batch-size", str(batch_size), "--max-batch-delay-ms", "5"]
    with LocalServers(bundle, predictor_args=args, log_dir=log_dir) as servers:
        assert servers.transformer is not None and servers.predictor is not None
        address = servers.transformer.address
        latency(address, products, 3)  # warm-up
        out: dict[str, float] = {}
        out["p50"], out["p99"] = latency(address, products, requests)
        for concurrency in (4, 16):
            out[f"c{concurrency}"] = throughput(address, products, concurrency, max(2 * requests, 2 * concurrency))
        out["rss"] = psutil.Process(servers.predictor.pid).memory_info().rss
        out["hop"] = (metric(servers.transformer.url, "rakuten_transformer_predictor_request_bytes_sum")
                      / metric(servers.transformer.url, "rakuten_transformer_predictor_request_bytes_count"))
        out["rows_per_forward"] = (metric(servers.predictor.url, "rakuten_batch_rows_sum")
                                   / metric(servers.predictor.url, "rakuten_batch_rows_count"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="a 224×224 bundle (default: train a small one with --image-weights none)")
    parser.add_argument("--requests", type=int, default=24, help="requests per latency run (2× per throughput run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        bundle = Path(args.bundle) if args.bundle else make_bundle(work, args.seed)
        size = load_bundle(bundle).pre.image_preset.size
        products, source = sample_products(32)
        # The machine is shared: in-process runs before and after the served runs, and the faster of the two
        # (per figure) is the reference, which makes the served/in-process ratios conservative.
        before = in_process(bundle, products)
        on = serve(bundle, products, 16, args.requests, work / "logs-on")
        off = serve(bundle, products, 1, args.requests, work / "logs-off")
        after = in_process(bundle, products)
        base = {k: min(before[k], after[k]) for k in before}
        elapsed = time.perf_counter() - started

    f1_50, f1_99 = base["forward b1"]
    f16_50, f16_99 = base["forward b16"]
    d1_50, d1_99 = base["decode+forward b1"]
    ms = 1e3
    print(f"\n### Serving: tritonclient → transformer → predictor vs in-process ({size}×{size}, {machine()})\n")
    print(f"Requests carry one product each ({source}); servers on 127.0.0.1, one uvicorn worker each; "
          f"run took {elapsed:.0f} s.\n")
    print("In-process figures: the faster of two runs (before / after the served runs: batch-1 forward p50 "
          f"{before['forward b1'][0] * 1e3:.0f} / {after['forward b1'][0] * 1e3:.0f} ms, batch-16 "
          f"{before['forward b16'][0] * 1e3:.0f} / {after['forward b16'][0] * 1e3:.0f} ms).\n")
    print("| path | p50 latency (ms) | p99 latency (ms) | throughput (products/s) |")
    print("|---|---|---|---|")
    print(f"| in-process `predict_tensors`, batch 1 | {f1_50 * ms:.1f} | {f1_99 * ms:.1f} | {1 / f1_50:.2f} |")
    print(f"| in-process `predict_tensors`, batch 16 | {f16_50 * ms:.1f} | {f16_99 * ms:.1f} | {16 / f16_50:.2f} |")
    print(f"| in-process decode + tokenise + forward, batch 1 | {d1_50 * ms:.1f} | {d1_99 * ms:.1f} | "
          f"{1 / d1_50:.2f} |")
    for label, r in (("micro-batching on (max 16, 5 ms)", on), ("micro-batching off (max 1)", off)):
        print(f"| served, {label}, concurrency 1 | {r['p50'] * ms:.1f} | {r['p99'] * ms:.1f} | {1 / r['p50']:.2f} |")
        for c in (4, 16):
            print(f"| served, {label}, concurrency {c} | – | – | {r[f'c{c}']:.2f} |")
    print()
    print("| ratio | value | goal |")
    print("|---|---|---|")
    print(f"| served p50 (c=1, batching on) / in-process batch-1 forward p50 | {on['p50'] / f1_50:.2f}× | ≤ 1.15× |")
    print(f"| served p50 (c=1, batching on) / in-process decode + forward p50 | {on['p50'] / d1_50:.2f}× | – |")
    best = max(on["c4"], on["c16"])
    print(f"| served throughput (batching on, best of c=4/16) / in-process batch-16 throughput | "
          f"{best / (16 / f16_50):.2f}× | ≥ 0.85× |")
    print(f"| served throughput c=16: batching on / off | {on['c16'] / off['c16']:.2f}× | – |")
    print()
    print(f"- bytes per request on the transformer → predictor hop: {on['hop'] / 1e3:.1f} KB "
          f"(binary tensors: uint8 image {3 * size * size / 1e3:.1f} KB + token ids + mask + JSON header; "
          "goal ≤ 160 KB at 224×224)")
    print(f"- rows per predictor forward pass with batching on: {on['rows_per_forward']:.2f} (off: "
          f"{off['rows_per_forward']:.2f})")
    print(f"- predictor resident memory after the run: {on['rss'] / 2**20:.0f} MiB (batching on), "
          f"{off['rss'] / 2**20:.0f} MiB (off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
