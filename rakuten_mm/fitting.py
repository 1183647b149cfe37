"""One supervised training loop shared by the text model and the image head.

Class-weighted cross-entropy (the classes are imbalanced), AdamW, early stopping on validation weighted F1
(the challenge metric) and the best epoch's weights restored at the end; with no validation rows, exactly
``epochs`` epochs and the last weights (out-of-fold refits reuse the epoch count the full fit chose).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    best_epoch: int
    best_val_f1: float
    history: list[dict[str, float]] = field(default_factory=list)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * count)``), 1.0 for classes absent from the split, capped at 10."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(np.clip(weights, 0.1, 10.0), dtype=torch.float32)


Inputs = Any  # a tensor, or anything indexable like one with a batch (rakuten_mm.decoding.LazyImages)


def batches(inputs: Inputs, keys: Sequence[Any]) -> Iterator[torch.Tensor]:
    """``inputs[key]`` for each key in turn; inputs that can ``prefetch`` (lazily decoded images) are asked for
    the next key's batch before the current one is handed out, so decoding overlaps the model's work."""
    prefetch = getattr(inputs, "prefetch", None)
    for i, key in enumerate(keys):
        batch = inputs[key]
        if prefetch is not None and i + 1 < len(keys):
            prefetch(keys[i + 1])
        yield batch


@torch.no_grad()
def predict_proba(model: nn.Module, inputs: Inputs, device: torch.device, batch_size: int = 256,
                  forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities for ``inputs`` (a tensor, or lazily decoded images) in batches, in eval mode, as
    float32 numpy."""
    model.eval()
    call = forward or (lambda m, x: m(x))
    keys = [slice(i, i + batch_size) for i in range(0, len(inputs), batch_size)]
    chunks = [torch.softmax(call(model, batch.to(device)).float(), dim=1).cpu() for batch in batches(inputs, keys)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def fit(model: nn.Module, train_x: Inputs, train_y: np.ndarray, val_x: Inputs, val_y: np.ndarray, *,
        num_classes: int, epochs: int, device: torch.device, seed: int, batch_size: int = 64, lr: float = 2e-3,
        patience: int = 5, name: str = "model", on_epoch: EpochCallback | None = None,
        forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        train_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> FitResult:
    """Train ``model`` in place; ``forward``/``train_forward`` map an input batch to logits (default ``model(x)``)."""
    call = forward or (lambda m, x: m(x))
    train_call = train_forward or call
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_y, num_classes).to(device))
    targets = torch.as_tensor(train_y, dtype=torch.long)
    best = FitResult(best_epoch=0, best_val_f1=-1.0)
    best_state: dict[str, Any] | None = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        # A lone sample cannot train BatchNorm: it is left out and seen again next epoch in another batch.
        keys = [idx for start in range(0, len(order), batch_size) if len(idx := order[start:start + batch_size]) >= 2]
        for idx, batch in tqdm(zip(keys, batches(train_x, keys), strict=True), total=len(keys),
                               desc=f"{name} epoch {epoch}/{epochs}", leave=False, disable=None):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(train_call(model, batch.to(device)).float(), targets[idx].to(device))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        val_probs = predict_proba(model, val_x, device, forward=call)
        val_f1 = float(f1_score(val_y, val_probs.argmax(1), average="weighted", zero_division=0)) if len(val_y) else 0.0
        record = {"epoch": float(epoch), "train_loss": total / max(len(order), 1), "val_weighted_f1": val_f1}
        best.history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
        if not len(val_y):  # nothing to select on (a fold refit for out-of-fold probabilities): keep the last
            best.best_epoch, best_state = epoch, None
        elif val_f1 > best.best_val_f1:
            best.best_epoch, best.best_val_f1, stale = epoch, val_f1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best
