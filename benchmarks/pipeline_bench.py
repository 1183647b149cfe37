"""Pipeline benchmark (issue: Kubeflow pipeline). Prints markdown tables; all numbers measured in this process.

How much the local pipeline (``kfp.local``, one subprocess per step) costs on top of the work its steps do:
wall time of ``run_local`` vs the sum of the steps' own compute (each step times its function body and logs
``step_seconds_<step>`` to the run's MLflow parent run). The difference, per component, is the overhead (goal
≤ 1 s per component). Beside it: what a step process spends importing its libraries (a fresh interpreter
importing them, measured next to each run since the machine's load varies), and kfp.local's machinery alone
(process start, executor, orchestration) on a chain of no-op components. The
in-process ``rakuten_mm.training.train`` on the same data and settings is shown beside it
(it skips evaluate and register).

Per-component start-up (issue 11): for each component, a fresh interpreter doing what its container does before
the body's work: ``_KFP_RUNTIME=true`` kfp executor (the variable the compiled command sets, which keeps kfp's SDK
and client out), the program kfp embeds in the command, then what the body imports first (``rakuten_mm.steps``);
with the heavy libraries that loaded. ``--startup-only`` prints only that table (seconds, no pipeline run).

    python benchmarks/pipeline_bench.py [--products 200] [--epochs 2] [--image-size 32] [--repeat 2]
    python benchmarks/pipeline_bench.py --startup-only
"""

import argparse
import contextlib
import io
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
    """Median wall time of a fresh interpreter importing what every step imports (kfp executor as a component runs
    it, with ``_KFP_RUNTIME=true``; core; MLflow) and exiting."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STEP_IMPORTS], check=True, env={**os.environ, "_KFP_RUNTIME": "true"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


COMPONENTS = ("preprocess", "train_member", "fit_ensemble", "evaluate", "register", "deploy", "prepare_batch",
              "predict_shard", "merge_predictions")
HEAVY = ("torch", "torchvision", "sklearn", "scipy", "mlflow", "matplotlib", "pandas", "kubernetes", "kfp.client")
BODY_IMPORTS = {"deploy": "rollout.deploy"}  # what each component's body imports first (default: rakuten_mm.steps)


def component_program(component: str) -> str:
    """The Python program kfp embeds in ``component``'s container command (what ``ephemeral_component.py`` holds)."""
    import importlib

    module = importlib.import_module(f"components.{component}")
    command = getattr(module, component).component_spec.implementation.container.command
    if "_KFP_RUNTIME=true" not in command[2]:
        raise RuntimeError(f"{component}: kfp's launcher no longer sets _KFP_RUNTIME=true; update this benchmark")
    return str(command[-1])


def startup_seconds(component: str, work: Path, repeat: int = 3) -> tuple[float, list[str]]:
    """Median wall time of a fresh interpreter doing what ``component``'s container does before its body's work:
    kfp's executor imported under ``_KFP_RUNTIME=true`` (as the compiled command sets it: kfp then skips its SDK
    and client), the embedded program loaded as a module, then what the body imports first; and which heavy
    libraries that loaded."""
    body = BODY_IMPORTS.get(component, "rakuten_mm.steps")
    program = work / f"{component}_ephemeral_component.py"
    program.write_text(component_program(component))
    code = ("import kfp.dsl.executor_main, importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('ephemeral_component', {str(program)!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            f"import {body}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "_KFP_RUNTIME": "true"}
    times, loaded = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[1])
        times.append(time.perf_counter() - start)
        loaded = out.stdout.strip()
    return statistics.median(times), [m for m in loaded.split(",") if m]


def print_startup(repeat: int = 3) -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        rows = [(c, *startup_seconds(c, Path(work), repeat)) for c in COMPONENTS]
    bare = bare_interpreter_seconds()
    print("\n### Per-component start-up: a fresh interpreter running what the component's container runs before "
          "its body's work (kfp's executor under `_KFP_RUNTIME=true`, the embedded program, then what the body "
          "imports: `rakuten_mm.steps`; deploy: `rollout.deploy`)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; median of "
          f"{repeat} per component; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.\n")
    print("| component | start-up (s) | heavy libraries loaded before the body runs |")
    print("|---|---|---|")
    for component, seconds, loaded in rows:
        print(f"| {component} | {seconds:.2f} | {', '.join(loaded) or 'none'} |")
    print(f"| (bare interpreter start + exit) | {bare:.2f} | |")
    worst = max(seconds for _, seconds, _ in rows)
    print(f"\n**Slowest component start-up: {worst:.2f} s (goal ≤ 1.5 s: {'met' if worst <= 1.5 else 'not met'}); "
          "torch, sklearn and mlflow load inside the steps that use them.**")


def noop_pipeline_seconds(work: Path, steps: int = 6) -> float:
    """Wall time per component of a chain of ``steps`` no-op lightweight components under the same runner: the
    pipeline machinery alone (process start, kfp's executor and orchestration), without any project import."""
    from kfp import dsl, local

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def noop(x: int) -> int:
        return x + 1

    @dsl.pipeline(name="noop-chain")
    def chain() -> int:
        task = noop(x=0)
        for _ in range(steps - 1):
            task = noop(x=task.output)
        return task.output

    scratch = work / "noop-scratch"
    (scratch / "workspace").mkdir(parents=True)
    old = os.environ.get("TMPDIR")
    tempfile.gettempdir()
    os.environ["TMPDIR"] = str(scratch)  # the components' mktemp -d dirs go here, removed with ``work``
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "noop-root"),
                   workspace_root=str(scratch / "workspace"))
        start = time.perf_counter()
        chain()
        return (time.perf_counter() - start) / steps
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old


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
    parser.add_argument("--startup-only", action="store_true", help="only the per-component start-up table")
    args = parser.parse_args()
    if args.startup_only:
        print_startup()
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        work = Path(tmp)
        os.environ["RAKUTEN_STATE_DIR"] = str(work / "state-0")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

        from mlflow.tracking import MlflowClient

        from pipelines.local_runner import run_local
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

        runs, import_samples = [], []
        for i in range(args.repeat):
            import_samples.append(import_seconds())  # beside each run: the machine's load changes over time
            os.environ["RAKUTEN_STATE_DIR"] = str(work / f"state-{i}")
            start = time.perf_counter()
            result = run_local(data, str(work / f"bundle-{i}"), cfg, quiet=True)
            wall = time.perf_counter() - start
            tracking = TrackingConfig.from_env()
            metrics = MlflowClient(tracking.uri).get_run(result["mlflow_run_id"]).data.metrics
            steps = {k.removeprefix("step_seconds_"): v for k, v in metrics.items() if k.startswith("step_seconds_")}
            runs.append((wall, steps))

        import_samples.append(import_seconds())
        imports = statistics.median(import_samples)
        bare = bare_interpreter_seconds()
        with contextlib.redirect_stdout(io.StringIO()):  # kfp.local echoes every step's log
            noop = noop_pipeline_seconds(work)

    n_steps = len(runs[0][1])
    print(f"\n## Local pipeline overhead ({args.products} synthetic products, {args.image_size} px, "
          f"{args.epochs} epochs per member, random VGG16 base)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
          f"{args.repeat} pipeline runs, each into a fresh MLflow store; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (a shared machine: compare within a run).\n")
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
    print(f"| a step process's imports + exit (kfp executor + rakuten_mm + mlflow; median of "
          f"{len(import_samples)}×3 samples, s) | {imports:.1f} |")
    print(f"| kfp.local machinery alone: a no-op component in a 6-step chain, wall per component (s) | {noop:.2f} |")
    print(f"| bare interpreter start + exit (s) | {bare:.2f} |")
    print(f"| in-process `training.train`, same data and settings (s; no evaluate/register) | {inprocess:.1f} |")
    verdict = "met" if overhead <= 1.5 else "not met"
    print(f"\n**Overhead per component: {overhead:.1f} s (goal ≤ 1.5 s, issue 11: {verdict}). A step process's "
          f"imports (kfp executor + rakuten_mm.steps + mlflow) cost {imports:.1f} s; kfp.local's own machinery costs "
          f"{noop:.2f} s per component.**")
    print_startup()


if __name__ == "__main__":
    main()
