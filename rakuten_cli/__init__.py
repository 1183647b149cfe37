"""The ``rakuten`` command: the one entry point, above the core (``rakuten_mm``) and every adapter package.

Nothing imports this package; it imports the core and, only for the sub-command asked for, the adapters
(``pipelines`` for ``train``/``pipeline``, ``serving`` for ``serve``, ``rollout`` for ``deploy``/``rollback``).
"""
