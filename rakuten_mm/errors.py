"""Typed errors. The CLI prints their message as one line; servers map them to status codes."""

from __future__ import annotations


class RakutenError(Exception):
    """Base of every error a user can cause and fix (bad data, bad option, bad bundle)."""


class ConfigError(RakutenError):
    """An option or setting outside its allowed values."""


class DataValidationError(RakutenError):
    """The dataset failed validation; ``report`` holds the per-row findings."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class BundleError(RakutenError):
    """A model bundle is missing, incomplete, tampered with or of an unsupported version."""


class StorageError(RakutenError):
    """A local path or s3:// URI cannot be read or written."""


class ImageWeightsUnavailable(RakutenError):
    """The requested backbone weights cannot be loaded (e.g. ImageNet weights offline)."""


class InputError(RakutenError):
    """A single prediction input (text or image bytes) is not acceptable."""
