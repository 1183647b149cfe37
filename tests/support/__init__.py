"""What several test folders share: repository paths (``paths``), running the installed ``rakuten`` command
(``cli``), KServe's CRD schema as a validator (``schemas``) and a fake Kubernetes API server
(``fake_kube_api``). Imported as ``tests.support`` (pytest puts the repository root on ``sys.path``:
``pythonpath`` in pyproject.toml)."""
