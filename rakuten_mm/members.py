"""The ensemble's members: a small registry of what each one is, reads and stores.

Training (:mod:`rakuten_mm.training`), the bundle layout (:mod:`rakuten_mm.bundle`) and the runtime model
(:mod:`rakuten_mm.model`) look members up here instead of spelling their names: adding a member is an entry here
plus its train / load / predict functions, which those modules key by :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rakuten_mm.errors import ConfigError

TEXT, IMAGE, TFIDF, CHARTFIDF = "text", "image", "tfidf", "chartfidf"


@dataclass(frozen=True)
class Member:
    """One ensemble member: its name, the modality it reads, the bundle files it owns and what it needs."""

    name: str
    modality: str  # "text" or "image": which presence mask applies to its rows, and the stage that trains it
    files: tuple[str, ...]  # its files in the bundle (rakuten_mm.bundle names them for the other modules)
    requires: tuple[str, ...] = ()
    default: bool = True  # in the default pair


REGISTRY: dict[str, Member] = {m.name: m for m in (
    Member(TEXT, "text", ("text_model.pt",)),
    Member(IMAGE, "image", ("image_backbone.pt", "image_head.pt")),
    # Optional: TF-IDF over the text member's token ids (it needs the text member's vocabulary).
    Member(TFIDF, "text", ("tfidf.npz",), requires=(TEXT,), default=False),
    # Optional: word + character n-gram TF-IDF over the raw text (rakuten_mm.chartfidf); needs no other member.
    Member(CHARTFIDF, "text", ("chartfidf.npz",), default=False),
)}
DEFAULT = tuple(name for name, m in REGISTRY.items() if m.default)


def trained_by(stage: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the training stage ``stage`` (``text`` or ``image``: a modality) fits, in registry order."""
    return [name for name in ordered(names) if REGISTRY[name].modality == stage]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in registry order (the order members are trained, stored and reported)."""
    wanted = set(names)
    return [name for name in REGISTRY if name in wanted]


def parse(members: str | Iterable[str]) -> tuple[str, ...]:
    """``"text,image"`` or a sequence of names → checked, distinct member names; :class:`ConfigError` otherwise."""
    names = [m.strip() for m in (members.split(",") if isinstance(members, str) else members) if m.strip()]
    bad = [m for m in names if m not in REGISTRY]
    if bad or not names or len(set(names)) != len(names):
        raise ConfigError(f"members must be distinct names from {tuple(REGISTRY)}, got {names}")
    for name in names:
        if missing := [r for r in REGISTRY[name].requires if r not in names]:
            raise ConfigError(f"member {name} needs {', '.join(missing)}: add {', '.join(missing)} to --members")
    return tuple(names)
