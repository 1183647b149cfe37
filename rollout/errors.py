"""What a deploy or rollback raises besides ``ConfigError`` (bad arguments, refused before any request)."""

from __future__ import annotations

from typing import Any

from rakuten_mm.errors import RakutenError


class DeployError(RakutenError):
    """The Kubernetes API refused or failed a deploy/rollback step; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeployTimeout(DeployError, TimeoutError):
    """The InferenceService did not become Ready in time; ``conditions`` are the last ones seen."""

    def __init__(self, message: str, conditions: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.conditions = conditions
