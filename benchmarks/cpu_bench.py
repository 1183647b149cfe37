"""The image backbone on CPU, fp32 NCHW vs the fast path, side by side in one run (issue 11).

1. Speed: ``rakuten_mm.vgg.backbone_features`` (the forward pass of feature extraction and of the predictor) on
   VGG16 (seeded random ``none`` base: timing does not depend on the weights) at 224 px, batch 1 and batch 16,
   with ``precision="fp32"`` (float32, NCHW: the reference) and ``precision="auto"`` (channels-last, plus bf16
   autocast where this CPU computes bf16 natively); interleaved rounds, p50 and best latency, throughput and the
   ratios (the best of the rounds is the least disturbed by other jobs on a shared machine).
   Where the CPU has no native bf16, one more row shows forced bf16 (emulated), which is why ``auto`` skips it.
2. Quality: weighted F1 on the real sample ``../shared/data/rakuten-real/`` (the 276 labelled products with
   their image): pooled features from the ``--f1-backbone`` (default EfficientNet-Lite0 with its ImageNet
   weights, the one pretrained backbone offline; ``vgg16`` = a seeded random base) per variant, then a logistic
   regression, 5-fold stratified cross-validated predictions with the same folds for every variant:

   - ``before``: fp32 NCHW and the previous decode (``Image.draft`` to 256 px: a 500 px JPEG decoded whole);
   - ``after``: ``auto`` and the current decode (DCT scaling to ≥ 224 px: 500 px → 250 px);
   - ``after, bf16 numerics``: the current decode with bf16 numerics. Where bf16 is native, that is ``auto`` with
     bf16 (real autocast). Elsewhere, real bf16 autocast is emulated and ~10× slower than fp32, so it is
     *simulated*: every conv/linear input and weight, and every layer's output, rounded to bf16 around fp32
     arithmetic (what bf16 autocast does with fp32 accumulation); the simulation is checked against real
     autocast on ``--bf16-check`` images (relative feature error of each vs fp32).

    python benchmarks/cpu_bench.py [--rounds 8] [--rounds16 3] [--f1-backbone efficientnet_lite0|vgg16]
                                   [--f1-images N] [--bf16-check 8] [--skip-f1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import machine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from rakuten_mm import backbones, image, precision
from rakuten_mm.labels import LabelMap
from rakuten_mm.vgg import backbone_features, extract_features

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"
CPU = torch.device("cpu")
SIZE = 224


def speed(rounds: dict[int, int]) -> list[str]:
    """Markdown rows: p50 latency and throughput of each precision at each batch size."""
    spec = backbones.get("vgg16")
    preset = spec.preset(SIZE)
    # One backbone per variant: backbone_features switches a backbone's layout in place when the plan changes.
    variants = {"fp32 (NCHW)": "fp32", "fast path (auto)": "auto"}
    native = precision.device_has_bf16(CPU)
    if not native:
        variants["bf16 forced (emulated)"] = "bf16"
    models = {name: spec.build("none", seed=0) for name in variants}
    rng = np.random.default_rng(0)
    rows = []
    for batch, n_rounds in rounds.items():
        pixels = torch.from_numpy(rng.integers(0, 256, (batch, 3, SIZE, SIZE), dtype=np.uint8))
        names = [n for n in variants if batch == 1 or variants[n] != "bf16"]  # emulated bf16: batch 1 only
        for name in names:  # warm-up: oneDNN builds its kernels on the first calls
            backbone_features(models[name], pixels, preset, CPU, precision=variants[name])
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(n_rounds):
            for name in names:
                if variants[name] == "bf16" and r >= 1:  # emulated: ~15x slower, one timed round
                    continue
                start = time.perf_counter()
                backbone_features(models[name], pixels, preset, CPU, precision=variants[name])
                times[name].append(time.perf_counter() - start)
        base, base_min = statistics.median(times["fp32 (NCHW)"]), min(times["fp32 (NCHW)"])
        for name in names:
            p50, best = statistics.median(times[name]), min(times[name])
            plan = precision.resolve(variants[name], CPU).describe()
            rows.append(f"| {batch} | {name}: {plan} | {p50 * 1000:.0f} | {best * 1000:.0f} | {batch / p50:.1f} | "
                        f"{base / p50:.2f}× | {base_min / best:.2f}× |")
    return rows


def real_sample(limit: int | None) -> tuple[list[Path], np.ndarray]:
    x = pd.read_csv(REAL / "X.csv", index_col=0, keep_default_na=False)
    codes = pd.read_csv(REAL / "Y.csv", index_col=0)["prdtypecode"].loc[x.index]
    labels = LabelMap.default()
    paths, y = [], []
    for (imageid, productid), code in zip(zip(x["imageid"], x["productid"], strict=True), codes, strict=True):
        path = REAL / "images" / f"image_{imageid}_product_{productid}.jpg"
        if path.is_file():
            paths.append(path)
            y.append(labels.index_of(int(code)))
    return paths[:limit], np.array(y[:limit], dtype=np.int64)


class bf16_simulation:  # noqa: N801 - a context manager used like a function
    """Round conv/linear inputs and weights, and every leaf module's output, to bf16 around fp32 arithmetic."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.saved: dict[nn.Module, torch.Tensor] = {}

    @staticmethod
    def _round(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16).float() if t.is_floating_point() else t

    def __enter__(self) -> None:
        for module in self.model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.saved[module] = module.weight.data
                module.weight.data = self._round(module.weight.data)
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, args: tuple(self._round(a) for a in args)))
            if not list(module.children()):
                self.handles.append(module.register_forward_hook(lambda m, args, out: self._round(out)))

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        for module, weight in self.saved.items():
            module.weight.data = weight


class decode_as_before:  # noqa: N801
    """The previous decode: ``Image.draft`` asked for the canonical 256 px."""

    def __enter__(self) -> None:
        self.saved, image.DRAFT_MIN_SIZE = image.DRAFT_MIN_SIZE, image.CANONICAL_SIZE

    def __exit__(self, *exc: object) -> None:
        image.DRAFT_MIN_SIZE = self.saved


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def quality(backbone_name: str, limit: int | None, bf16_check: int) -> list[str]:
    """Markdown lines: weighted F1 per variant and the differences."""
    spec = backbones.get(backbone_name)
    weights = "imagenet" if backbone_name == "efficientnet_lite0" else "none"
    preset = spec.preset(SIZE)
    paths, y = real_sample(limit)
    model = spec.build(weights, seed=0)
    native = precision.device_has_bf16(CPU)
    feats: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    with decode_as_before():
        feats["before: fp32 NCHW, previous decode"] = extract_features(model, paths, preset, CPU, batch_size=16,
                                                                       precision="fp32", desc="before")
    feats[f"after: auto ({precision.resolve('auto', CPU).describe()}), current decode"] = extract_features(
        model, paths, preset, CPU, batch_size=16, precision="auto", desc="after")
    notes = []
    if native:
        if not precision.resolve("auto", CPU).bf16:
            raise AssertionError("native bf16 but auto is not bf16")
    else:
        with bf16_simulation(model):
            sim = extract_features(model, paths, preset, CPU, batch_size=16, precision="fp32", desc="bf16 sim")
        feats["after, bf16 numerics (simulated: bf16 not native here)"] = sim
        if bf16_check:
            check = paths[:bf16_check]
            current = extract_features(model, check, preset, CPU, batch_size=16, precision="fp32")
            real = extract_features(model, check, preset, CPU, batch_size=16, precision="bf16", desc="real bf16")
            notes.append(f"bf16 simulation check on {len(check)} images (current decode): relative feature error "
                         f"vs fp32 — real bf16 autocast {relative(real, current):.4f}, simulation "
                         f"{relative(sim[:len(check)], current):.4f}; simulation vs real "
                         f"{relative(sim[:len(check)], real):.4f}.")
    seconds = time.perf_counter() - started
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    names = list(feats)
    reference = feats[names[0]]
    preds: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare classes (fewer members than folds), lbfgs iteration notes
        for name in names:
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
            preds[name] = cross_val_predict(classifier, feats[name], y, cv=folds)
    base_f1 = f1_score(y, preds[names[0]], average="weighted")
    lines = [f"{len(paths)} real products with their image, {spec.name} ({weights} weights) at {SIZE} px, features "
             f"extracted in {seconds:.0f} s; logistic regression, 5-fold stratified cross-validated predictions "
             "(same folds for every variant).", "",
             "| variant | weighted F1 | Δ vs before (points) | relative feature change | predictions changed |",
             "|---|---|---|---|---|"]
    for name in names:
        f1 = f1_score(y, preds[name], average="weighted")
        changed = float((preds[name] != preds[names[0]]).mean())
        lines.append(f"| {name} | {f1:.4f} | {100 * (f1 - base_f1):+.2f} | {relative(feats[name], reference):.4f} | "
                     f"{changed:.1%} |")
    return [*lines, "", *notes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds at batch 1")
    parser.add_argument("--rounds16", type=int, default=3, help="timed rounds at batch 16")
    parser.add_argument("--f1-backbone", default="efficientnet_lite0", choices=sorted(backbones.BACKBONES))
    parser.add_argument("--f1-images", type=int, default=None, help="first N of the 276 (default: all)")
    parser.add_argument("--bf16-check", type=int, default=8, help="images for the real-vs-simulated bf16 check")
    parser.add_argument("--skip-f1", action="store_true")
    args = parser.parse_args()
    caps = torch.cpu.get_capabilities()
    flags = [k for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "bf16") if caps.get(k)]
    print(f"# {machine()}; CPU {caps.get('cpu_name', '?')} ({', '.join(flags)}); native bf16: "
          f"{precision.cpu_has_bf16()}; torch threads {torch.get_num_threads()}")
    started = time.perf_counter()
    print("\n| batch | precision: plan | p50 latency (ms) | best (ms) | throughput (images/s, p50) | speed-up "
          "vs fp32 (p50) | speed-up (best) |")
    print("|---|---|---|---|---|---|---|")
    for row in speed({1: args.rounds, 16: args.rounds16}):
        print(row)
    print(f"\n(speed: {time.perf_counter() - started:.0f} s)")
    if not args.skip_f1:
        print()
        for line in quality(args.f1_backbone, args.f1_images, args.bf16_check):
            print(line)
    print(f"\n# run took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
