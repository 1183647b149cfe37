"""Where things are: the repository, the shared folder beside it, the vendored schemas."""

from __future__ import annotations

from pathlib import Path

from tools.manifest_lint import KSERVE_CRD

REPO_ROOT = Path(__file__).resolve().parents[2]
# The workplace's read-only folder beside the repository; tests that use it skip when it is absent.
SHARED_DIR = REPO_ROOT.parent / "shared"
# 769 real labelled rows and 276 real images (flat layout); never copied into the repository.
REAL_DATA = SHARED_DIR / "data" / "rakuten-real"
# Third-party schemas vendored in the repository (schemas/SOURCE.md): a missing one is a failure, never a skip.
SCHEMAS_DIR = REPO_ROOT / "schemas"
OIP_REST = SCHEMAS_DIR / "open-inference-protocol" / "open_inference_rest.yaml"
BASE_MANIFEST = REPO_ROOT / "manifests" / "base" / "inferenceservice.yaml"

__all__ = ["BASE_MANIFEST", "KSERVE_CRD", "OIP_REST", "REAL_DATA", "REPO_ROOT", "SCHEMAS_DIR", "SHARED_DIR"]
