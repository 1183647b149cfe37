"""Open Inference Protocol conformance: schemathesis generates requests from the OIP REST schema vendored in the
repository (``schemas/open-inference-protocol/open_inference_rest.yaml``) against both live servers.

Each generated case is sent twice: as generated (random model names and versions: 404s) and with the path pinned to
the served model (``rakuten``, version ``1``), so the random bodies reach the infer code. Checks: no 5xx ever, and
documented responses match their schema. Examples per operation are bounded so the run stays well under a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.integration, pytest.mark.slow]

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "open-inference-protocol" / "open_inference_rest.yaml"
EXAMPLES_PER_OPERATION = 20


@pytest.fixture(scope="module")
def oip_schema() -> Any:
    if not SCHEMA.is_file():
        pytest.skip(f"the Open Inference Protocol schema is not at {SCHEMA}")
    schemathesis = pytest.importorskip("schemathesis")
    import yaml

    raw = yaml.safe_load(SCHEMA.read_text())
    # The schema writes template paths as ${MODEL_NAME}; OpenAPI tools want {MODEL_NAME}.
    raw["paths"] = {path.replace("$", ""): item for path, item in raw["paths"].items()}
    return schemathesis.openapi.from_dict(raw)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(op: Any, url: str, seen: dict[str, set[int]]) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def check(case: Any) -> None:
        variants = [dict(case.path_parameters or {})]
        if case.path_parameters:
            variants.append({"MODEL_NAME": "rakuten", "MODEL_VERSION": "1"})
        for params in variants:
            if params:
                case.path_parameters = params
            response = case.call(base_url=url, timeout=30)
            seen.setdefault(op.label, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()


@pytest.mark.parametrize("which", ["transformer_url", "predictor_url"])
def test_open_inference_protocol_conformance(oip_schema: Any, which: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(which)
    operations = _operations(oip_schema)
    assert {op.path for op in operations} >= {"/v2/health/live", "/v2/",
                                             "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"}
    seen: dict[str, set[int]] = {}
    for op in operations:
        _fuzz(op, url, seen)
    infer = "POST /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"
    assert seen[infer] <= {200, 400, 404}, seen[infer]
    assert 400 in seen[infer], "no generated body reached the model's own validation"
    assert seen["GET /v2/health/live"] == {200}
