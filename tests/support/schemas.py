"""KServe's InferenceService CRD schema (vendored in schemas/kserve/) as a strict validator for tests."""

from __future__ import annotations

import functools
from typing import Any

from tests.support.paths import KSERVE_CRD
from tools import manifest_lint


@functools.cache
def _validator() -> Any:
    assert KSERVE_CRD.is_file(), f"the KServe CRD schema is missing at {KSERVE_CRD} (vendored: schemas/SOURCE.md)"
    return manifest_lint.isvc_validator(manifest_lint.load_crd(KSERVE_CRD), "v1beta1")


def isvc_schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` breaks the InferenceService v1beta1 schema made as strict as the API server
    (unknown fields rejected): ``[]`` when it is valid. The 2 MB CRD is parsed once per process."""
    return manifest_lint.schema_errors(_validator(), doc)
