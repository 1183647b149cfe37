"""KServe adapters for the Rakuten classifier: the predictor and transformer servers, the V2 codec and micro-batching.

``contract`` defines what clients send and what crosses the transformer → predictor hop (bundle-independent),
``settings`` the servers' configuration and request limits, ``kserve_compat`` every private KServe name used.
Importing this package imports neither kserve nor torch; each module imports what it needs, and the transformer's
never import torch. ``serving.cli`` is the entry point behind ``rakuten serve predictor|transformer``.
"""
