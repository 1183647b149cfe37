"""Constants and helpers shared by tests/deploy (the objects, diffs)."""

from __future__ import annotations

import copy
from typing import Any

NAMESPACE = "ml-team"
IMAGE = "registry.test/rakuten/rakuten-serving:1.2.3"
OLD_URI = "s3://models/rakuten/runs/1/bundle"
NEW_URI = "s3://models/rakuten/runs/2/bundle"


def existing_isvc(uri: str = OLD_URI, *, annotations: dict[str, str] | None = None, ready: bool = True,
                  **predictor_fields: Any) -> dict[str, Any]:
    """An InferenceService as `kubectl apply -k` would have left it (the base manifest), serving ``uri``."""
    from rollout.defaults import default_manifest
    from rollout.spec import creation_body

    obj = creation_body(default_manifest(), uri, "rakuten", NAMESPACE, image=IMAGE)
    obj["metadata"].setdefault("annotations", {}).update(annotations or {})
    obj["spec"]["predictor"].update(predictor_fields)
    if ready:
        obj["status"] = {"observedGeneration": 1, "url": f"http://rakuten.{NAMESPACE}.example.com",
                         "conditions": [{"type": "Ready", "status": "True"}]}
    return copy.deepcopy(obj)


def with_transformer_uri(isvc: dict[str, Any], uri: str) -> dict[str, Any]:
    """``isvc`` as an older manifest had it: the transformer's kserve-container names the bundle too."""
    isvc = copy.deepcopy(isvc)
    (container,) = [c for c in isvc["spec"]["transformer"]["containers"] if c["name"] == "kserve-container"]
    container["env"] = [{"name": "STORAGE_URI", "value": uri}, *container.get("env", [])]
    return isvc


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
