"""Text member: the one definition of text cleaning, the vocabulary, and the LSTM classifier.

Training, batch prediction and the serving transformer all call :func:`clean_text` and
:meth:`Vocabulary.encode_batch`, so a product is tokenised the same way everywhere.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD, UNK = 0, 1
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class CleaningSettings:
    """How raw designation/description become one string; saved in the bundle so serving cleans identically."""

    lowercase: bool = True
    strip_html: bool = True
    # Long descriptions carry little signal after the first sentences; the cap also bounds serving cost.
    max_tokens: int = 96

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> CleaningSettings:
        return cls(**obj)  # type: ignore[arg-type]


def _as_text(value: object) -> str:
    # pandas reads empty CSV fields as NaN (a float): treat it, None and bytes uniformly.
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def clean_text(designation: object, description: object = "", settings: CleaningSettings = CleaningSettings()) -> str:
    """Designation + description → one cleaned string (HTML tags and entities removed, whitespace squeezed)."""
    parts = []
    for raw in (designation, description):
        text = _as_text(raw)
        if settings.strip_html:
            # Entities are unescaped twice: the challenge files hold double-escaped ones such as ``&amp;eacute;``.
            text = html.unescape(html.unescape(text))
            text = _TAG.sub(" ", text)
        text = _SPACE.sub(" ", text).strip()
        if text:
            parts.append(text.lower() if settings.lowercase else text)
    return " ".join(parts)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


class Vocabulary:
    """Token ↔ id. Id 0 pads, id 1 stands for tokens never seen in the training split."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos = ["<pad>", "<unk>", *tokens]
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int = 30000) -> Vocabulary:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        # Ties broken alphabetically so the same data always gives the same ids.
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size])

    def encode(self, text: str, max_tokens: int) -> list[int]:
        return [self.stoi.get(tok, UNK) for tok in tokenize(text)[:max_tokens]]

    def encode_batch(self, texts: Sequence[str], max_tokens: int) -> np.ndarray:
        """Cleaned texts → ``int64 [B, L]`` right-padded with 0, L = longest row (at least 1)."""
        rows = [self.encode(t, max_tokens) for t in texts]
        width = max([len(r) for r in rows] + [1])
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def to_json(self) -> list[str]:
        return self.itos[2:]

    @classmethod
    def from_json(cls, tokens: list[str]) -> Vocabulary:
        return cls(tokens)


@dataclass(frozen=True)
class TextModelConfig:
    vocab_size: int
    num_classes: int
    embed_dim: int = 128
    hidden_dim: int = 128
    bidirectional: bool = True
    dropout: float = 0.3

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> TextModelConfig:
        return cls(**obj)  # type: ignore[arg-type]


class TextClassifier(nn.Module):
    """Embedding → (bi)LSTM over the packed sequence → max over time → linear classifier.

    Max-pooling the per-token outputs beat the last hidden states on the real sample (held-out weighted F1
    0.35–0.39 vs 0.33, see BENCHMARKS.md): a product's class often hinges on one word anywhere in the title.
    """

    def __init__(self, cfg: TextModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, batch_first=True, bidirectional=cfg.bidirectional)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_dim * (2 if cfg.bidirectional else 1), cfg.num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # Lengths come from the padding itself; empty rows are given length 1 (a pad embedding, all zeros)
        # because packing rejects 0 — the ensemble ignores the text member for them through its mask.
        lengths = (token_ids != PAD).sum(dim=1).clamp(min=1).cpu()
        embedded = self.dropout(self.embedding(token_ids))
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        valid = (torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None])
        pooled = out.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)
        return self.classifier(self.dropout(pooled))


def text_present(token_ids: np.ndarray) -> np.ndarray:
    """Rows with at least one token: the text member's presence mask."""
    return (token_ids != PAD).any(axis=1)
