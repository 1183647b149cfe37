"""Weighted ensemble of member probabilities, with weights tuned on the validation split.

Weights lie on a simplex grid; the one with the best weighted F1 wins and validation log-loss breaks ties.
A member that is absent for a row (no image, no text) is left out of that row and the remaining weights are
renormalised, so a product without an image gets the text member's prediction alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import f1_score, log_loss

from rakuten_mm.errors import ConfigError


def simplex_grid(members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector with ``members`` entries, multiples of ``step``, summing to 1."""
    if not 0 < step <= 1 or abs(round(1 / step) * step - 1) > 1e-9:
        raise ConfigError(f"grid step must divide 1 (e.g. 0.05, 0.1), got {step}")
    n = round(1 / step)
    return [tuple(c / n for c in combo) + ((n - sum(combo)) / n,)
            for combo in itertools.product(range(n + 1), repeat=members - 1) if sum(combo) <= n]


def check_weights(weights: Mapping[str, float], members: Sequence[str], tol: float = 1e-5) -> dict[str, float]:
    """Ensemble weights for exactly ``members``: finite, each in [0, 1], summing to 1 (within ``tol``).

    :class:`ConfigError` says which rule failed and what arrived (a bundle's weights are checked on load).
    """
    if set(weights) != set(members):
        raise ConfigError(f"ensemble weights must name exactly the members {sorted(members)}, got {sorted(weights)}")
    values = {k: float(v) for k, v in weights.items()}
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values.values()):
        raise ConfigError(f"ensemble weights must each lie in [0, 1], got {values}")
    if abs(sum(values.values()) - 1.0) > tol:
        raise ConfigError(f"ensemble weights must sum to 1 (a point of the simplex), got {values} summing to "
                          f"{sum(values.values()):.6g}")
    return values


def combine(probs: Mapping[str, np.ndarray], weights: Mapping[str, float],
            present: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Weighted mean of member probabilities per row, over the members present in that row.

    A row whose present members all have weight 0 falls back to their plain mean; a row with no member present
    gets the uniform distribution.
    """
    names = list(probs)
    first = probs[names[0]]
    total = np.zeros_like(first, dtype=np.float64)
    norm = np.zeros(len(first))
    plain = np.zeros_like(total)
    count = np.zeros(len(first))
    for name in names:
        mask = np.ones(len(first), bool) if present is None or name not in present else present[name].astype(bool)
        w = float(weights.get(name, 0.0))
        total += w * mask[:, None] * probs[name]
        norm += w * mask
        plain += mask[:, None] * probs[name]
        count += mask
    out = np.full_like(total, 1.0 / first.shape[1])
    weighted = norm > 0
    out[weighted] = total[weighted] / norm[weighted, None]
    fallback = ~weighted & (count > 0)
    out[fallback] = plain[fallback] / count[fallback, None]
    return out.astype(np.float32)


def fit_weights(probs: Mapping[str, np.ndarray], y: np.ndarray, present: Mapping[str, np.ndarray] | None = None,
                step: float = 0.05) -> dict[str, float]:
    """Weights maximising weighted F1 of :func:`combine` on (``probs``, ``y``); log-loss breaks ties."""
    names = list(probs)
    if not names:
        raise ConfigError("the ensemble needs at least one member")
    if len(names) == 1:
        return {names[0]: 1.0}
    labels = np.arange(probs[names[0]].shape[1])
    best: tuple[float, float] | None = None
    best_w: dict[str, float] = {}
    for combo in simplex_grid(len(names), step):
        w = dict(zip(names, combo, strict=True))
        mixed = combine(probs, w, present)
        f1 = float(f1_score(y, mixed.argmax(1), average="weighted", zero_division=0))
        loss = float(log_loss(y, np.clip(mixed, 1e-7, 1.0), labels=labels))
        key = (f1, -loss)
        if best is None or key > best:
            best, best_w = key, w
    return {k: round(v, 6) for k, v in best_w.items()}
