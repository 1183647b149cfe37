"""How the frozen image backbone runs: numeric precision and memory layout, decided in one place.

:func:`rakuten_mm.vgg.backbone_features` is the one forward pass of the image backbone, used by feature extraction
(training), in-process evaluation/prediction and the serving predictor; it asks :func:`resolve` how to run, so
every path of one process runs the backbone the same way and served and in-process answers agree.

Precisions (``--precision`` at the edge, else ``RAKUTEN_PRECISION``, read when a forward pass runs; default
``auto``; anything else is a :class:`~rakuten_mm.errors.ConfigError` naming the allowed values):

- ``auto``: the fast path. Channels-last memory layout (the backbone's weights are converted once, in place; each
  input batch is converted as it arrives), plus bf16 autocast where the hardware computes in bf16 natively: a
  CUDA device that supports it, or a CPU with AVX512-BF16 or AMX-BF16 (x86-64) or BF16 (arm64), as reported by
  :func:`torch.cpu.get_capabilities`. On other CPUs bf16 would be emulated and several times slower than fp32, so
  ``auto`` stays fp32 there (channels-last only).
- ``fp32``: the reference: float32 in the NCHW layout (what every earlier release computed on CPU).
- ``bf16``: bf16 autocast and channels-last even where bf16 is emulated (slow; for reproducing a bf16 machine's
  numerics and for tests).

bf16 moves pooled features by a few percent (relative: ~6% for EfficientNet-Lite0) and weighted F1 on the real
sample by a fraction of a point (BENCHMARKS.md, ``benchmarks/cpu_bench.py``); the layout changes them only by float
rounding (~1e-6). Training and serving resolve the same plan on the same kind of machine; a bundle trained with
bf16 features and served in fp32 (or the reverse) sees that few-percent shift.

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rakuten_mm.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "RAKUTEN_PRECISION"
DEFAULT = "auto"
# torch.cpu.get_capabilities() keys meaning "bf16 arithmetic in hardware": x86-64 and arm64 names.
_CPU_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class Plan:
    """How one forward pass runs: bf16 autocast or not, channels-last or NCHW."""

    precision: str  # the requested name: auto, fp32 or bf16
    bf16: bool
    channels_last: bool

    def describe(self) -> str:
        """e.g. ``auto → bf16, channels_last``: for logs and the bundle's metadata."""
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.precision} → {'bf16' if self.bf16 else 'fp32'}, {layout}"


def check(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; :class:`ConfigError` naming them otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def requested(precision: str | None = None) -> str:
    """``precision``, else ``RAKUTEN_PRECISION``, else ``auto``; validated."""
    if precision is not None:
        return check(precision)
    raw = os.environ.get(PRECISION_ENV, "").strip()
    if raw and raw not in PRECISIONS:
        raise ConfigError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, got {raw!r}")
    return raw or DEFAULT


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16/AMX-BF16 on x86-64, BF16 on arm64)."""
    import torch

    caps = torch.cpu.get_capabilities()
    return any(bool(caps.get(name)) for name in _CPU_BF16)


def device_has_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 autocast natively (so that it is faster than fp32)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve(precision: str | None, device: torch.device) -> Plan:
    """The :class:`Plan` for ``precision`` (``None``: :func:`requested`'s default) on ``device``."""
    name = requested(precision)
    if name == "fp32":
        return Plan(name, bf16=False, channels_last=False)
    fast_layout = device.type in ("cpu", "cuda")
    if name == "bf16":
        return Plan(name, bf16=True, channels_last=fast_layout)
    return Plan(name, bf16=device_has_bf16(device), channels_last=fast_layout)


def set_layout(module: nn.Module, channels_last: bool) -> None:
    """Convert ``module``'s 4-D weights to the plan's layout in place; a no-op when they already have it."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=fmt):
            module.to(memory_format=fmt)
            return


def autocast(plan: Plan, device: torch.device) -> torch.autocast:
    """The autocast context of ``plan`` (disabled for fp32)."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=plan.bf16)
