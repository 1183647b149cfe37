"""Put a model bundle behind the live KServe InferenceService, and take it back out.

``deploy`` creates the InferenceService when it is absent, or patches it to serve a new bundle;
``rollback`` restores the bundle it served before. Both wait until the service reports Ready and return
its URL. The pipeline's deploy component and ``rakuten deploy`` / ``rakuten rollback`` call these.

Where the bundle URI lives (the same pointers as ``manifests/README.md``)
    The CRD has no predictor-level ``storageUri`` for custom containers, so the project's manifest names
    the bundle with the ``STORAGE_URI`` env var of the container named ``kserve-container``, in the
    predictor *and* the transformer (the transformer needs the bundle's vocabulary and presets):
    ``spec.predictor.containers[name=kserve-container].env[name=STORAGE_URI].value`` and the same under
    ``spec.transformer``. The env var is found by name, not index. A predictor that uses a model format
    instead (``spec.predictor.model.storageUri``) is supported too.

How it is patched
    One JSON merge patch (``application/merge-patch+json``, what ``CustomObjectsApi`` sends). A merge patch
    replaces lists whole, so the patch carries each component's ``containers`` list as read, with only the
    ``STORAGE_URI`` value changed, plus ``metadata.resourceVersion`` as a precondition: if anyone changed the
    object between our GET and PATCH, the API server answers 409 and we read it again and retry, instead of
    overwriting their change. The previous URI goes into the ``rakuten.io/previous-storage-uri`` annotation;
    ``rollback`` swaps it with the current one.

Canary (``canary_percent``)
    1..99 sets ``canaryTrafficPercent`` on every component whose bundle changes: in Knative mode KServe then
    sends that share of traffic to the new revision and the rest to the last revision that was rolled out
    with 100%. 0 (or 100) is a full rollout: the field is removed, so the latest ready revision gets all
    traffic; deploying the same bundle again with 0 therefore promotes a canary. Standard (raw Deployment)
    mode has no ``canaryTrafficPercent``; it takes a separate ``spec.canary[]`` entry (KServe >= 0.20), which
    this module does not write: a canary on a Standard-mode service is refused. On creation there is
    nothing to split, so the first bundle always gets 100% (the result says ``canary_percent: 0``).

Ready
    ``status.conditions[type=Ready].status == "True"`` and, when the status has ``observedGeneration``, that
    it has caught up with the generation our write produced (so an old "Ready" is not taken for the new
    revision). Without ``observedGeneration`` a status from before the write cannot be told apart.

RBAC
    ``get`` / ``create`` / ``patch`` on ``inferenceservices.serving.kserve.io`` in the namespace
    (``manifests/base/rbac.yaml`` grants them to the ``rakuten-pipeline`` service account).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rakuten_mm.errors import ConfigError, RakutenError

logger = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"
PREVIOUS_URI_ANNOTATION = "rakuten.io/previous-storage-uri"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STORAGE_URI_ENV = "STORAGE_URI"
KSERVE_CONTAINER = "kserve-container"
URI_COMPONENTS = ("predictor", "transformer")
# Schemes KServe's storage initializer can download a model *directory* from.
ALLOWED_URI_SCHEMES = ("s3", "gs", "pvc", "hdfs", "webhdfs", "oci")
STANDARD_MODES = frozenset({"Standard", "RawDeployment"})
# Images that are only placeholders: the base manifest's name for kustomize's `images:` entry, and its example
# registry. Creating a service with them would wait for an image that cannot be pulled.
PLACEHOLDER_IMAGE_NAMES = frozenset({"rakuten-serving"})
PLACEHOLDER_REGISTRIES = ("registry.example.com/",)
REQUEST_TIMEOUT_S = 30
CONFLICT_ATTEMPTS = 4
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe: a DNS-1035 label
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1123 label
BASE_MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "base" / "inferenceservice.yaml"


class DeployError(RakutenError):
    """The Kubernetes API refused or failed a deploy/rollback step; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeployTimeout(DeployError, TimeoutError):
    """The InferenceService did not become Ready in time; ``conditions`` are the last ones seen."""

    def __init__(self, message: str, conditions: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.conditions = conditions


# ---------------------------------------------------------------- public API


def deploy(
    bundle_uri: str,
    name: str = "rakuten",
    namespace: str = "rakuten",
    canary_percent: int = 0,
    timeout_s: int = 600,
    poll_s: float = 5.0,
    api_client: Any | None = None,
    manifest: dict | None = None,
    *,
    image: str | None = None,
) -> dict:
    """Serve ``bundle_uri`` from InferenceService ``namespace/name``; wait for Ready; describe what happened.

    Creates the service from ``manifest`` (default: :func:`default_manifest`) when it is absent, with
    ``image`` (if given) as the image of its ``kserve-container``s; otherwise patches its bundle URI and
    canary split (``image`` and ``manifest`` are then not used). Returns ``{"action": "created"|"patched",
    "url", "previous_storage_uri", "storage_uri", "canary_percent"}``, where ``previous_storage_uri`` is what
    :func:`rollback` would restore. Raises ``ConfigError`` for bad arguments (before any request),
    ``DeployError`` when the API refuses, ``DeployTimeout`` when the service is not Ready in ``timeout_s``.
    """
    if isinstance(canary_percent, float) and canary_percent in range(101):
        canary_percent = int(canary_percent)  # KFP can hand numeric parameters over as floats
    _check_bundle_uri(bundle_uri)
    check_arguments(name, namespace, timeout_s, poll_s, canary_percent=canary_percent)
    if manifest is not None:
        _check_manifest(manifest)
    if image is not None and (not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image)):
        raise ConfigError(f"image must be an image reference such as REGISTRY/rakuten-serving:TAG, got {image!r}")

    with _Session(api_client, name, namespace) as isvcs:
        for _ in range(CONFLICT_ATTEMPTS):
            current = isvcs.get()
            if current is None:
                body = creation_body(manifest if manifest is not None else default_manifest(), bundle_uri, name,
                                     namespace, image=image)
                action, previous, effective_canary = "created", None, 0  # a first revision gets all traffic
                written = isvcs.create(body)  # None: someone created it since our GET -> patch theirs
            else:
                if image is not None or manifest is not None:
                    logger.warning("%s/%s exists: only its bundle and canary split change (image and manifest "
                                   "are used when creating it)", namespace, name)
                patch, previous = rollout_patch(current, bundle_uri, canary_percent)
                action, effective_canary = "patched", canary_percent if 0 < canary_percent < 100 else 0
                written = isvcs.patch(patch)  # None: it changed since our GET -> read it again
            if written is not None:
                break
        else:
            raise isvcs.conflict_error()
        logger.info("%s InferenceService %s/%s: %s, canary %s%%", action, namespace, name, bundle_uri,
                    effective_canary or 100)
        url = isvcs.wait_ready(_generation(written), timeout_s, poll_s)
    return {"action": action, "url": url, "previous_storage_uri": previous, "storage_uri": bundle_uri,
            "canary_percent": effective_canary}


def rollback(
    name: str = "rakuten",
    namespace: str = "rakuten",
    timeout_s: int = 600,
    poll_s: float = 5.0,
    api_client: Any | None = None,
) -> dict:
    """Serve the bundle named by the ``rakuten.io/previous-storage-uri`` annotation again (full rollout).

    The current URI becomes the annotation, so a second rollback undoes the first. Returns the same keys
    as :func:`deploy`, with ``action: "rolled_back"``.
    """
    check_arguments(name, namespace, timeout_s, poll_s)
    with _Session(api_client, name, namespace) as isvcs:
        for _ in range(CONFLICT_ATTEMPTS):
            current = isvcs.get()
            if current is None:
                raise DeployError(f"there is no InferenceService {namespace}/{name} to roll back", status=404)
            previous = _annotations(current).get(PREVIOUS_URI_ANNOTATION)
            if not previous:
                raise DeployError(
                    f"nothing to roll back to: InferenceService {namespace}/{name} has no {PREVIOUS_URI_ANNOTATION}"
                    " annotation (`rakuten deploy` sets it when it replaces a bundle)"
                )
            _check_bundle_uri(previous, what=f"the {PREVIOUS_URI_ANNOTATION} annotation")
            patch, replaced = rollout_patch(current, previous, 0)
            patched = isvcs.patch(patch)
            if patched is not None:
                break
        else:
            raise isvcs.conflict_error()
        logger.info("rolled InferenceService %s/%s back to %s", namespace, name, previous)
        url = isvcs.wait_ready(_generation(patched), timeout_s, poll_s)
    return {"action": "rolled_back", "url": url, "previous_storage_uri": replaced, "storage_uri": previous,
            "canary_percent": 0}


def check_arguments(name: Any, namespace: Any, timeout_s: Any, poll_s: Any, *, bundle_uri: Any = None,
                    canary_percent: Any = 0) -> None:
    """Raise ``ConfigError`` naming the allowed values for the first bad argument (no request is made)."""
    if bundle_uri is not None:
        _check_bundle_uri(bundle_uri)
    _check_target(name, namespace)
    _check_canary(canary_percent)
    _check_wait(timeout_s, poll_s)


def kube_api_client(context: str | None = None, host: str | None = None) -> Any:
    """An ``ApiClient``: ``host`` (no auth; tests and proxies such as ``kubectl proxy``), else the in-cluster
    service account, else the kubeconfig (``KUBECONFIG`` / ``~/.kube/config``, ``context`` if given)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if host is not None:
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"the Kubernetes API URL must be http(s)://HOST[:PORT], got {host!r}")
        configuration.host = host.rstrip("/")
        return client.ApiClient(configuration)
    if context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass  # not in a pod: use the kubeconfig
    try:
        config.load_kube_config(context=context, client_configuration=configuration, persist_config=False)
    except (config.ConfigException, OSError) as exc:
        where = f"context {context!r} of the kubeconfig" if context else "a kubeconfig"
        raise ConfigError(
            f"no Kubernetes credentials: not running in a cluster and {where} could not be loaded ({exc}); "
            "set KUBECONFIG, pass --context, or point --kube-api at an API server"
        ) from exc
    return client.ApiClient(configuration)


def default_manifest() -> dict:
    """The InferenceService of ``manifests/base/inferenceservice.yaml`` when the repository is at hand (an
    editable install), else the same object built in (:func:`builtin_manifest`; a test keeps them equal).

    Its image is the ``rakuten-serving`` placeholder that kustomize replaces: creating from it needs an image
    (``deploy(..., image=...)``, ``rakuten deploy --image``). For an overlay's settings pass its rendered
    output instead (``kubectl kustomize manifests/overlays/gpu``, ``rakuten deploy --manifest FILE``).
    """
    if BASE_MANIFEST.is_file():
        import yaml

        docs = [d for d in yaml.safe_load_all(BASE_MANIFEST.read_text(encoding="utf-8")) if d]
        return pick_inferenceservice(docs, str(BASE_MANIFEST))
    return builtin_manifest()


def pick_inferenceservice(docs: list[Any], source: str) -> dict:
    """The one InferenceService among parsed YAML documents (e.g. a rendered kustomization)."""
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "InferenceService"]
    if len(found) != 1:
        raise ConfigError(f"{source} must hold exactly one InferenceService, found {len(found)}")
    _check_manifest(found[0])
    return found[0]


def storage_uri(isvc: dict) -> str | None:
    """The bundle URI the predictor of an InferenceService serves (None if it names none)."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return _component_uri(predictor)


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
    rollback would then restore (the replaced one, or the annotation's when the bundle does not change)."""
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
    mode = _annotations(current).get(DEPLOYMENT_MODE_ANNOTATION) or (current.get("status") or {}).get(
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
    previous = _annotations(current).get(PREVIOUS_URI_ANNOTATION)
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


def builtin_manifest() -> dict:
    """``manifests/base/inferenceservice.yaml`` as a dict, for installs without the repository (the pipeline
    image). tests/deploy checks that the two are the same object apart from the checkov annotations."""

    def server(args: list[str], requests: tuple[str, str], limits: tuple[str, str], liveness_delay: int,
               storage_uri_value: str) -> dict[str, Any]:
        return {
            "name": KSERVE_CONTAINER,
            "image": "rakuten-serving",
            "imagePullPolicy": "Always",
            "args": args,
            "env": [{"name": STORAGE_URI_ENV, "value": storage_uri_value}, {"name": "PROTOCOL", "value": "v2"},
                    {"name": "HOME", "value": "/tmp"}],
            "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": requests[0], "memory": requests[1]},
                          "limits": {"cpu": limits[0], "memory": limits[1]}},
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 10,
                               "timeoutSeconds": 5, "failureThreshold": 3},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": 8080},
                              "initialDelaySeconds": liveness_delay, "periodSeconds": 20, "timeoutSeconds": 5,
                              "failureThreshold": 6},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }

    def component(container: dict[str, Any]) -> dict[str, Any]:
        return {"serviceAccountName": "rakuten-serving", "automountServiceAccountToken": False, "minReplicas": 1,
                "maxReplicas": 3, "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]}

    placeholder = "s3://REPLACE_ME-bucket/rakuten/bundle"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": "rakuten", "annotations": {DEPLOYMENT_MODE_ANNOTATION: "Knative"}},
        "spec": {
            "predictor": component(server(
                ["serve", "predictor", "--model_dir", "/mnt/models", "--http_port", "8080", "--grpc_port", "8081"],
                ("1", "2Gi"), ("2", "4Gi"), 30, placeholder)),
            "transformer": component(server(
                ["serve", "transformer", "--model_name", "rakuten", "--predictor_protocol", "v2", "--model_dir",
                 "/mnt/models", "--http_port", "8080"],
                ("500m", "1Gi"), ("1", "2Gi"), 15, placeholder)),
        },
    }


# ---------------------------------------------------------------- the API calls


class _Session:
    """The few calls on one InferenceService, with the API's errors turned into messages a user can act on."""

    def __init__(self, api_client: Any | None, name: str, namespace: str) -> None:
        self._owned = api_client is None
        self.api_client = kube_api_client() if api_client is None else api_client
        self.name, self.namespace = name, namespace

    def __enter__(self) -> _Session:
        from kubernetes import client

        self.api = client.CustomObjectsApi(self.api_client)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            self.api_client.close()

    @property
    def label(self) -> str:
        return f"InferenceService {self.namespace}/{self.name}"

    def get(self) -> dict | None:
        try:
            return self._call("get", self.api.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                              self.name)
        except DeployError as exc:
            if exc.status == 404 and "page not found" not in str(exc):
                return None
            raise

    def create(self, body: dict) -> dict | None:
        """The created object, or None if it already exists (409)."""
        try:
            return self._call("create", self.api.create_namespaced_custom_object, GROUP, VERSION, self.namespace,
                              PLURAL, body)
        except DeployError as exc:
            if exc.status == 409:
                return None
            raise

    def patch(self, body: dict) -> dict | None:
        """The patched object, or None on a conflict (409: the object changed since it was read)."""
        try:
            return self._call("patch", self.api.patch_namespaced_custom_object, GROUP, VERSION, self.namespace,
                              PLURAL, self.name, body)
        except DeployError as exc:
            if exc.status == 409:
                logger.info("%s changed while we patched it; reading it again", self.label)
                return None
            raise

    def conflict_error(self) -> DeployError:
        return DeployError(f"{self.label} kept changing while we patched it ({CONFLICT_ATTEMPTS} attempts, "
                           "HTTP 409 each time): is another deploy running? Try again when it is done", status=409)

    def wait_ready(self, generation: int | None, timeout_s: float, poll_s: float) -> str | None:
        """Poll until Ready for ``generation``; the service's URL."""
        deadline = time.monotonic() + timeout_s
        logger.info("waiting up to %g s for %s to be Ready", timeout_s, self.label)
        while True:
            obj = self.get()
            if obj is None:
                raise DeployError(f"{self.label} was deleted while we waited for it to become Ready", status=404)
            status = obj.get("status") or {}
            conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
            observed = status.get("observedGeneration")
            fresh = observed is None or generation is None or observed >= generation
            if fresh and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                return status.get("url")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "; ".join(_describe(c) for c in conditions) or "none reported"
                stale = "" if fresh else f" (its status still describes generation {observed}, not {generation})"
                raise DeployTimeout(
                    f"{self.label} was not Ready within {timeout_s:g} s{stale}; last conditions: {seen}. "
                    f"See `kubectl describe inferenceservice {self.name} -n {self.namespace}` and the pods' logs",
                    conditions,
                )
            time.sleep(min(poll_s, remaining))

    def _call(self, verb: str, fn: Any, *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            raise self._api_error(verb, exc) from None
        except (HTTPError, OSError) as exc:
            host = getattr(self.api_client.configuration, "host", "?")
            raise DeployError(f"cannot reach the Kubernetes API at {host} ({verb} {self.label}): {exc}") from None

    def _api_error(self, verb: str, exc: Any) -> DeployError:
        status = int(exc.status or 0)
        said = _api_message(exc)
        if status == 401:
            text = (f"the Kubernetes API rejected our credentials (401) on {verb} {self.label}: refresh the "
                    f"kubeconfig or token; API said: {said}")
        elif status == 403:
            text = (f"forbidden (403) to {verb} {self.label}: the service account needs get, create and patch on "
                    f"{RESOURCE} in namespace {self.namespace} (manifests/base/rbac.yaml grants them to "
                    f"rakuten-pipeline); API said: {said}")
        elif status == 404 and (verb == "create" or "page not found" in said):
            text = (f"not found (404) on {verb} {self.label}: does namespace {self.namespace} exist, and is KServe "
                    f"installed (CRD {RESOURCE}, version {VERSION})? API said: {said}")
        elif status == 422:
            text = f"the API server rejected the {verb} of {self.label} as invalid (422): {said}"
        else:
            text = f"{verb} {self.label} failed with HTTP {status} {exc.reason or ''}: {said}".replace("  ", " ")
        return DeployError(text, status=status)


# ---------------------------------------------------------------- helpers


def _api_message(exc: Any) -> str:
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:300] or str(exc.reason or "")
    return str(parsed.get("message") or body) if isinstance(parsed, dict) else body[:300]


def _describe(condition: dict[str, Any]) -> str:
    text = f"{condition.get('type')}={condition.get('status')}"
    detail = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
    return f"{text} ({detail})" if detail else text


def _annotations(obj: dict) -> dict[str, str]:
    return ((obj.get("metadata") or {}).get("annotations")) or {}


def _generation(obj: dict) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return int(generation) if generation is not None else None


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


def _check_bundle_uri(uri: Any, what: str = "bundle_uri") -> None:
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


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("kind") != "InferenceService" \
            or manifest.get("apiVersion") != f"{GROUP}/{VERSION}" or not isinstance(manifest.get("spec"), dict):
        got = f"kind {manifest.get('kind')!r}, apiVersion {manifest.get('apiVersion')!r}" \
            if isinstance(manifest, dict) else type(manifest).__name__
        raise ConfigError(f"manifest must be an InferenceService of apiVersion {GROUP}/{VERSION} with a spec, "
                          f"got {got}")
