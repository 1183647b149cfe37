"""Pipeline benchmark (issue: Kubeflow pipeline). Prints markdown tables; all numbers measured in this process.

How much the local pipeline (``kfp.local``, one subprocess per step) costs on top of the work its steps do:
wall time of ``run_local`` vs the sum of the steps' own compute (each step times its function body and logs
``step_seconds_<step>`` to the run's MLflow parent run). The difference, per component, is the overhead (goal
≤ 1 s per component); it is split into what a step process spends importing its libraries (measured by
importing them in a fresh interpreter) and the rest (process start, kfp's executor and orchestration, MLflow
client set-up). The in-process ``rakuten_mm.training.train`` on the same data and settings is shown beside it
(it skips evaluate and register).

    python benchmarks/pipeline_bench.py [--products 200] [--epochs 2] [--image-size 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_IMPORTS = "import kfp.dsl.executor_main, rakuten_mm.steps, mlflow.tracking"


def import_seconds(repeat: int = 3) -> float:
    """Median wall time of a fresh interpreter importing what every step imports (kfp executor, core, MLflow)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STEP_IMPORTS], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_interpreter_seconds(repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="pipeline runs (each into a fresh state dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        work = Path(tmp)
        os.environ["RAKUTEN_STATE_DIR"] = str(work / "state-0")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

        from mlflow.tracking import MlflowClient

        from pipelines.local import run_local
        from rakuten_mm.config import TrainConfig
        from rakuten_mm.synth import generate
        from rakuten_mm.tracking import TrackingConfig
        from rakuten_mm.training import train

        data = str(generate(work / "data", products=args.products, seed=args.seed, image_size=args.image_size).root)
        cfg = TrainConfig(epochs_text=args.epochs, epochs_image=args.epochs, image_size=args.image_size,
                          image_weights="none", seed=args.seed, batch_size=32)

        start = time.perf_counter()
        train(data, str(work / "inprocess-bundle"), cfg)
        inprocess = time.perf_counter() - start

        runs = []
        for i in range(args.repeat):
            os.environ["RAKUTEN_STATE_DIR"] = str(work / f"state-{i}")
            start = time.perf_counter()
            result = run_local(data, str(work / f"bundle-{i}"), cfg, quiet=True)
            wall = time.perf_counter() - start
            tracking = TrackingConfig.from_env()
            metrics = MlflowClient(tracking.uri).get_run(result["mlflow_run_id"]).data.metrics
            steps = {k.removeprefix("step_seconds_"): v for k, v in metrics.items() if k.startswith("step_seconds_")}
            runs.append((wall, steps))

        imports = import_seconds()
        bare = bare_interpreter_seconds()

    n_steps = len(runs[0][1])
    print(f"\n## Local pipeline overhead ({args.products} synthetic products, {args.image_size} px, "
          f"{args.epochs} epochs per member, random VGG16 base)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
          f"{args.repeat} pipeline runs, each into a fresh MLflow store.\n")
    print("| step | compute (s), per run |")
    print("|---|---|")
    for step in runs[0][1]:
        print(f"| {step} | {' / '.join(f'{steps[step]:.2f}' for _, steps in runs)} |")
    print("\n| measure | value |")
    print("|---|---|")
    walls = [wall for wall, _ in runs]
    computes = [sum(steps.values()) for _, steps in runs]
    overheads = [(w - c) / n_steps for w, c in zip(walls, computes, strict=True)]
    wall, compute, overhead = (statistics.median(v) for v in (walls, computes, overheads))
    print(f"| pipeline wall time (s), median | {wall:.1f} |")
    print(f"| sum of the {n_steps} steps' compute (s), median | {compute:.1f} |")
    print(f"| wall / compute | {wall / compute:.1f}× |")
    print(f"| overhead per component (s) | {overhead:.1f} |")
    print(f"| … of which a step process's imports (kfp executor + rakuten_mm + mlflow, s) | {imports:.1f} |")
    print(f"| … of which a bare interpreter start (s) | {bare:.2f} |")
    print(f"| … the rest: kfp executor/orchestration, MLflow client set-up (s) | {overhead - imports:.1f} |")
    print(f"| in-process `training.train`, same data and settings (s; no evaluate/register) | {inprocess:.1f} |")
    verdict = "met" if overhead <= 1.0 else "not met"
    print(f"\n**Overhead per component: {overhead:.1f} s (goal ≤ 1 s: {verdict}); without the imports every step "
          f"process pays: {overhead - imports:.1f} s.**")


if __name__ == "__main__":
    main()
