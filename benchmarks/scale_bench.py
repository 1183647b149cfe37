"""Full-size benchmark (issue 11): the challenge's 84,916 + 13,812 products on a real ``moto_server``, every step's
data path, wall time and peak RSS per step, and how each figure grows with the number of products.

Data: the challenge's exact layout (``X_train_update.csv``, ``Y_train_CVw08PX.csv``, ``X_test_update.csv``,
``images/image_train/`` + ``images/image_test/`` holding one 500×500 JPEG per product, named
``image_<imageid>_product_<productid>.jpg``), ``--products`` labelled rows (default 84,916: the challenge's) and
13,812 × products / 84,916 test rows. Text comes from :mod:`rakuten_mm.synth`'s generator (French titles, HTML
descriptions, the real class proportions). To save generation time the JPEGs are drawn from a pool of ``--pool``
distinct images (the real 500×500 product photos of ``../shared/data/rakuten-real`` when present, else synthetic
ones) and the same bytes are written many times (hard links locally; separate objects on S3). The dataset is
uploaded concurrently (:func:`upload`: :mod:`rakuten_mm.storage`'s pool and client) to ``moto_server`` on a free
loopback port (started as a subprocess, stopped by PID), and every step below reads it through ``s3://``.

Each step runs in its own Python process (``os.wait4`` gives that process's peak RSS); its wall time is the step's
work measured inside the process, after the imports (the process's start-up is shown apart):

1. validate: :func:`rakuten_mm.data.validate` (what ``rakuten data validate`` runs) on the s3 URI;
2. split: the preprocess step (:func:`rakuten_mm.data.preprocess`: validation again + the recorded split);
3. transfer: the train + validation images of the split, fetched as the image step fetches them
   (:func:`rakuten_mm.storage.fetch` of :func:`rakuten_mm.data.image_keys`: what ``data.images_of`` does);
4. decode: those images to the 224 px preset (:func:`rakuten_mm.image.load_uint8_images`: the parallel decode of
   :mod:`rakuten_mm.decoding`, a batch ahead, batches of 32 as feature extraction reads them);
5. text: :func:`rakuten_mm.text.clean_text` + :meth:`~rakuten_mm.text.Vocabulary.build` over the split (as the
   text stage does), then ONE epoch of :func:`rakuten_mm.fitting.fit` on :class:`~rakuten_mm.text.TextClassifier`
   on the CPU (with its validation pass);
6. ensemble: :func:`rakuten_mm.ensemble.fit_weights` on validation-size random probabilities of 2 members, and
   :func:`rakuten_mm.stacking.fit_simplex_weights` on train + validation-size ones (the out-of-fold rows);
7. evaluate: the test split's images fetched and decoded, then :func:`rakuten_mm.evaluation.score` of an
   ensemble (:func:`rakuten_mm.ensemble.combine`) of random member probabilities;
8. VGG16 forward: :func:`rakuten_mm.vgg.backbone_features` on ``build_backbone("none")`` at 224 px, batch 16, on a
   sample of 64 decoded images, in this process's default precision plan; EXTRAPOLATED to every image.

Results accumulate in ``--results`` (one entry per size), so running 10k, then 40k, then the full size prints one
table with the growth between sizes; then a projection of a full pipeline run on a 1-GPU/8-CPU node (measured vs
assumed parts listed). Data lives under ``--work`` (default /tmp/rakuten-scale), deleted at the end unless
``--keep``.

    nice -n 10 python benchmarks/scale_bench.py [--products 84916[,...]] [--pool 200] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moto_process import start_moto, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHALLENGE_TRAIN, CHALLENGE_TEST = 84_916, 13_812
REAL = REPO_ROOT.parent / "shared" / "data" / "rakuten-real"
BUCKET = "scale-bench"
PREFIX = "data"
DECODE_BATCH = 32
STEPS = ("validate", "split", "transfer", "decode", "text", "ensemble", "evaluate", "vgg16")
MiB = 1024 * 1024


# ---- the data ------------------------------------------------------------------------------------------------------

def image_pool(size: int, work: Path) -> tuple[list[bytes], str]:
    real = sorted([*(REAL / "images").glob("*.jpg"), *(REAL / "images_test").glob("*.jpg")])[:size]
    if len(real) >= min(size, 50):
        return [p.read_bytes() for p in real], f"{len(real)} real 500×500 product photos from {REAL.name}"
    from rakuten_mm.synth import generate

    root = generate(work / "pool", products=max(size, 100), seed=0, image_size=500).root
    files = sorted((root / "images" / "image_train").glob("*.jpg"))[:size]
    blobs = [p.read_bytes() for p in files]
    shutil.rmtree(root, ignore_errors=True)
    return blobs, f"{len(blobs)} synthetic 500×500 JPEGs (rakuten_mm.synth)"


def build(root: Path, products: int, test_products: int, pool: list[bytes], seed: int = 0) -> None:
    """The challenge layout with synth's text; image files hard-linked to the pool's (same bytes, many names)."""
    import numpy as np
    import pandas as pd

    from rakuten_mm import synth
    from rakuten_mm.labels import KNOWN_CODES

    rng = np.random.default_rng(seed)
    counts = synth._class_counts(products)  # the real class proportions
    codes = np.array(KNOWN_CODES)
    train_labels = rng.permutation(np.repeat(codes, [counts[c] for c in KNOWN_CODES]))
    weights = np.array([synth._REAL_COUNTS[c] for c in KNOWN_CODES], dtype=float)
    test_labels = rng.choice(codes, size=test_products, p=weights / weights.sum())
    labels = np.concatenate([train_labels, test_labels])
    total = products + test_products
    other = [synth._pick_code(rng, synth._RELATED[int(c)]) if u < synth.TEXT_CONFUSION else None
             for c, u in zip(labels, rng.random(total), strict=True)]
    designation = [synth._title(rng, int(c), o) for c, o in zip(labels, other, strict=True)]
    description = [synth._description(rng, int(c), o) for c, o in zip(labels, other, strict=True)]
    productid = synth._unique_ids(rng, total, 100_000_000, 4_300_000_000)
    imageid = synth._unique_ids(rng, total, 900_000_000, 1_400_000_000)

    def frame(lo: int, hi: int) -> pd.DataFrame:
        return pd.DataFrame({"designation": designation[lo:hi], "description": description[lo:hi],
                             "productid": productid[lo:hi], "imageid": imageid[lo:hi]},
                            index=pd.RangeIndex(lo, hi))

    root.mkdir(parents=True)
    frame(0, products).to_csv(root / "X_train_update.csv", lineterminator="\n")
    pd.DataFrame({"prdtypecode": train_labels}, index=pd.RangeIndex(0, products)).to_csv(
        root / "Y_train_CVw08PX.csv", lineterminator="\n")
    frame(products, total).to_csv(root / "X_test_update.csv", lineterminator="\n")
    sources = root / ".pool"
    sources.mkdir()
    for k, blob in enumerate(pool):
        (sources / f"{k}.jpg").write_bytes(blob)
    for sub in ("image_train", "image_test"):
        (root / "images" / sub).mkdir(parents=True)
    for i in range(total):
        sub = "image_train" if i < products else "image_test"
        os.link(sources / f"{i % len(pool)}.jpg",
                root / "images" / sub / f"image_{imageid[i]}_product_{productid[i]}.jpg")
    shutil.rmtree(sources)  # the hard links keep the bytes


# ---- step processes ----------------------------------------------------------------------------------------------

def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(root: Path, uri: str) -> None:
    """Every file under ``root`` to ``uri``: one PUT each, ``RAKUTEN_S3_CONCURRENCY`` at a time, on
    :func:`rakuten_mm.storage.bounded_map` with :func:`~rakuten_mm.storage.transfer_client` (set-up, not a step;
    :func:`rakuten_mm.storage.upload_dir` goes through ``upload_file`` and measured about the same here)."""
    from rakuten_mm import storage

    bucket, prefix = storage.split_s3(uri)
    concurrency = storage.transfer_concurrency()
    client = storage.transfer_client(concurrency)
    files = [p for p in root.rglob("*") if p.is_file()]
    put = lambda p: client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(root).as_posix()}",  # noqa: E731
                                      Body=p.read_bytes())
    for _ in storage.bounded_map(put, files, concurrency):
        pass


# ---- the steps (each runs in its own process: `scale_bench.py _step NAME STATE OUT`) -------------------------------

def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _decode_all(paths: list[Path], size: int = 224) -> dict[str, Any]:
    """Every image through the parallel decode to the preset, a batch ahead, as feature extraction reads them."""
    from rakuten_mm import backbones
    from rakuten_mm.image import load_uint8_images

    preset = backbones.get("vgg16").preset(size)
    checksum = 0
    with load_uint8_images(paths, preset) as images:
        workers = images.workers
        for start in range(0, len(paths), DECODE_BATCH):
            batch = images[start:start + DECODE_BATCH]
            if start + DECODE_BATCH < len(paths):
                images.prefetch(slice(start + DECODE_BATCH, start + 2 * DECODE_BATCH))
            checksum += int(batch[:, :, 0, 0].sum())
    return {"images": len(paths), "workers": workers, "checksum": checksum}


def _split_paths(state: dict[str, Any], split_names: tuple[str, ...], root: Path) -> list[Path]:
    from rakuten_mm import data

    prepared = data.load_prepared(Path(state["work"]) / "dataset")
    return [root / key for key in data.image_keys(*(prepared.rows(s) for s in split_names))]


def _fetch(state: dict[str, Any], split_names: tuple[str, ...], dest: Path) -> dict[str, Any]:
    """The images of the given splits, fetched as a step fetches them (``data.images_of`` → ``storage.fetch``)."""
    from rakuten_mm import data, storage

    prepared = data.load_prepared(Path(state["work"]) / "dataset")
    keys = data.image_keys(*(prepared.rows(s) for s in split_names))
    storage.fetch(storage.resolve(state["uri"]), keys, dest)
    return {"objects": len(keys), "bytes": sum(p.stat().st_size for p in dest.rglob("*.jpg")),
            "concurrency": storage.transfer_concurrency()}


def step_validate(state: dict[str, Any]) -> dict[str, Any]:
    from rakuten_mm import data

    report, wall, cpu = _timed(lambda: data.validate(state["uri"]))
    return {"wall": wall, "cpu": cpu, "objects": state["products"] + state["test_products"],
            "report": report.splitlines()[0]}


def step_split(state: dict[str, Any]) -> dict[str, Any]:
    from rakuten_mm import data

    out = Path(state["work"]) / "dataset"
    if hasattr(data, "preprocess"):
        prepared, wall, cpu = _timed(lambda: data.preprocess(state["uri"], out))
        how = "rakuten_mm.data.preprocess"
    else:  # older layout: the training stage's own
        from rakuten_mm import training

        prepared, wall, cpu = _timed(lambda: training.preprocess(state["uri"], out))
        how = "rakuten_mm.training.preprocess"
    return {"wall": wall, "cpu": cpu, "objects": state["products"], "how": how,
            "rows": {s: len(ids) for s, ids in prepared.splits.items()}}


def step_transfer(state: dict[str, Any]) -> dict[str, Any]:
    import rakuten_mm

    result, wall, cpu = _timed(lambda: _fetch(state, ("train", "val"), Path(state["work"]) / "fit_images"))
    # How the image stage reads today, from its source (importing rakuten_mm.training would import torch here).
    text = (Path(rakuten_mm.__file__).parent / "training.py").read_text()
    source = text[text.find("def train_image("):text.find("\ndef ", text.find("def train_image(") + 1)]
    uses = ("data.images_of (the train/val images only)" if "images_of" in source else
            "storage.local_files" if "local_files" in source else
            "storage.local_copy (the WHOLE prefix)" if "local_copy" in source else "unknown")
    return {"wall": wall, "cpu": cpu, **result, "train_image_uses": uses}


def step_decode(state: dict[str, Any]) -> dict[str, Any]:
    root = Path(state["work"]) / "fit_images"
    paths = _split_paths(state, ("train", "val"), root)
    result, wall, cpu = _timed(lambda: _decode_all(paths))
    return {"wall": wall, "cpu": cpu, **result}


def step_text(state: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from rakuten_mm import data
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.fitting import fit
    from rakuten_mm.labels import LabelMap
    from rakuten_mm.text import CleaningSettings, TextClassifier, TextModelConfig, Vocabulary, clean_text

    cfg = TrainConfig()
    labels = LabelMap.default()
    cleaning = CleaningSettings(max_tokens=cfg.max_tokens)
    prepared = data.load_prepared(Path(state["work"]) / "dataset")
    rows = {s: prepared.rows(s) for s in data.SPLITS}

    def prepare() -> tuple[Vocabulary, dict[str, torch.Tensor]]:
        texts = {s: [clean_text(a, b, cleaning) for a, b in zip(rows[s]["designation"], rows[s]["description"],
                                                                 strict=True)] for s in data.SPLITS}
        vocab = Vocabulary.build(texts["train"])
        return vocab, {s: torch.from_numpy(vocab.encode_batch(texts[s], cleaning.max_tokens)) for s in data.SPLITS}

    (vocab, ids), clean_wall, clean_cpu = _timed(prepare)
    y = {s: np.array([labels.index_of(c) for c in rows[s]["prdtypecode"]], dtype=np.int64) for s in data.SPLITS}
    torch.manual_seed(0)
    model = TextClassifier(TextModelConfig(vocab_size=len(vocab), num_classes=len(labels)))
    device = torch.device("cpu")
    _, epoch_wall, epoch_cpu = _timed(lambda: fit(
        model, ids["train"], y["train"], ids["val"], y["val"], num_classes=len(labels), epochs=1, device=device,
        seed=0, batch_size=cfg.batch_size, lr=5e-3, name="text"))
    return {"wall": clean_wall + epoch_wall, "cpu": clean_cpu + epoch_cpu, "clean_wall": clean_wall,
            "epoch_wall": epoch_wall, "epoch_cpu": epoch_cpu, "vocab": len(vocab), "train_rows": len(y["train"]),
            "val_rows": len(y["val"]), "batch_size": cfg.batch_size, "torch_threads": torch.get_num_threads(),
            "epochs_text_default": cfg.epochs_text}


def _random_probs(rng: Any, rows: int, classes: int) -> Any:
    probs = rng.random((rows, classes)).astype("float32") ** 4
    return probs / probs.sum(1, keepdims=True)


def step_ensemble(state: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from rakuten_mm import data, stacking
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.ensemble import fit_weights

    prepared = data.load_prepared(Path(state["work"]) / "dataset")
    n_val, n_fit = len(prepared.rows("val")), len(prepared.rows("train")) + len(prepared.rows("val"))
    rng = np.random.default_rng(0)
    step = TrainConfig().ensemble_step

    def members(n: int) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        probs = {"text": _random_probs(rng, n, 27), "image": _random_probs(rng, n, 27)}
        return probs, rng.integers(0, 27, n), {k: rng.random(n) > 0.02 for k in probs}

    val = members(n_val)
    fit_rows = members(n_fit)
    _, grid_wall, grid_cpu = _timed(lambda: fit_weights(*val, step=step))
    _, oof_wall, oof_cpu = _timed(lambda: stacking.fit_simplex_weights(*fit_rows, step=step))
    return {"wall": grid_wall + oof_wall, "cpu": grid_cpu + oof_cpu, "fit_weights_wall": grid_wall,
            "fit_weights_rows": n_val, "simplex_wall": oof_wall, "simplex_rows": n_fit, "grid_step": step}


def step_evaluate(state: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from rakuten_mm import data
    from rakuten_mm.ensemble import combine
    from rakuten_mm.evaluation import score
    from rakuten_mm.labels import LabelMap

    dest = Path(state["work"]) / "eval_images"
    fetched, fetch_wall, fetch_cpu = _timed(lambda: _fetch(state, ("test",), dest))
    decoded, decode_wall, decode_cpu = _timed(lambda: _decode_all(_split_paths(state, ("test",), dest)))
    labels = LabelMap.default()
    rows = data.load_prepared(Path(state["work"]) / "dataset").rows("test")
    y = np.array([labels.index_of(c) for c in rows["prdtypecode"]], dtype=np.int64)
    rng = np.random.default_rng(1)
    probs = {"text": _random_probs(rng, len(y), 27), "image": _random_probs(rng, len(y), 27)}
    _, score_wall, score_cpu = _timed(lambda: score(y, combine(probs, {"text": 0.6, "image": 0.4}), labels))
    return {"wall": fetch_wall + decode_wall + score_wall, "cpu": fetch_cpu + decode_cpu + score_cpu,
            "fetch_wall": fetch_wall, "fetch_cpu": fetch_cpu, "decode_wall": decode_wall, "decode_cpu": decode_cpu,
            "score_wall": score_wall, **fetched, "workers": decoded["workers"]}


def step_vgg16(state: dict[str, Any]) -> dict[str, Any]:
    import torch

    from rakuten_mm import backbones, precision
    from rakuten_mm.image import load_uint8_images
    from rakuten_mm.vgg import backbone_features, build_backbone

    sample, batch = 64, 16
    paths = sorted((Path(state["work"]) / "eval_images").rglob("*.jpg"))[:sample]
    preset = backbones.get("vgg16").preset(224)
    with load_uint8_images(paths, preset) as images:
        pixels = images[0:len(paths)]
    device = torch.device("cpu")
    backbone = build_backbone("none")
    backbone_features(backbone, pixels[:batch], preset, device)  # warm-up: layout conversion, kernels

    def run() -> None:
        for start in range(0, len(paths), batch):
            backbone_features(backbone, pixels[start:start + batch], preset, device)

    _, wall, cpu = _timed(run)
    return {"wall": wall, "cpu": cpu, "images": len(paths), "batch": batch, "per_s": len(paths) / wall,
            "plan": precision.resolve(None, device).describe(), "torch_threads": torch.get_num_threads()}


STEP_FUNCS = {name: globals()[f"step_{name}"] for name in STEPS}


def child(name: str, state_path: str, out_path: str) -> None:
    state = json.loads(Path(state_path).read_text())
    result = STEP_FUNCS[name](state)
    Path(out_path).write_text(json.dumps(result))


def run_step(name: str, state: dict[str, Any], logs: Path) -> dict[str, Any]:
    """``name`` in its own process; its peak RSS from ``wait4``."""
    state_path = logs / "state.json"
    state_path.write_text(json.dumps(state))
    out = logs / f"{name}.json"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(state["torch_threads"])}
    start = time.perf_counter()
    with open(logs / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_step", name, str(state_path),
                                 str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    process_wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"step {name} failed with {proc.returncode}:\n{tail}")
    result = json.loads(out.read_text())
    result.update(process_wall=process_wall, startup=process_wall - result["wall"], peak_rss_mib=usage.ru_maxrss / 1024,
                  process_cpu=usage.ru_utime + usage.ru_stime)
    print(f"  {name}: {result['wall']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
          f"(process {process_wall:.1f} s)", flush=True)
    return result


# ---- one size ------------------------------------------------------------------------------------------------------

def run_size(products: int, pool: list[bytes], work: Path, torch_threads: int,
             save: Any = None) -> dict[str, Any]:
    from rakuten_mm import storage

    test_products = round(CHALLENGE_TEST * products / CHALLENGE_TRAIN)
    base = work / f"p{products}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    root = base / "local"
    print(f"== {products:,} labelled + {test_products:,} test products", flush=True)
    _, gen_wall, _ = _timed(lambda: build(root, products, test_products, pool))
    image_bytes = sum(len(pool[i % len(pool)]) for i in range(products + test_products))
    print(f"  generated in {gen_wall:.1f} s ({image_bytes / 1e9:.2f} GB of images)", flush=True)
    load_before = os.getloadavg()
    moto, url = start_moto()
    results: dict[str, Any] = {}
    try:
        os.environ["AWS_ENDPOINT_URL"] = url
        storage.s3_client().create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/{PREFIX}"
        _, upload_wall, _ = _timed(lambda: upload(root, uri))
        print(f"  uploaded {products + test_products + 3:,} objects in {upload_wall:.1f} s", flush=True)
        shutil.rmtree(root)  # every step reads s3:// from here on
        state = {"uri": uri, "work": str(base), "products": products, "test_products": test_products,
                 "torch_threads": torch_threads}
        for name in STEPS:
            results[name] = run_step(name, state, base)
            if save is not None:  # what is done so far survives an interrupted run
                save({"products": products, "test_products": test_products, "partial": True,
                      "image_bytes": image_bytes, "generate_wall": gen_wall, "upload_wall": upload_wall,
                      "moto_peak_rss_mib": vm_hwm_mib(moto.pid), "load_before": load_before,
                      "torch_threads": torch_threads, "load_after": os.getloadavg(),
                      "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": results})
            if name == "decode":
                shutil.rmtree(base / "fit_images", ignore_errors=True)
        moto_mib = vm_hwm_mib(moto.pid)
    finally:
        stop(moto)
        os.environ.pop("AWS_ENDPOINT_URL", None)
        shutil.rmtree(base, ignore_errors=True)
    return {"products": products, "test_products": test_products, "image_bytes": image_bytes,
            "generate_wall": gen_wall, "upload_wall": upload_wall, "moto_peak_rss_mib": moto_mib,
            "load_before": load_before, "torch_threads": torch_threads, "load_after": os.getloadavg(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "steps": results}


# ---- report --------------------------------------------------------------------------------------------------------

def _rate(step: str, r: dict[str, Any]) -> str:
    if step in ("validate", "split"):
        return f"{r['objects'] / r['wall']:,.0f} images/s (each decoded)"
    if step == "transfer":
        return f"{r['objects']:,} objects, {r['bytes'] / 1e9:.2f} GB: {r['objects'] / r['wall']:,.0f} objects/s"
    if step == "decode":
        return (f"{r['images']:,} images: {r['images'] / r['wall']:,.0f} images/s on {r['workers']} threads; "
                f"{r['cpu'] / r['images'] * 1e3:.2f} CPU ms/image")
    if step == "text":
        return (f"clean + vocab {r['clean_wall']:.1f} s, 1 LSTM epoch {r['epoch_wall']:.1f} s "
                f"({r['train_rows']:,} rows, vocab {r['vocab']:,})")
    if step == "ensemble":
        return (f"fit_weights {r['fit_weights_wall']:.1f} s ({r['fit_weights_rows']:,} rows), "
                f"fit_simplex_weights {r['simplex_wall']:.1f} s ({r['simplex_rows']:,} rows)")
    if step == "evaluate":
        return (f"fetch {r['fetch_wall']:.1f} s + decode {r['decode_wall']:.1f} s ({r['objects']:,} images) "
                f"+ score {r['score_wall']:.2f} s")
    return f"{r['per_s']:.1f} images/s ({r['plan']}, {r['torch_threads']} threads), 64-image sample"


LABELS = {"validate": "1. validate (`data.validate`, s3://)", "split": "2. split (`data.preprocess`)",
          "transfer": "3. transfer: train+val images", "decode": "4. decode train+val → 224 px",
          "text": "5. text: clean + vocab + 1 LSTM epoch (CPU)", "ensemble": "6. ensemble fit",
          "evaluate": "7. evaluate: test split fetch + decode + score",
          "vgg16": "8. VGG16 forward, 224 px (sample)"}


def report(entries: list[dict[str, Any]], assume: argparse.Namespace) -> None:
    from common import machine

    entries = sorted(entries, key=lambda e: e["products"])
    print(f"\n### Full-size data path on moto_server, {machine()}\n")
    for e in entries:
        print(f"- {e['products']:,} + {e['test_products']:,} products ({e['when']}"
              f"{'; INTERRUPTED: the steps listed only' if e.get('partial') else ''}): images "
              f"{e['image_bytes'] / 1e9:.2f} GB, generated in {e['generate_wall']:.0f} s, uploaded "
              f"({e.get('upload_how', 'one PUT per object, 32 at a time')}) in {e['upload_wall']:.0f} s; "
              f"moto_server peak RSS "
              f"{e['moto_peak_rss_mib']:,.0f} MiB; 1-min load average {e['load_before'][0]:.1f} before, "
              f"{e['load_after'][0]:.1f} after; step processes with OMP_NUM_THREADS={e.get('torch_threads', 2)}."
              + (f" {e['note']}" if e.get("note") else ""))
    print("\n| step | products | wall s | CPU s | peak RSS MiB | wall growth (products growth) | CPU growth "
          "| RSS growth | what |")
    print("|---|---|---|---|---|---|---|---|---|")
    for step in STEPS:
        previous: dict[str, Any] | None = None
        for e in entries:
            r = e["steps"].get(step)
            if r is None:
                continue
            growth = rss_growth = cpu_growth = "—"
            if previous is not None:
                k = e["products"] / previous["products"]
                growth = f"×{r['wall'] / previous['r']['wall']:.2f} (×{k:.2f})"
                rss_growth = f"×{r['peak_rss_mib'] / previous['r']['peak_rss_mib']:.2f}"
                cpu_growth = f"×{r['cpu'] / previous['r']['cpu']:.2f}"
            wall = f"{r['wall']:.1f}" + (" (extrapolated below)" if step == "vgg16" else "")
            print(f"| {LABELS[step]} | {e['products']:,} | {wall} | {r['cpu']:.1f} | {r['peak_rss_mib']:,.0f} | "
                  f"{growth} | {cpu_growth} | {rss_growth} | {_rate(step, r)} |")
            previous = {"products": e["products"], "r": r}
    startup = [r["startup"] for e in entries for r in e["steps"].values()]
    print(f"\nWall s: the step's work inside its own process, after imports (each process's start-up, imports "
          f"included, took {min(startup):.1f}–{max(startup):.1f} s more). CPU s: that work's CPU time in the step's "
          f"process (all its threads; moto_server's is not in it). Peak RSS: that process's `ru_maxrss` "
          f"(`os.wait4`), moto_server not included (listed above).")
    biggest = [e for e in entries if not e.get("partial")][-1]
    uses = biggest["steps"]["transfer"].get("train_image_uses")
    print(f"`training.train_image` today reads its images through: {uses}; step 3 fetches what the per-split "
          "path fetches (`data.image_keys` of the train + val rows → `storage.fetch`, "
          f"concurrency {biggest['steps']['transfer']['concurrency']}).")
    project(biggest, assume)


def project(e: dict[str, Any], a: argparse.Namespace) -> None:
    """A full pipeline run on a 1-GPU / 8-CPU node, from the largest size measured (scaled linearly to the
    challenge's size when smaller)."""
    s = e["steps"]
    k = CHALLENGE_TRAIN / e["products"]
    cores, lat, conc = a.node_cpus, a.latency_ms / 1e3, s["transfer"]["concurrency"]
    n_all = CHALLENGE_TRAIN  # every labelled image: the image stage extracts features for train, val and test
    n_test = s["evaluate"]["objects"] * k
    n_checked = CHALLENGE_TRAIN + CHALLENGE_TEST

    def fetch(objects: float, cpu: float) -> float:  # latency-bound on a real store, or the client's CPU
        return max(objects * lat / conc, cpu / cores)

    validate_cpu = s["split"]["cpu"] * k
    pre = fetch(CHALLENGE_TRAIN, validate_cpu)
    lstm_epoch_cpu = s["text"]["epoch_wall"] * k
    text = s["text"]["clean_wall"] * k + a.epochs_text * lstm_epoch_cpu / a.gpu_lstm_speedup
    decode_cpu_per = s["decode"]["cpu"] / s["decode"]["images"]
    fetch_cpu_per = s["transfer"]["cpu"] / s["transfer"]["objects"]
    image_fetch = fetch(n_all, fetch_cpu_per * n_all)
    image_extract = max(decode_cpu_per * n_all / cores, n_all / a.gpu_img_s)
    image = image_fetch + image_extract
    ens = s["ensemble"]["wall"] * k
    ev_fetch = fetch(n_test, s["evaluate"]["fetch_cpu"] * k)
    ev = ev_fetch + max(decode_cpu_per * n_test / cores, n_test / a.gpu_img_s) + s["evaluate"]["score_wall"] * k
    steps = 6
    overhead = steps * a.step_overhead
    critical = pre + max(text, image) + ens + ev + overhead
    cpu_vgg = CHALLENGE_TRAIN / s["vgg16"]["per_s"]
    print(f"\n**Projection: a full training pipeline run ({CHALLENGE_TRAIN:,} labelled products) on a 1-GPU / "
          f"{cores}-CPU node**" + (f" (this machine's figures at {e['products']:,} products scaled ×{k:.2f})"
                                   if k != 1 else "") + "\n")
    print("| pipeline step | projected | from |")
    print("|---|---|---|")
    print(f"| preprocess (validate + split) | {pre / 60:.1f} min | measured CPU {validate_cpu:.0f} s ÷ {cores} cores; "
          f"{CHALLENGE_TRAIN:,} GETs at {a.latency_ms:g} ms ÷ {conc} in flight = "
          f"{CHALLENGE_TRAIN * lat / conc:.0f} s (the larger) |")
    print(f"| train-lstm | {text / 60:.1f} min | measured: clean + vocab {s['text']['clean_wall'] * k:.0f} s, one CPU "
          f"epoch {lstm_epoch_cpu:.0f} s ({s['text']['torch_threads']} torch thread(s)); ASSUMED: "
          f"{a.epochs_text} epochs (the default, before early stopping) on a GPU {a.gpu_lstm_speedup:g}× faster "
          "than this CPU epoch |")
    print(f"| train-vgg16 | {image / 60:.1f} min | fetch {image_fetch:.0f} s ({n_all:,} images: latency-bound as "
          f"above); decode measured {decode_cpu_per * 1e3:.2f} CPU ms/image ÷ {cores} cores = "
          f"{decode_cpu_per * n_all / cores:.0f} s, overlapped with VGG16 ASSUMED at {a.gpu_img_s:,.0f} images/s "
          f"bf16 on the GPU = {n_all / a.gpu_img_s:.0f} s (the larger counts); head epochs on cached features: "
          "seconds, not counted |")
    print(f"| fit-ensemble | {ens:.0f} s | measured (grid search, one thread) |")
    print(f"| evaluate | {ev / 60:.1f} min | fetch {ev_fetch:.0f} s + decode/VGG16 as above for {n_test:,.0f} images "
          "+ score (measured) |")
    print(f"| start-up of {steps} components | {overhead:.0f} s | {a.step_overhead:g} s each "
          "(`pipeline_bench.py` before issue 11) |")
    print(f"| **total, text ∥ image** | **{critical / 60:.0f} min** | the two member tasks run in parallel "
          f"(sequential: {(critical + min(text, image)) / 60:.0f} min) |")
    print(f"\nVGG16 on THIS machine's CPU ({s['vgg16']['plan']}): {s['vgg16']['per_s']:.1f} images/s measured on "
          f"64 images → EXTRAPOLATED {cpu_vgg / 3600:.1f} h for the {CHALLENGE_TRAIN:,} labelled images' features "
          f"(+{CHALLENGE_TEST / s['vgg16']['per_s'] / 3600:.1f} h for the {CHALLENGE_TEST:,} test products' "
          f"batch prediction): a GPU is what makes the image member practical. Validation decodes "
          f"{n_checked:,} images ({CHALLENGE_TRAIN:,} of them again in preprocess).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default=str(CHALLENGE_TRAIN),
                        help="labelled products, or a comma-separated list of sizes run in turn (test products "
                             f"scale as {CHALLENGE_TEST:,}/{CHALLENGE_TRAIN:,})")
    parser.add_argument("--pool", type=int, default=200, help="distinct JPEGs the images are drawn from")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rakuten-scale"))
    parser.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "rakuten-scale-results.json",
                        help="results of earlier sizes are read from and added to this file")
    parser.add_argument("--report-only", action="store_true", help="print the table of --results and exit")
    parser.add_argument("--keep", action="store_true", help="keep --work (the image pool) afterwards")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the step processes (torch's intra-op threads; default 1: on a few "
                             "shared cores, 2 spinning OpenMP threads made the LSTM 3× slower than 1)")
    projection = parser.add_argument_group("projection assumptions")
    projection.add_argument("--node-cpus", type=int, default=8)
    projection.add_argument("--latency-ms", type=float, default=20.0, help="a real object store's first-byte latency")
    projection.add_argument("--gpu-img-s", type=float, default=2000.0, help="VGG16 bf16 images/s on the GPU")
    projection.add_argument("--gpu-lstm-speedup", type=float, default=10.0)
    projection.add_argument("--epochs-text", type=int, default=10)
    projection.add_argument("--step-overhead", type=float, default=6.2, help="start-up seconds per component")
    args = parser.parse_args()

    entries: dict[int, dict[str, Any]] = {}
    if args.results.is_file():
        entries = {e["products"]: e for e in json.loads(args.results.read_text())}
    if not args.report_only:
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        args.work.mkdir(parents=True, exist_ok=True)
        try:
            pool, what = image_pool(args.pool, args.work)
            print(f"Image pool: {what}, mean {sum(map(len, pool)) / len(pool) / 1e3:.1f} KB; every product's JPEG is "
                  "one of them, the same bytes written many times.", flush=True)
            def save(entry: dict[str, Any]) -> None:
                entries[entry["products"]] = {**entry, "pool": what}
                args.results.write_text(json.dumps(list(entries.values()), indent=1))

            for products in (int(p) for p in args.products.split(",")):
                save(run_size(products, pool, args.work, args.torch_threads, save))
        finally:
            if not args.keep:
                shutil.rmtree(args.work, ignore_errors=True)
    report(list(entries.values()), args)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_step":
        child(*sys.argv[2:])
    else:
        main()
