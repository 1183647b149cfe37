"""The sha256 of a file, read in 1 MiB chunks: bundle manifests and the pinned files of installed wheels."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    """Hex sha256 of ``path``'s bytes (memory stays at one chunk, whatever the file's size)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
