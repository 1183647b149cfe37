"""Counts a user sets through the environment or a flag (threads, concurrent requests), checked at the edge."""

from __future__ import annotations

from rakuten_mm.errors import ConfigError


def int_setting(raw: object, name: str, what: str, maximum: int) -> int:
    """A count from the environment or a flag: ``raw`` as an integer from 1 to ``maximum``; :class:`ConfigError`
    naming the setting (``name``: ``what``), the allowed range and the value otherwise."""
    try:
        number = int(str(raw).strip())
    except ValueError:
        number = 0
    if not 1 <= number <= maximum:
        raise ConfigError(f"{name} ({what}) must be an integer from 1 to {maximum}, got {raw!r}")
    return number
