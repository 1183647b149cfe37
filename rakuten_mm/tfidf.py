"""Optional third ensemble member: TF-IDF over the LSTM's token ids (word uni- and bigrams) + logistic regression.

It reads the same ``token_ids`` the LSTM reads, so serving needs no new tensor: the vocabulary is the text member's,
built on the training split. Cheap and strong on little data (see BENCHMARKS.md). Saved as plain arrays
(``tfidf.npz``, loaded with ``allow_pickle=False``) and rebuilt into sklearn objects: nothing executable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from rakuten_mm.text import PAD


def ngrams(row: np.ndarray) -> list[str]:
    """A row of token ids → its unigrams and bigrams as strings (padding dropped)."""
    tokens = [str(int(t)) for t in row if t != PAD]
    return tokens + [f"{a}_{b}" for a, b in zip(tokens, tokens[1:], strict=False)]


class TfidfMember:
    """TF-IDF (sublinear tf) + multinomial logistic regression; ``predict_proba`` covers all ``num_classes``."""

    def __init__(self, vectorizer: TfidfVectorizer, classifier: LogisticRegression, num_classes: int) -> None:
        self.vectorizer, self.classifier, self.num_classes = vectorizer, classifier, num_classes

    @staticmethod
    def _vectorizer(vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
        return TfidfVectorizer(analyzer=ngrams, sublinear_tf=True, vocabulary=vocabulary)

    @classmethod
    def fit(cls, token_ids: np.ndarray, y: np.ndarray, num_classes: int, c: float = 1.0) -> TfidfMember:
        vectorizer = cls._vectorizer()
        features = vectorizer.fit_transform(list(token_ids))
        # Balanced weights for the imbalanced classes, as the LSTM's weighted loss.
        classifier = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(features, y)
        return cls(vectorizer, classifier, num_classes)

    def predict_proba(self, token_ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(token_ids), self.num_classes), dtype=np.float32)
        if len(token_ids):
            probs = self.classifier.predict_proba(self.vectorizer.transform(list(token_ids)))
            out[:, self.classifier.classes_] = probs  # classes absent from training keep probability 0
        return out

    def save(self, path: Path) -> None:
        vocab = self.vectorizer.vocabulary_
        terms = sorted(vocab, key=vocab.__getitem__)
        np.savez(path, terms=np.array(terms, dtype=str), idf=self.vectorizer.idf_, coef=self.classifier.coef_,
                 intercept=self.classifier.intercept_, classes=self.classifier.classes_,
                 num_classes=np.array(self.num_classes))

    @classmethod
    def load(cls, path: Path) -> TfidfMember:
        with np.load(path, allow_pickle=False) as arrays:
            vectorizer = cls._vectorizer({str(t): i for i, t in enumerate(arrays["terms"])})
            vectorizer.idf_ = arrays["idf"]
            classifier = LogisticRegression()
            classifier.coef_, classifier.intercept_ = arrays["coef"], arrays["intercept"]
            classifier.classes_ = arrays["classes"]
            return cls(vectorizer, classifier, int(arrays["num_classes"]))
