"""A fake Kubernetes API server that knows one resource: KServe InferenceServices. Standard library only.

    python tests/support/fake_kube_api.py [--port 0]     # prints "listening on http://127.0.0.1:PORT"

Tests start it with :func:`running` and drive it with :class:`FakeKube`. It serves what ``rollout`` calls,
the way the real API server answers them:
  GET   /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}   200 | 404 Status
  POST  /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices          201 | 409 AlreadyExists
  PATCH /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}   application/merge-patch+json
        (RFC 7386) only, else 415; a ``metadata.resourceVersion`` in the patch is a precondition (409 if stale);
        ``metadata.generation`` goes up when the spec changes, ``resourceVersion`` on every write.
Any other path answers 404 "404 page not found" (what an API server without the CRD answers).

Readiness, as a controller would report it: after a write the status stays what it was (a patched object
keeps its old Ready=True and old ``observedGeneration``) until ``ready_after_gets`` GETs of the object have
happened; then ``observedGeneration`` = ``generation``, ``Ready=True`` and ``status.url`` are set.
``ready_after_gets: null`` never gets there.

Control endpoints (not recorded):
  POST /_fake/reset      {"ready_after_gets": N|null, "fail": {"PATCH": 403, ...}, "objects": [isvc, ...],
                          "status": {...} (extra status fields for every object, e.g. deploymentMode),
                          "concurrent_write_before_patches": K, "crd_installed": false}
                         clear everything and configure
  GET  /_fake/requests   every request so far: {method, path, query, content_type, body}
  GET  /_fake/objects    the stored objects
  POST /_fake/stop       shut down
``concurrent_write_before_patches: K`` simulates another writer: just before each of the next K PATCHes, a
label ``fake/concurrent-writes`` is changed on the object (a new resourceVersion), as if someone else had.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
PATH_RE = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
FORBIDDEN_USER = "system:serviceaccount:kubeflow-user:default-editor"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, written independently of ``rollout.spec.merge_patch`` (the fake must not share the code it
    checks)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset({})

    def reset(self, config: dict[str, Any]) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.gets_since_write: dict[tuple[str, str], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.ready_after_gets = config.get("ready_after_gets", 1)
        self.fail: dict[str, int] = {k.upper(): int(v) for k, v in (config.get("fail") or {}).items()}
        self.extra_status: dict[str, Any] = config.get("status") or {}
        self.concurrent_writes_left = int(config.get("concurrent_write_before_patches", 0))
        self.crd_installed = bool(config.get("crd_installed", True))
        self.resource_version = 100
        self.uid = 0
        for obj in config.get("objects") or []:
            self.store(copy.deepcopy(obj), fresh=True)

    def next_rv(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def store(self, obj: dict[str, Any], fresh: bool) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        key = (meta.setdefault("namespace", "default"), meta["name"])
        if fresh:
            self.uid += 1
            meta.update(uid=f"00000000-0000-0000-0000-{self.uid:012d}", generation=meta.get("generation", 1),
                        creationTimestamp="2026-01-01T00:00:00Z")
            obj.setdefault("status", {})
        meta["resourceVersion"] = self.next_rv()
        self.objects[key] = obj
        self.gets_since_write[key] = 0
        return obj

    def observe(self, key: tuple[str, str]) -> dict[str, Any]:
        """A GET: maybe the controller has caught up by now."""
        obj = self.objects[key]
        self.gets_since_write[key] += 1
        if self.ready_after_gets is not None and self.gets_since_write[key] >= self.ready_after_gets:
            name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
            obj["status"] = {
                **self.extra_status,
                "observedGeneration": obj["metadata"]["generation"],
                "url": f"http://{name}.{ns}.example.com",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                    for t in ("IngressReady", "PredictorReady", "Ready", "TransformerReady")
                ],
            }
        elif self.extra_status:
            obj["status"] = {**obj.get("status", {}), **self.extra_status}
        if not obj["status"].get("conditions"):
            obj["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "RevisionMissing",
                                            "message": "Configuration has not yet been reconciled"}]
        return obj


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


class Handler(BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    # -------------------------------------------------------------- plumbing

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> tuple[bytes, Any]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            return raw, json.loads(raw) if raw else None
        except ValueError:
            return raw, None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        raw, body = self._body()
        state = self.server.state
        if url.path.startswith("/_fake/"):
            return self._control(method, url.path, body)
        with state.lock:
            state.requests.append({"method": method, "path": url.path, "query": url.query,
                                   "content_type": self.headers.get("Content-Type"),
                                   "body": body if body is not None else (raw.decode("utf-8", "replace") or None)})
            match = PATH_RE.match(url.path)
            if not match or not state.crd_installed:
                return self._send(404, "404 page not found\n", "text/plain; charset=utf-8")
            namespace, name = match.groups()
            if method in state.fail:
                return self._fail(state.fail[method], method, namespace, name)
            if method == "GET" and name:
                return self._get(namespace, name)
            if method == "POST" and not name:
                return self._create(namespace, body)
            if method == "PATCH" and name:
                return self._patch(namespace, name, body)
            return self._send(405, status_body(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _fail(self, code: int, method: str, namespace: str, name: str | None) -> None:
        verb = {"GET": "get", "POST": "create", "PATCH": "patch"}.get(method, method.lower())
        if code == 403:
            message = (f'inferenceservices.serving.kserve.io "{name or ""}" is forbidden: User "{FORBIDDEN_USER}" '
                       f'cannot {verb} resource "inferenceservices" in API group "serving.kserve.io" in the '
                       f'namespace "{namespace}"')
            return self._send(403, status_body(403, "Forbidden", message))
        return self._send(code, status_body(code, "InternalError", f"injected failure {code} on {verb}"))

    # -------------------------------------------------------------- the resource

    def _not_found(self, name: str) -> None:
        self._send(404, status_body(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found',
                                    {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}))

    def _get(self, namespace: str, name: str) -> None:
        state = self.server.state
        if (namespace, name) not in state.objects:
            return self._not_found(name)
        return self._send(200, state.observe((namespace, name)))

    def _create(self, namespace: str, body: Any) -> None:
        state = self.server.state
        if not isinstance(body, dict) or body.get("kind") != "InferenceService" \
                or body.get("apiVersion") != "serving.kserve.io/v1beta1" or not body.get("metadata", {}).get("name"):
            return self._send(400, status_body(400, "BadRequest", "not an InferenceService with a name"))
        meta = body["metadata"]
        if meta.get("namespace", namespace) != namespace:
            return self._send(400, status_body(400, "BadRequest", "the namespace of the provided object does not "
                                                                  "match the namespace sent on the request"))
        if (namespace, meta["name"]) in state.objects:
            return self._send(409, status_body(409, "AlreadyExists",
                                               f'inferenceservices.serving.kserve.io "{meta["name"]}" already exists'))
        meta["namespace"] = namespace
        obj = state.store(copy.deepcopy(body), fresh=True)
        return self._send(201, obj)

    def _patch(self, namespace: str, name: str, body: Any) -> None:
        state = self.server.state
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/merge-patch+json":
            return self._send(415, status_body(415, "UnsupportedMediaType",
                                               f"the body of the request was in an unknown format - this fake "
                                               f"accepts application/merge-patch+json, got {content_type}"))
        key = (namespace, name)
        if key not in state.objects:
            return self._not_found(name)
        if state.concurrent_writes_left > 0:  # someone else writes first
            state.concurrent_writes_left -= 1
            other = state.objects[key]
            labels = other["metadata"].setdefault("labels", {})
            labels["fake/concurrent-writes"] = str(int(labels.get("fake/concurrent-writes", "0")) + 1)
            state.store(other, fresh=False)
        if not isinstance(body, dict):
            return self._send(400, status_body(400, "BadRequest", "the patch is not a JSON object"))
        current = state.objects[key]
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            return self._send(409, status_body(
                409, "Conflict", f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{name}": '
                                 "the object has been modified; please apply your changes to the latest version "
                                 "and try again"))
        patched = merge_patch(current, body)
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            patched["metadata"][field] = current["metadata"][field]
        patched["status"] = current.get("status", {})  # the status subresource is not patched through here
        if patched.get("spec") != current.get("spec"):
            patched["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if patched == current:
            return self._send(200, current)  # a no-op patch writes nothing
        return self._send(200, state.store(patched, fresh=False))

    # -------------------------------------------------------------- control

    def _control(self, method: str, path: str, body: Any) -> None:
        state = self.server.state
        with state.lock:
            if method == "POST" and path == "/_fake/reset":
                state.reset(body or {})
                return self._send(200, {"ok": True})
            if method == "GET" and path == "/_fake/requests":
                return self._send(200, state.requests)
            if method == "GET" and path == "/_fake/objects":
                return self._send(200, list(state.objects.values()))
        if method == "POST" and path == "/_fake/stop":
            self._send(200, {"ok": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return None
        return self._send(404, {"error": f"unknown control endpoint {method} {path}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = State()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    args = parser.parse_args(argv)
    server = FakeServer(args.port)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


# ---------------------------------------------------------------- the test side


class FakeKube:
    """Talks to a running fake's control endpoints; ``client()`` is an ApiClient for the code under test."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self, **config: Any) -> None:
        """Clear everything and configure (the keys of ``POST /_fake/reset`` above)."""
        self._control("POST", "/_fake/reset", config)

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self._control("GET", "/_fake/requests") if method is None or r["method"] == method]

    def object(self, name: str = "rakuten", namespace: str | None = None) -> dict[str, Any]:
        """The stored InferenceService ``name`` (in ``namespace``; None: the one namespace that has it)."""
        found = [o for o in self._control("GET", "/_fake/objects")
                 if o["metadata"]["name"] == name and namespace in (None, o["metadata"]["namespace"])]
        assert len(found) == 1, f"expected one InferenceService {namespace or '*'}/{name}, found {len(found)}"
        return found[0]

    def client(self) -> Any:
        from rollout.session import kube_api_client

        return kube_api_client(host=self.url)


@contextlib.contextmanager
def running() -> Iterator[FakeKube]:
    """The fake as a real subprocess on a free 127.0.0.1 port, stopped on exit."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            raise RuntimeError(f"the fake API server did not start: {line!r} "
                               f"{proc.stderr.read() if proc.stderr else ''}")
        yield FakeKube(line.split()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
