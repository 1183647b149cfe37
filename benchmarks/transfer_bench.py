"""S3 transfer benchmark (issue 11): serial vs concurrent download of many small objects, at a real store's latency.

A real ``moto_server`` on a free loopback port holds ``--objects`` small objects; ``devtools.s3_proxy`` (a loopback
HTTP proxy, its own process) sits in front of it and delays every request by ``--latency-ms`` (a real object
store's first-byte latency is 10–20 ms; moto answers in a few). :func:`rakuten_mm.storage.fetch` downloads every
object through the proxy once serially (concurrency 1) and once per ``--concurrency`` level; each run lands in a
fresh directory and is checked (every object, right size). For context: the same keys through the proxy with the
previous code path (``download_file`` per object, a HEAD then a GET, 8 threads), and with the default concurrency
straight to moto (no added latency: the client's and the server's own cost, the floor on this machine). Beside
each run, the CPU time per object of the client (this process), moto_server and the proxy, read from the kernel:
when their sum approaches the cores' capacity, the run is CPU-bound, not latency-bound.
Goal: concurrent ≥ 8× faster than serial. Prints markdown; all numbers measured in this process.

    python benchmarks/transfer_bench.py [--objects 5000] [--size 8192] [--latency-ms 20] [--concurrency 8,32,64]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from moto_process import start_moto, stop  # noqa: E402

from devtools import s3_proxy  # noqa: E402

BUCKET = "transfer-bench"
PREFIX = "data/images/image_train"


def fill(keys: list[str], size: int) -> None:
    """Put the objects straight into moto (no proxy), concurrently."""
    from rakuten_mm import storage

    client = storage.transfer_client(32)
    client.create_bucket(Bucket=BUCKET)
    body = os.urandom(size)
    for _ in storage.bounded_map(lambda k: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{k}", Body=body),
                                 keys, 32):
        pass


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process so far; ``None``: this process, every thread."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and each process's CPU time over one run."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids

    def __enter__(self) -> Meter:
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.start
        self.cpu = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}


def timed_fetch(keys: list[str], work: Path, concurrency: int, size: int, pids: dict[str, int | None]) -> Meter:
    from rakuten_mm import storage

    dest = Path(tempfile.mkdtemp(dir=work))
    with Meter(pids) as meter:
        storage.fetch(f"s3://{BUCKET}/{PREFIX}", keys, dest, concurrency)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != len(keys) or any(p.stat().st_size != size for p in files):
        raise AssertionError(f"fetch wrote {len(files)} files for {len(keys)} keys")
    shutil.rmtree(dest)
    return meter


def timed_previous(keys: list[str], work: Path, pids: dict[str, int | None]) -> Meter:
    """The code path before issue 11: boto3 ``download_file`` per object (HEAD + GET), 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from rakuten_mm import storage

    dest = Path(tempfile.mkdtemp(dir=work))
    client = storage.s3_client()
    with Meter(pids) as meter, ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: client.download_file(BUCKET, f"{PREFIX}/{k}", str(dest / k)), keys))
    shutil.rmtree(dest)
    return meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--size", type=int, default=8192, help="bytes per object")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", default="8,32,64", help="comma-separated levels to measure")
    parser.add_argument("--previous-sample", type=int, default=1000,
                        help="objects for the previous code path's row (0: skip it)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    keys = [f"image_{i}_product_{i * 7}.jpg" for i in range(args.objects)]
    load_before = os.getloadavg()[0]
    moto, moto_url = start_moto()
    try:
        os.environ["AWS_ENDPOINT_URL"] = moto_url
        fill(keys, args.size)
        with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
            work = Path(tmp)
            floor = timed_fetch(keys, work, 32, args.size, {"client": None, "moto": moto.pid, "proxy": moto.pid})
            floor.cpu["proxy"] = 0.0  # no proxy on this run
            with s3_proxy.start(moto_url, "--latency-ms", str(args.latency_ms)) as proxy:
                os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
                pids = {"client": None, "moto": moto.pid, "proxy": proxy.process.pid}
                serial = timed_fetch(keys, work, 1, args.size, pids)
                concurrent = {c: timed_fetch(keys, work, c, args.size, pids) for c in levels}
                sample = keys[:args.previous_sample]
                previous = timed_previous(sample, work, pids) if sample else None
    finally:
        stop(moto)

    print(f"\n### Download of {args.objects:,} objects of {args.size:,} bytes through a {args.latency_ms:g} ms "
          f"latency proxy in front of moto_server\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. Client, proxy and moto_server "
          "share these cores.\n")
    n = args.objects

    def cpu(m: Meter, count: int = n) -> str:
        per = {k: 1000 * v / count for k, v in m.cpu.items()}
        return (f"{per['client']:.1f} / {per['moto']:.1f} / {per['proxy']:.1f} "
                f"(Σ {sum(per.values()):.1f})")

    print("| run | wall (s) | objects/s | vs serial | CPU ms per object: client / moto / proxy |")
    print("|---|---|---|---|---|")
    print(f"| `storage.fetch`, concurrency 1 (serial) | {serial.wall:.1f} | {n / serial.wall:.0f} | 1.0× | "
          f"{cpu(serial)} |")
    for c, m in concurrent.items():
        print(f"| `storage.fetch`, concurrency {c} | {m.wall:.1f} | {n / m.wall:.0f} | {serial.wall / m.wall:.1f}× | "
              f"{cpu(m)} |")
    if previous is not None:
        per = previous.wall / len(sample)
        print(f"| previous code path: `download_file` (HEAD + GET), 8 threads; {len(sample):,} of the objects, "
              f"scaled | {per * n:.1f} | {1 / per:.0f} | {serial.wall / (per * n):.1f}× | "
              f"{cpu(previous, len(sample))} |")
    print(f"| `storage.fetch`, concurrency 32, straight to moto (no added latency: the floor here) | "
          f"{floor.wall:.1f} | {n / floor.wall:.0f} | — | {cpu(floor)} |")
    default = 32 if 32 in concurrent else max(concurrent, key=lambda c: serial.wall / concurrent[c].wall)
    best = max(concurrent, key=lambda c: serial.wall / concurrent[c].wall)
    ratio = serial.wall / concurrent[default].wall
    busy = sum(concurrent[default].cpu.values()) / concurrent[default].wall
    print(f"\n**Concurrent (default concurrency {default}) vs serial: {ratio:.1f}× faster (goal ≥ 8×: "
          f"{'met' if ratio >= 8 else 'not met'}); best level measured: {best} "
          f"({serial.wall / concurrent[best].wall:.1f}×). During the concurrent run the three processes used "
          f"{busy:.2f} of the {os.cpu_count()} cores; its wall time vs the no-latency floor: "
          f"{concurrent[default].wall / floor.wall:.2f}×.**")


if __name__ == "__main__":
    main()
