"""The ``chartfidf`` member: word + character n-gram TF-IDF over the cleaned text, and a linear classifier.

Four TF-IDF blocks (sublinear tf), each fitted on the training rows: word uni/bigrams and ``char_wb`` 2–5-grams
over the cleaned designation + description (:func:`rakuten_mm.text.clean_text`, the bundle's cleaning settings),
and the same two over the cleaned designation alone. The title block lets the designation, which names the
product, weigh more than a long description: on the real sample (5-fold cross-validation over the 576 fit rows of
the seed-0 split) it lifts weighted F1 from 0.54 to 0.58. Character n-grams give morphology for free (plurals,
compounds, typos), which an LSTM learning its embeddings from a few hundred rows cannot.

The classifier is a class-balanced :class:`~sklearn.svm.LinearSVC`; its decision values become probabilities
through a softmax with one temperature, fitted by minimising the log-loss of 3-fold cross-validated decision
values (so the ensemble sees calibrated probabilities, not margins). It reads raw text, which the predictor
receives. Saved as plain arrays (``chartfidf.npz``: vocabularies, idf, coefficients, temperature; loaded with
``allow_pickle=False``) and rebuilt into sklearn objects: nothing executable.

With ``--text-vectors`` two dense blocks follow the TF-IDF ones: the mean of the pretrained vectors of the words of
the whole text and of the designation, each scaled to unit length (weight 1 against the unit-length TF-IDF rows).
The file then also keeps the whole table in float16 (``vec_keys``, ``vec_rows``, ``vec_matrix``), so serving needs
no other source, and words no training row contained still count: that is where the vectors help. On the real
sample (3 seeds of the 75/25 split) they lift the member from 0.594 to 0.626 weighted F1 (0.599 with only the
training rows' words kept): word similarity learnt from billions of French words, which 576 rows cannot teach.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC

from rakuten_mm.text import CleaningSettings, clean_text, tokenize
from rakuten_mm.vectors import WordVectors

# (field, analyzer, n-gram range) of each TF-IDF block, in feature order.
BLOCKS: tuple[tuple[str, str, tuple[int, int]], ...] = (
    ("all", "word", (1, 2)), ("all", "char_wb", (2, 5)), ("title", "word", (1, 2)), ("title", "char_wb", (2, 5)))
CALIBRATION_FOLDS = 3
# At most this many n-grams per block (the most frequent): bounds the bundle file on the full challenge data
# (≈ 4 × 50k × 27 float32 coefficients, ≈ 22 MB before compression; 7 MB on the real sample). There only the
# char block of the whole text is trimmed (66k → 50k n-grams); held-out F1 0.584 → 0.589 on the seed-0 split.
MAX_FEATURES = 50_000


def fields(designations: Sequence[object], descriptions: Sequence[object] | None,
           cleaning: CleaningSettings = CleaningSettings()) -> dict[str, list[str]]:
    """Raw designations/descriptions → the cleaned texts the blocks read: ``all`` (both fields) and ``title``."""
    descriptions = descriptions if descriptions is not None else [""] * len(designations)
    return {"all": [clean_text(a, b, cleaning) for a, b in zip(designations, descriptions, strict=True)],
            "title": [clean_text(a, "", cleaning) for a in designations]}


def present(texts: dict[str, list[str]]) -> np.ndarray:
    """Rows with any cleaned text: the member's presence mask (an empty row gets no vote in the ensemble)."""
    return np.array([bool(t.strip()) for t in texts["all"]], dtype=bool)


def subset(texts: dict[str, list[str]], rows: np.ndarray) -> dict[str, list[str]]:
    """:func:`fields` output restricted to ``rows`` (integer positions)."""
    return {field: [values[i] for i in rows] for field, values in texts.items()}


def _vectorizer(analyzer: str, ngrams: tuple[int, int], vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, vocabulary=vocabulary,
                           max_features=None if vocabulary else MAX_FEATURES)


def _margins(decisions: np.ndarray) -> np.ndarray:
    """Decision values as ``[N, classes]``: with two classes sklearn gives one margin (for ``classes_[1]``)."""
    decisions = np.asarray(decisions, dtype=np.float64)
    return np.stack([-decisions, decisions], axis=1) / 2 if decisions.ndim == 1 else decisions


def _temperature(decisions: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """The softmax temperature minimising the log-loss of cross-validated decision values (bounded, log scale)."""
    target = np.searchsorted(classes, y)

    def loss(log_t: float) -> float:
        return float(-log_softmax(np.exp(log_t) * decisions, axis=1)[np.arange(len(y)), target].mean())

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(0.1), np.log(100.0)), method="bounded").x))


def pooled(vectors: WordVectors, texts: list[str]) -> np.ndarray:
    """Each text's mean word vector (over its words ``vectors`` knows), unit length; zeros for a text without one."""
    tokens = [tokenize(text) for text in texts]
    table, found = vectors.lookup([tok for row in tokens for tok in row])
    out = np.zeros((len(texts), vectors.dim), dtype=np.float32)
    start = 0
    for i, row in enumerate(tokens):
        hit = found[start:start + len(row)]
        if hit.any():
            out[i] = table[start:start + len(row)][hit].mean(axis=0)
        start += len(row)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


VECTOR_FIELDS = ("all", "title")


class CharTfidfMember:
    """TF-IDF blocks (:data:`BLOCKS`), optional pooled word vectors (:data:`VECTOR_FIELDS`), LinearSVC and a softmax
    temperature; ``predict_proba`` covers ``num_classes``."""

    def __init__(self, vectorizers: list[TfidfVectorizer], classifier: LinearSVC, temperature: float,
                 num_classes: int, vectors: WordVectors | None = None) -> None:
        self.vectorizers, self.classifier = vectorizers, classifier
        self.temperature, self.num_classes, self.vectors = temperature, num_classes, vectors

    def features(self, texts: dict[str, list[str]]) -> sparse.csr_matrix:
        blocks = [v.transform(texts[field]) for v, (field, _, _) in zip(self.vectorizers, BLOCKS, strict=True)]
        if self.vectors is not None:
            blocks += [sparse.csr_matrix(pooled(self.vectors, texts[field])) for field in VECTOR_FIELDS]
        return sparse.hstack(blocks).tocsr()

    @classmethod
    def fit(cls, texts: dict[str, list[str]], y: np.ndarray, num_classes: int, c: float = 1.0,
            seed: int = 0, vectors: WordVectors | None = None) -> CharTfidfMember:
        """Fit on :func:`fields` output and integer labels ``y`` (class indices below ``num_classes``); with
        ``vectors``, add the pooled word-vector blocks."""
        vectorizers = [_vectorizer(analyzer, ngrams).fit(texts[field]) for field, analyzer, ngrams in BLOCKS]
        if vectors is not None:  # the float16 copy the bundle keeps, so training sees what serving will
            vectors = WordVectors(vectors.source, vectors.keys, vectors.rows, vectors.matrix.astype(np.float16))
        member = cls(vectorizers, LinearSVC(C=c, class_weight="balanced"), 1.0, num_classes, vectors)
        x = member.features(texts)
        y = np.asarray(y)
        counts = np.bincount(np.unique(y, return_inverse=True)[1])
        folds = min(CALIBRATION_FOLDS, int(counts.max()))
        with warnings.catch_warnings():  # classes rarer than the folds: StratifiedKFold warns and still splits
            warnings.simplefilter("ignore", UserWarning)
            warnings.filterwarnings("ignore", "Number of classes in training fold", RuntimeWarning)
            if folds >= 2 and len(counts) >= 2:
                cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
                decisions = cross_val_predict(LinearSVC(C=c, class_weight="balanced"), x, y, cv=cv,
                                              method="decision_function")
                # A class missing from a fold's training rows gets the lowest float as its decision value;
                # clipped, it still loses every softmax without overflowing when scaled by the temperature.
                member.temperature = _temperature(np.maximum(_margins(decisions), -1e6), y, np.unique(y))
        member.classifier.fit(x, y)
        return member

    def predict_proba(self, texts: dict[str, list[str]]) -> np.ndarray:
        out = np.zeros((len(texts["all"]), self.num_classes), dtype=np.float32)
        if len(texts["all"]):
            decisions = _margins(self.classifier.decision_function(self.features(texts)))
            out[:, self.classifier.classes_] = softmax(self.temperature * decisions, axis=1)
        return out  # classes absent from training keep probability 0

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for i, v in enumerate(self.vectorizers):
            vocab = v.vocabulary_
            arrays[f"terms_{i}"] = np.array(sorted(vocab, key=vocab.__getitem__), dtype=str)
            arrays[f"idf_{i}"] = v.idf_
        if self.vectors is not None:
            arrays |= {"vec_keys": self.vectors.keys, "vec_rows": self.vectors.rows.astype(np.int32),
                       "vec_matrix": self.vectors.matrix}
        arrays |= {"coef": self.classifier.coef_.astype(np.float32), "intercept": self.classifier.intercept_,
                   "classes": self.classifier.classes_, "temperature": np.array(self.temperature),
                   "num_classes": np.array(self.num_classes)}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    @staticmethod
    def check(path: Path, num_classes: int) -> None:
        """``ValueError`` unless ``path`` holds plain arrays (no pickles) of the kinds and sizes :meth:`load` reads,
        for a label map of ``num_classes``: a hostile or corrupt file must fail here, not at prediction time."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a plain-array .npz: {str(exc)[:200]}") from None
        wanted = {"coef", "intercept", "classes", "temperature", "num_classes"} | {
            f"{kind}_{i}" for i in range(len(BLOCKS)) for kind in ("terms", "idf")}
        if missing := sorted(wanted - set(arrays)):
            raise ValueError(f"arrays {missing} are missing")
        n, classes, temperature = arrays["num_classes"], arrays["classes"], arrays["temperature"]
        if n.shape != () or n.dtype.kind not in "iu" or int(n) != num_classes:
            raise ValueError(f"num_classes must be the label map's size {num_classes}, got {n.tolist()!r}")
        if classes.ndim != 1 or classes.dtype.kind not in "iu" or len(set(classes.tolist())) != len(classes) \
                or len(classes) < 2 or not 0 <= classes.min() <= classes.max() < num_classes:
            raise ValueError(f"classes must be at least 2 distinct class indices below {num_classes}")
        if temperature.shape != () or temperature.dtype.kind != "f" or not 0 < float(temperature) < 1e6:
            raise ValueError(f"temperature must be one positive number, got {temperature.tolist()!r}")
        width = 0
        for i in range(len(BLOCKS)):
            terms, idf = arrays[f"terms_{i}"], arrays[f"idf_{i}"]
            if terms.ndim != 1 or terms.dtype.kind != "U" or len(set(terms.tolist())) != len(terms):
                raise ValueError(f"terms_{i} must be a 1-d array of distinct strings")
            if idf.shape != terms.shape or idf.dtype.kind != "f" or not np.isfinite(idf).all():
                raise ValueError(f"idf_{i} must be {len(terms)} finite floats, got {idf.dtype} {list(idf.shape)}")
            width += len(terms)
        vec = {"vec_keys", "vec_rows", "vec_matrix"}
        if vec & set(arrays) and not vec <= set(arrays):
            raise ValueError(f"arrays {sorted(vec)} come together or not at all, got {sorted(vec & set(arrays))}")
        if vec <= set(arrays):
            keys, rows, matrix = arrays["vec_keys"], arrays["vec_rows"], arrays["vec_matrix"]
            if keys.ndim != 1 or keys.dtype != np.uint64 or rows.shape != keys.shape or rows.dtype.kind not in "iu":
                raise ValueError(f"vec_keys must be 1-d uint64 and vec_rows integers of the same length, got "
                                 f"{keys.dtype} {list(keys.shape)} and {rows.dtype} {list(rows.shape)}")
            if matrix.ndim != 2 or not 1 <= matrix.shape[1] <= 1024 or matrix.dtype.kind != "f" \
                    or not np.isfinite(matrix).all():
                raise ValueError(f"vec_matrix must be finite floats of shape [N, 1..1024], got {matrix.dtype} "
                                 f"{list(matrix.shape)}")
            if len(rows) and not 0 <= rows.min() <= rows.max() < len(matrix):
                raise ValueError(f"vec_rows must index vec_matrix's {len(matrix)} rows")
            width += len(VECTOR_FIELDS) * matrix.shape[1]
        rows = len(classes) if len(classes) > 2 else 1
        for key, shape in (("coef", (rows, width)), ("intercept", (rows,))):
            array = arrays[key]
            if array.shape != shape or array.dtype.kind != "f" or not np.isfinite(array).all():
                raise ValueError(f"{key} must be finite floats of shape {list(shape)}, got {array.dtype} "
                                 f"{list(array.shape)}")

    @classmethod
    def load(cls, path: Path) -> CharTfidfMember:
        with np.load(path, allow_pickle=False) as arrays:
            vectorizers = []
            for i, (_, analyzer, ngrams) in enumerate(BLOCKS):
                v = _vectorizer(analyzer, ngrams, {str(t): j for j, t in enumerate(arrays[f"terms_{i}"])})
                v.idf_ = arrays[f"idf_{i}"]
                vectorizers.append(v)
            classifier = LinearSVC()
            classifier.coef_, classifier.intercept_ = arrays["coef"].astype(np.float64), arrays["intercept"]
            classifier.classes_ = arrays["classes"]
            vectors = WordVectors("bundle", arrays["vec_keys"], arrays["vec_rows"], arrays["vec_matrix"]) \
                if "vec_keys" in arrays.files else None
            return cls(vectorizers, classifier, float(arrays["temperature"]), int(arrays["num_classes"]), vectors)
