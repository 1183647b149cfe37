"""Reading a saved backbone ``state_dict`` that a user points ``--image-weights`` at (a local path or s3:// URI)."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from rakuten_mm import storage
from rakuten_mm.errors import ImageWeightsUnavailable

if TYPE_CHECKING:
    import torch


def load_state_file(source: str, what: str, alternatives: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of ``source`` (no pickled code); :class:`ImageWeightsUnavailable` naming
    ``what`` (the backbone) and ``alternatives`` (the allowed ``--image-weights``) when it cannot be read."""
    import torch

    try:
        if storage.is_s3(source):
            bucket, key = storage.split_s3(source)
            with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
                storage.s3_client().download_file(bucket, key, tmp.name)
                return torch.load(tmp.name, map_location="cpu", weights_only=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing file, botocore error, unpickling refusal: all mean "cannot load"
        raise ImageWeightsUnavailable(f"cannot load {what} weights from {source!r} "
                                      f"({type(exc).__name__}: {exc}); {alternatives}") from None
