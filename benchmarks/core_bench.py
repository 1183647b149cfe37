"""Core benchmarks (issue: core library). Prints a markdown table per benchmark; ratios are measured side by side.

1. feature-cache: image-head epoch time with cached VGG16 features vs running the frozen base every epoch.
2. inference: in-process ensemble forward at 224×224 on this machine's device, batch 1 and 16.
3. quality: real data (../shared/data/rakuten-real), stratified 75/25, LSTM / VGG16 / ensemble next to a
   TF-IDF (word + char n-grams) + LinearSVC baseline trained on the same rows.

    python benchmarks/core_bench.py [--only feature-cache,inference,quality] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import machine

from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions, load_labelled
from rakuten_mm.inference import evaluate_rows
from rakuten_mm.model import load_bundle
from rakuten_mm.synth import generate
from rakuten_mm.training import preprocess, train, train_image

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"


def bench_feature_cache(work: Path, seed: int) -> None:
    data = generate(work / "fc-data", products=200, seed=seed, image_size=224).root
    prepared = preprocess(str(data), work / "fc-prep", seed=seed)
    rows = {}
    for cached in (True, False):
        stamps: list[float] = []
        start = time.perf_counter()
        cfg = TrainConfig(epochs_image=3, image_size=224, image_weights="none", feature_cache=cached, seed=seed,
                          batch_size=32)
        # Early stopping could cut a run short; patience (5) exceeds the 3 epochs, so all of them run.
        train_image(prepared, work / f"fc-{cached}", cfg, on_epoch=lambda e, r, s=stamps: s.append(time.perf_counter()))
        epochs = np.diff([start, *stamps])
        rows[cached] = (epochs[0], float(np.median(epochs[1:])))
    n_train = len(prepared.rows("train"))
    print(f"\n### 1. Image head: epoch time with vs without the feature cache ({n_train} training images, 224×224)\n")
    print("| mode | first epoch (s, incl. feature extraction when cached) | later epochs (s, median) |")
    print("|---|---|---|")
    for cached, (first, later) in rows.items():
        print(f"| {'cached features' if cached else 'VGG16 every epoch (+augmentation)'} | {first:.2f} | {later:.3f} |")
    print(f"\n**Speed-up per epoch after the first: {rows[False][1] / rows[True][1]:.0f}×** (goal ≥ 10×)")


def bench_inference(work: Path, seed: int) -> None:
    data = generate(work / "inf-data", products=120, seed=seed, image_size=224).root
    cfg = TrainConfig(epochs_text=1, epochs_image=1, image_size=224, image_weights="none", seed=seed)
    bundle = train(str(data), str(work / "inf-bundle"), cfg).bundle_uri
    model = load_bundle(bundle, "cuda" if torch.cuda.is_available() else "cpu")
    frame = load_labelled(data).frame
    print("\n### 2. In-process ensemble forward (LSTM + VGG16 + weights), 224×224, "
          f"{model.device.type}\n")
    print("| batch | p50 latency (ms) | p99 latency (ms) | throughput (products/s) |")
    print("|---|---|---|---|")
    for batch, reps in ((1, 30), (16, 6)):
        rows = frame.head(batch)
        ids = model.pre.encode_text(rows["designation"].tolist(), rows["description"].tolist())
        images, mask = model.pre.encode_images([(data / p).read_bytes() for p in rows["image"]])
        model.predict_tensors(ids, images, mask)  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.predict_tensors(ids, images, mask)
            times.append(time.perf_counter() - t)
        p50, p99 = statistics.median(times), float(np.percentile(times, 99))
        print(f"| {batch} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {batch / p50:.1f} |")


def _subset(src: Path, rows: pd.DataFrame, y: pd.DataFrame, out: Path) -> Path:
    out.mkdir(parents=True)
    rows.to_csv(out / "X_train_update.csv")
    y.loc[rows.index].to_csv(out / "Y_train_CVw08PX.csv")
    (out / "images").symlink_to(src / "images")
    return out


def bench_quality(work: Path, seed: int, epochs_text: int, epochs_image: int) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    from rakuten_mm.text import clean_text

    if not (REAL / "X.csv").is_file():
        print(f"\n### 3. Quality on real data: skipped ({REAL} not found)")
        return
    x = pd.read_csv(REAL / "X.csv", index_col=0, dtype={"designation": str, "description": str},
                    keep_default_na=False)
    y = pd.read_csv(REAL / "Y.csv", index_col=0)
    fit_idx, held_idx = train_test_split(x.index, test_size=0.25, random_state=seed, stratify=y["prdtypecode"])
    fit_dir = _subset(REAL, x.loc[fit_idx], y, work / "q-fit")
    held_dir = _subset(REAL, x.loc[held_idx], y, work / "q-held")
    options = DataOptions(on_missing_image="text-only")

    texts = {name: [clean_text(a, b) for a, b in zip(x.loc[i, "designation"], x.loc[i, "description"], strict=True)]
             for name, i in (("fit", fit_idx), ("held", held_idx))}
    baseline = make_pipeline(make_union(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)),
                                        TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5))),
                             LinearSVC(C=1.0, class_weight="balanced"))
    t = time.perf_counter()
    baseline.fit(texts["fit"], y.loc[fit_idx, "prdtypecode"])
    base_f1 = f1_score(y.loc[held_idx, "prdtypecode"], baseline.predict(texts["held"]), average="weighted")
    base_s = time.perf_counter() - t

    # The members train on 80% of the fit rows; 20% is their validation split (early stopping + ensemble weights).
    rows = [("TF-IDF word+char + LinearSVC (baseline)", len(held_idx), base_f1)]
    notes = []
    for members in (("text", "image"), ("text", "image", "tfidf")):
        cfg = TrainConfig(epochs_text=epochs_text, epochs_image=epochs_image, image_size=224, image_weights="none",
                          seed=seed, batch_size=16, val_fraction=0.2, test_fraction=0.05, members=members)
        t = time.perf_counter()
        bundle = train(str(fit_dir), str(work / f"q-bundle-{len(members)}"), cfg, options).bundle_uri
        train_s = time.perf_counter() - t
        model = load_bundle(bundle)
        held = load_labelled(held_dir, options, allowed_codes=model.labels.codes)
        scores = evaluate_rows(model, held.frame, held_dir)
        label = " + ".join({"text": "LSTM", "image": "VGG16", "tfidf": "TF-IDF member"}[m] for m in members)
        if len(members) == 2:
            text = scores["members"]["text"]
            rows += [("LSTM (text member)", text["rows"], text["weighted_f1"]),
                     ("VGG16 head (image member, rows with an image)", scores["members"]["image"]["rows"],
                      scores["members"]["image"]["weighted_f1"])]
        else:
            rows.append(("TF-IDF over token ids + logistic regression (tfidf member)",
                         scores["members"]["tfidf"]["rows"], scores["members"]["tfidf"]["weighted_f1"]))
        rows.append((f"ensemble {label}{' (default pair)' if len(members) == 2 else ''}", scores["rows"],
                     scores["weighted_f1"]))
        notes.append(f"{label}: weights {model.weights}, training {train_s:.0f} s")
    with_image = int((load_labelled(held_dir, options).frame["image"] != "").sum())
    print(f"\n### 3. Quality on real data ({len(fit_idx)} rows to fit, {len(held_idx)} held out, "
          f"{with_image} held-out rows with an image; VGG16 base with `none` weights — no ImageNet weights offline)\n")
    print("| model | rows scored | weighted F1 | ratio to baseline |")
    print("|---|---|---|---|")
    for name, n, f1 in rows:
        print(f"| {name} | {n} | {f1:.4f} | {f1 / base_f1:.2f}× |")
    print(f"\n{'; '.join(notes)}; baseline {base_s:.1f} s. Goals: LSTM ≥ 0.8× baseline, ensemble ≥ baseline.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="feature-cache,inference,quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-text", type=int, default=20)
    parser.add_argument("--epochs-image", type=int, default=20)
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="rakuten-bench-"))
    try:
        if "feature-cache" in wanted:
            bench_feature_cache(work, args.seed)
        if "inference" in wanted:
            bench_inference(work, args.seed)
        if "quality" in wanted:
            bench_quality(work, args.seed, args.epochs_text, args.epochs_image)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
