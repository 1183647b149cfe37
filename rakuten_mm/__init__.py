"""Rakuten France multimodal product classifier: the plain-Python core (no kfp, no kserve)."""

__version__ = "0.1.0"
