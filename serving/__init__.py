"""KServe adapters for the Rakuten classifier: the predictor and transformer servers, the V2 codec and micro-batching.

Importing this package imports neither kserve nor torch; each module imports what it needs. ``serving.cli`` is the
entry point behind ``rakuten serve predictor|transformer``.
"""
