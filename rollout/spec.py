"""The InferenceService as data: constants, argument checks, and the pure transforms deploy and rollback write.

Nothing here talks to a cluster or reads a file; every function returns a new object and leaves its inputs as
they were. See the package docstring for where the bundle URI lives and why the patch looks the way it does.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

from rakuten_mm.errors import ConfigError
from rollout.errors import DeployError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"
PREVIOUS_URI_ANNOTATION = "rakuten.io/previous-storage-uri"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STORAGE_URI_ENV = "STORAGE_URI"
KSERVE_CONTAINER = "kserve-container"
# Components whose bundle URI is patched when they name one. The predictor must; the transformer needs no
# bundle, but an object created before it stopped needing one still carries a STORAGE_URI there.
URI_COMPONENTS = ("predictor", "transformer")
# Schemes KServe's storage initializer can download a model *directory* from.
ALLOWED_URI_SCHEMES = ("s3", "gs", "pvc", "hdfs", "webhdfs", "oci")
STANDARD_MODES = frozenset({"Standard", "RawDeployment"})
# Images that are only placeholders: the base manifest's name for kustomize's `images:` entry, and its example
# registry. Creating a service with them would wait for an image that cannot be pulled.
PLACEHOLDER_IMAGE_NAMES = frozenset({"rakuten-serving"})
PLACEHOLDER_REGISTRIES = ("registry.example.com/",)
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe: a DNS-1035 label
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1123 label


# ---------------------------------------------------------------- argument checks (ConfigError, no request)


def check_arguments(name: Any, namespace: Any, timeout_s: Any, poll_s: Any, *, bundle_uri: Any = None,
                    canary_percent: Any = 0) -> None:
    """Raise ``ConfigError`` naming the allowed values for the first bad argument (no request is made)."""
    if bundle_uri is not None:
        check_bundle_uri(bundle_uri)
    _check_target(name, namespace)
    _check_canary(canary_percent)
    _check_wait(timeout_s, poll_s)


def check_bundle_uri(uri: Any, what: str = "bundle_uri") -> None:
    allowed = ", ".join(f"{s}://" for s in ALLOWED_URI_SCHEMES)
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"{what} must be a URI the cluster can read ({allowed}), got {uri!r}")
    parts = urlsplit(uri)
    if parts.scheme not in ALLOWED_URI_SCHEMES:
        hint = " (a local path cannot be read by the cluster: upload the bundle, e.g. `rakuten train --out s3://...`)"
        raise ConfigError(f"{what} must start with one of {allowed}, got {uri!r}"
                          f"{hint if not parts.scheme or len(parts.scheme) == 1 else ''}")
    if not parts.netloc or any(c.isspace() for c in uri) or "REPLACE_ME" in uri:
        raise ConfigError(f"{what} must name a bucket/claim and a path, like s3://BUCKET/PREFIX/bundle, got {uri!r}")


def check_image(image: Any) -> None:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ConfigError(f"image must be an image reference such as REGISTRY/rakuten-serving:TAG, got {image!r}")


def check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("kind") != "InferenceService" \
            or manifest.get("apiVersion") != f"{GROUP}/{VERSION}" or not isinstance(manifest.get("spec"), dict):
        got = f"kind {manifest.get('kind')!r}, apiVersion {manifest.get('apiVersion')!r}" \
            if isinstance(manifest, dict) else type(manifest).__name__
        raise ConfigError(f"manifest must be an InferenceService of apiVersion {GROUP}/{VERSION} with a spec, "
                          f"got {got}")


def _check_target(name: Any, namespace: Any) -> None:
    if not isinstance(name, str) or len(name) > 63 or not NAME_RE.match(name):
        raise ConfigError("name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter,"
                          f" ending with a letter or digit, at most 63 characters), got {name!r}")
    if not isinstance(namespace, str) or len(namespace) > 63 or not NAMESPACE_RE.match(namespace):
        raise ConfigError("namespace must be a DNS-1123 label (lower-case letters, digits and '-', starting and "
                          f"ending with a letter or digit, at most 63 characters), got {namespace!r}")


def _check_canary(canary_percent: Any) -> None:
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 0 <= canary_percent <= 100:
        raise ConfigError("canary_percent must be an integer from 0 to 100 (0 or 100 = full rollout, 1..99 = the "
                          f"share of traffic for the new bundle), got {canary_percent!r}")


def _check_wait(timeout_s: Any, poll_s: Any) -> None:
    for label, value in (("timeout_s", timeout_s), ("poll_s", poll_s)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{label} must be a number of seconds > 0, got {value!r}")


# ---------------------------------------------------------------- reading an object


def pick_inferenceservice(docs: list[Any], source: str) -> dict:
    """The one InferenceService among parsed YAML documents (e.g. a rendered kustomization)."""
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "InferenceService"]
    if len(found) != 1:
        raise ConfigError(f"{source} must hold exactly one InferenceService, found {len(found)}")
    check_manifest(found[0])
    return found[0]


def storage_uri(isvc: dict) -> str | None:
    """The bundle URI the predictor of an InferenceService serves (None if it names none)."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return _component_uri(predictor)


def annotations_of(obj: dict) -> dict[str, str]:
    return ((obj.get("metadata") or {}).get("annotations")) or {}


def generation(obj: dict) -> int | None:
    value = (obj.get("metadata") or {}).get("generation")
    return int(value) if value is not None else None


# ---------------------------------------------------------------- what deploy and rollback write


def creation_body(manifest: dict, bundle_uri: str, name: str, namespace: str, *, image: str | None = None) -> dict:
    """``manifest`` made into the object to POST: name, namespace, bundle URI (and image) set."""
    body = copy.deepcopy(manifest)
    meta = body.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    for key in ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields"):
        meta.pop(key, None)
    body.pop("status", None)
    spec = body.get("spec") or {}
    if _uri_patch(spec.get("predictor") or {}, bundle_uri) is None:
        raise ConfigError(
            "the manifest's predictor names no bundle: expected the env var STORAGE_URI of the container "
            f"{KSERVE_CONTAINER!r} (spec.predictor.containers[].env[]) or spec.predictor.model.storageUri"
        )
    for component in URI_COMPONENTS:
        component_spec = spec.get(component)
        if component_spec and (patch := _uri_patch(component_spec, bundle_uri)) is not None:
            spec[component] = merge_patch(component_spec, patch)
    for component_spec in (spec.get(c) for c in ("predictor", "transformer", "explainer")):
        for container in (component_spec or {}).get("containers") or []:
            if image is not None and container.get("name") == KSERVE_CONTAINER:
                container["image"] = image
            if _is_placeholder_image(str(container.get("image", ""))):
                raise ConfigError(
                    f"the InferenceService would run the placeholder image {container.get('image')!r}: give the "
                    "serving image you pushed (`rakuten deploy --image REGISTRY/rakuten-serving:TAG`, "
                    "deploy(image=...)) or a manifest rendered with your image"
                )
    return body


def rollout_patch(current: dict, bundle_uri: str, canary_percent: int) -> tuple[dict, str | None]:
    """The merge patch that points ``current`` at ``bundle_uri`` with the canary split, and the URI that a
    rollback would then restore (the replaced one, or the annotation's when the bundle does not change).

    Only components that name a bundle are patched (and get the canary split): the predictor, and a
    transformer only if it still carries a ``STORAGE_URI``.
    """
    spec = current.get("spec") or {}
    meta = current.get("metadata") or {}
    name, namespace = meta.get("name", "?"), meta.get("namespace", "?")
    old_uri = storage_uri(current)
    if old_uri is None:
        raise DeployError(
            f"InferenceService {namespace}/{name} names no bundle rakuten deploy can replace: expected the env "
            f"var STORAGE_URI of container {KSERVE_CONTAINER!r} in spec.predictor, or spec.predictor.model."
            "storageUri (see manifests/README.md)"
        )
    split = 0 < canary_percent < 100
    mode = annotations_of(current).get(DEPLOYMENT_MODE_ANNOTATION) or (current.get("status") or {}).get(
        "deploymentMode")
    if split and mode in STANDARD_MODES:
        raise ConfigError(
            f"canary_percent {canary_percent} needs Knative mode (canaryTrafficPercent), but InferenceService "
            f"{namespace}/{name} runs in {mode} mode: use canary_percent 0 (full rollout), or switch it to "
            f"Knative ({DEPLOYMENT_MODE_ANNOTATION}: Knative), or add a spec.canary entry yourself (KServe >= 0.20)"
        )
    spec_patch: dict[str, Any] = {}
    for component in URI_COMPONENTS:
        component_spec = spec.get(component)
        if not component_spec:
            continue
        patch = _uri_patch(component_spec, bundle_uri)
        if patch is None:
            continue
        if split:
            patch["canaryTrafficPercent"] = canary_percent
        elif "canaryTrafficPercent" in component_spec:
            patch["canaryTrafficPercent"] = None  # merge patch: remove -> full rollout
        spec_patch[component] = patch
    meta_patch: dict[str, Any] = {"resourceVersion": meta.get("resourceVersion")}
    previous = annotations_of(current).get(PREVIOUS_URI_ANNOTATION)
    if old_uri != bundle_uri:
        meta_patch["annotations"] = {PREVIOUS_URI_ANNOTATION: old_uri}
        previous = old_uri
    if meta_patch["resourceVersion"] is None:
        del meta_patch["resourceVersion"]
    return {"metadata": meta_patch, "spec": spec_patch}, previous


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` (not modified) by ``patch``: what the API server does."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# ---------------------------------------------------------------- where a component names its bundle


def _env_slot(component: dict) -> tuple[int, int] | None:
    """(container index, env index) of STORAGE_URI in the component's kserve-container (or only container)."""
    containers = component.get("containers") or []
    indices = [i for i, c in enumerate(containers) if c.get("name") == KSERVE_CONTAINER]
    if not indices and len(containers) == 1:
        indices = [0]
    for ci in indices:
        for ei, env in enumerate(containers[ci].get("env") or []):
            if env.get("name") == STORAGE_URI_ENV:
                return ci, ei
    return None


def _component_uri(component: dict) -> str | None:
    model = component.get("model")
    if isinstance(model, dict) and "storageUri" in model:
        return model["storageUri"]
    slot = _env_slot(component)
    if slot is None:
        return None
    return component["containers"][slot[0]]["env"][slot[1]].get("value")


def _uri_patch(component: dict, uri: str) -> dict[str, Any] | None:
    """The merge patch of one component that sets its bundle URI (None if it names no bundle)."""
    model = component.get("model")
    if isinstance(model, dict) and "storageUri" in model:
        return {"model": {"storageUri": uri}}
    slot = _env_slot(component)
    if slot is None:
        return None
    containers = copy.deepcopy(component["containers"])  # a merge patch replaces lists whole
    containers[slot[0]]["env"][slot[1]] = {"name": STORAGE_URI_ENV, "value": uri}
    return {"containers": containers}


def _is_placeholder_image(image: str) -> bool:
    return image in PLACEHOLDER_IMAGE_NAMES or image.startswith(PLACEHOLDER_REGISTRIES) or "REPLACE_ME" in image
