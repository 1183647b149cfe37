"""Constants and helpers shared by tests/deploy (the fake API server's client, the objects, diffs)."""

from __future__ import annotations

import copy
import importlib.util
import json
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CRD_PATH = REPO_ROOT.parent / "shared" / "schemas" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
NAMESPACE = "ml-team"
IMAGE = "registry.test/rakuten/rakuten-serving:1.2.3"
OLD_URI = "s3://models/rakuten/runs/1/bundle"
NEW_URI = "s3://models/rakuten/runs/2/bundle"


class FakeKube:
    """Talks to the fake's control endpoints; ``client()`` is an ApiClient for the code under test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self, **config: Any) -> None:
        self._control("POST", "/_fake/reset", config)

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self._control("GET", "/_fake/requests") if method is None or r["method"] == method]

    def object(self, name: str = "rakuten", namespace: str = NAMESPACE) -> dict[str, Any]:
        found = [o for o in self._control("GET", "/_fake/objects")
                 if o["metadata"]["name"] == name and o["metadata"]["namespace"] == namespace]
        assert len(found) == 1, f"expected InferenceService {namespace}/{name} in the fake"
        return found[0]

    def client(self) -> Any:
        from pipelines.deploy import kube_api_client

        return kube_api_client(host=self.url)


def existing_isvc(uri: str = OLD_URI, *, annotations: dict[str, str] | None = None, ready: bool = True,
                  **predictor_fields: Any) -> dict[str, Any]:
    """An InferenceService as `kubectl apply -k` would have left it (the base manifest), serving ``uri``."""
    from pipelines.deploy import creation_body, default_manifest

    obj = creation_body(default_manifest(), uri, "rakuten", NAMESPACE, image=IMAGE)
    obj["metadata"].setdefault("annotations", {}).update(annotations or {})
    obj["spec"]["predictor"].update(predictor_fields)
    if ready:
        obj["status"] = {"observedGeneration": 1, "url": f"http://rakuten.{NAMESPACE}.example.com",
                         "conditions": [{"type": "Ready", "status": "True"}]}
    return copy.deepcopy(obj)


def changed_paths(before: Any, after: Any, prefix: str = "") -> set[str]:
    """JSON pointers of every leaf that was added, removed or changed."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: set[str] = set()
        for key in before.keys() | after.keys():
            token = str(key).replace("~", "~0").replace("/", "~1")
            if key not in before or key not in after:
                out.add(f"{prefix}/{token}")
            else:
                out |= changed_paths(before[key], after[key], f"{prefix}/{token}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after, strict=True))
        return set().union(*(changed_paths(b, a, f"{prefix}/{i}") for i, (b, a) in pairs))
    return set() if before == after else {prefix}


def content_changes(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """What a deploy changed, leaving out what the API server and controller maintain."""
    volatile = ("/metadata/resourceVersion", "/metadata/generation", "/status")
    return {p for p in changed_paths(before, after) if not p.startswith(volatile)}


def load_manifest_tools() -> Any:
    path = REPO_ROOT / "tests" / "platform" / "manifest_tools.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("rakuten_platform_manifest_tools", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


