"""The Kubernetes side: an ``ApiClient`` from the usual places, and the few calls on one InferenceService.

Every API error becomes a ``DeployError`` whose message says what to do (credentials, RBAC, KServe missing);
the ``kubernetes`` package is imported only when a call is made.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from rakuten_mm.errors import ConfigError
from rollout.errors import DeployError, DeployTimeout
from rollout.spec import GROUP, PLURAL, RESOURCE, VERSION

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30
CONFLICT_ATTEMPTS = 4


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


class Session:
    """The few calls on one InferenceService, with the API's errors turned into messages a user can act on.

    A context manager; it closes the ``ApiClient`` only if it made it (``api_client=None``).
    """

    def __init__(self, api_client: Any | None, name: str, namespace: str) -> None:
        self._owned = api_client is None
        self.api_client = kube_api_client() if api_client is None else api_client
        self.name, self.namespace = name, namespace

    def __enter__(self) -> Session:
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
