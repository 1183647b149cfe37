"""The kustomize manifests: rendered per overlay and checked without a cluster.

(a) every InferenceService against KServe's real CRD schema, made as strict as the API server
    (unknown fields rejected); (b) every built-in kind, and a Pod per InferenceService component,
    with kubernetes-validate --strict; (c) container security and secrets hygiene; (d) what each
    overlay is for; plus the JSON pointers the deploy step patches and hadolint on the Dockerfiles.
Rendering uses the pinned kubectl of .venv-tools (scripts/lint_platform.sh installs it), or any
kustomize/kubectl on PATH.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.schemas import isvc_schema_errors
from tools import manifest_lint as mt

pytestmark = pytest.mark.platform

OVERLAYS = list(mt.KUSTOMIZATIONS)
PLACEHOLDER = "REPLACE_ME"
RUN_AS_USER = 10001  # the UID of images/*.Dockerfile
# Where the bundle URI is (a JSON pointer into the InferenceService); manifests/README.md documents it for
# `kubectl patch`. Only the predictor names the bundle: the transformer needs none.
STORAGE_URI_POINTER = "/spec/predictor/containers/0/env/0"
SECRETISH_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    try:
        mt.kustomize_command()
    except mt.ToolMissing as exc:
        pytest.skip(str(exc))
    return {name: mt.render(directory) for name, directory in mt.KUSTOMIZATIONS.items()}


def _isvcs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if mt.is_isvc(d)]


def _the_isvc(docs: list[dict[str, Any]]) -> dict[str, Any]:
    isvcs = _isvcs(docs)
    assert [i["metadata"]["name"] for i in isvcs] == ["rakuten"]
    return isvcs[0]


def _pointer(doc: Any, pointer: str) -> Any:
    node = doc
    for token in pointer.lstrip("/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _all_manifest_files() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "manifests").rglob("*") if p.suffix in {".yaml", ".yml"})


# ---------------------------------------------------------------- (a) InferenceService vs the CRD schema


@pytest.mark.parametrize("name", OVERLAYS)
def test_inferenceservice_matches_crd_schema(rendered, name):
    isvc = _the_isvc(rendered[name])
    assert isvc["apiVersion"] == mt.ISVC_API_VERSION
    assert isvc_schema_errors(isvc) == []


@pytest.mark.parametrize(
    ("pointer", "typo"),
    [
        ("/spec/predictor/minReplicas", "minReplica"),
        ("/spec/predictor/canaryTrafficPercent", "canaryTraficPercent"),
        ("/spec/transformer/containers/0/readinessProbe/httpGet/path", "paht"),
        ("/spec/predictor/containers/0/securityContext/readOnlyRootFilesystem", "readOnlyRootFileSystem"),
        ("/spec/predictor", "predicter"),
    ],
)
def test_crd_schema_rejects_a_misspelled_field(rendered, pointer, typo):
    isvc = copy.deepcopy(_the_isvc(rendered["canary"]))
    parent_pointer, _, field = pointer.rpartition("/")
    parent = _pointer(isvc, parent_pointer)
    parent[typo] = parent.pop(field)
    errors = isvc_schema_errors(isvc)
    assert any(typo in e and "Additional properties are not allowed" in e for e in errors), errors


def test_crd_schema_still_accepts_free_form_maps(rendered):
    # Strictness must not reject what the API server accepts: maps (nodeSelector, annotations,
    # resource names) and metadata stay open.
    isvc = copy.deepcopy(_the_isvc(rendered["base"]))
    isvc["metadata"].setdefault("annotations", {})["example.com/anything"] = "x"
    isvc["spec"]["predictor"]["nodeSelector"] = {"example.com/pool": "a"}
    isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]["example.com/device"] = "1"
    assert isvc_schema_errors(isvc) == []


def test_crd_schema_rejects_a_wrong_type(rendered):
    isvc = copy.deepcopy(_the_isvc(rendered["base"]))
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    assert any("minReplicas" in e for e in isvc_schema_errors(isvc))


# ---------------------------------------------------------------- (b) built-in kinds, kubernetes-validate --strict


def _k8s_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_builtin_kinds_validate_strict(rendered, name):
    docs = [d for d in rendered[name] if not mt.is_isvc(d)]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        _k8s_validate(doc)


@pytest.mark.parametrize("name", OVERLAYS)
def test_component_pod_specs_validate_strict(rendered, name):
    # The PodSpec part of each InferenceService component, as KServe will hand it to Kubernetes.
    pods = mt.isvc_pods(_the_isvc(rendered[name]))
    assert [p["metadata"]["name"] for p in pods] == ["rakuten-predictor", "rakuten-transformer"]
    for pod in pods:
        _k8s_validate(pod)


def test_standalone_secret_template_validates_strict():
    for rel in mt.STANDALONE:
        for doc in mt.load_file(rel):
            _k8s_validate(doc)


def test_kubernetes_validate_strict_rejects_a_misspelled_field(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    sa = copy.deepcopy(_find(rendered["base"], "ServiceAccount", "rakuten-serving"))
    sa["automountServiceAcountToken"] = sa.pop("automountServiceAccountToken")
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(sa)


# ---------------------------------------------------------------- (c) security


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_is_locked_down(rendered, name):
    isvc = _the_isvc(rendered[name])
    containers = mt.containers_of(isvc)
    assert {label for label, _ in containers} == {"predictor/kserve-container", "transformer/kserve-container"}
    for label, container in containers:
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, label
        assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] == RUN_AS_USER, label
        assert sc.get("allowPrivilegeEscalation") is False, label
        assert sc.get("readOnlyRootFilesystem") is True, label
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], label
        assert not sc.get("capabilities", {}).get("add"), label
        assert sc.get("privileged") in (None, False), label
        assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, label
        # read-only root: the only writable place is an emptyDir on /tmp
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, label
        component = label.split("/")[0]
        volumes = {v["name"]: v for v in isvc["spec"][component].get("volumes", [])}
        assert "emptyDir" in volumes[mounts["/tmp"]], label
        # requests and limits for cpu and memory
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})), f"{label} {kind}"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", label
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", label


@pytest.mark.parametrize("name", OVERLAYS)
def test_components_run_as_the_serving_account_without_api_token(rendered, name):
    isvc = _the_isvc(rendered[name])
    sa = _find(rendered[name], "ServiceAccount", "rakuten-serving")
    assert sa.get("automountServiceAccountToken") is False
    assert {"name": "rakuten-s3"} in sa.get("secrets", [])
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        assert spec["serviceAccountName"] == "rakuten-serving"
        assert spec.get("automountServiceAccountToken") is False
        assert "securityContext" not in spec, "Knative rejects a pod-level securityContext by default"


@pytest.mark.parametrize("name", OVERLAYS)
def test_secrets_only_by_reference(rendered, name):
    # No Secret in what `kubectl apply -k` applies (it would overwrite real credentials with
    # placeholders), and no credential-looking env var with an inline value.
    assert not [d for d in rendered[name] if d.get("kind") == "Secret"]
    for label, container in mt.containers_of(_the_isvc(rendered[name])):
        for env in container.get("env", []):
            if SECRETISH_ENV.search(env["name"]):
                assert "value" not in env and "valueFrom" in env, f"{label}: {env['name']} inline"


def test_no_secret_value_other_than_the_placeholder_is_committed():
    secrets = [
        (path, doc)
        for path in _all_manifest_files()
        for doc in mt.load_file(path)
        if isinstance(doc, dict) and doc.get("kind") == "Secret"
    ]
    assert secrets, "the S3 secret template is missing"
    for path, doc in secrets:
        where = f"{path.relative_to(REPO_ROOT)} {doc['metadata']['name']}"
        for key, value in (doc.get("stringData") or {}).items():
            assert value == PLACEHOLDER, f"{where}: stringData.{key} is not {PLACEHOLDER}"
        for key, value in (doc.get("data") or {}).items():
            assert base64.b64decode(value).decode() == PLACEHOLDER, f"{where}: data.{key} is not {PLACEHOLDER}"


def test_s3_secret_template_has_kserve_annotations():
    (secret,) = [d for d in mt.load_file("manifests/secrets/rakuten-s3.template.yaml") if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "rakuten-s3"
    annotations = secret["metadata"]["annotations"]
    for key in ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps", "serving.kserve.io/s3-region"):
        assert key in annotations
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_pipeline_rbac_is_limited_to_inferenceservices(rendered, name):
    docs = rendered[name]
    _find(docs, "ServiceAccount", "rakuten-pipeline")
    role = _find(docs, "Role", "rakuten-pipeline-deployer")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        }
    ]
    binding = _find(docs, "RoleBinding", "rakuten-pipeline-deployer")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rakuten-pipeline", "namespace": role["metadata"]["namespace"]}
    ]
    assert not [d for d in docs if d.get("kind") in {"ClusterRole", "ClusterRoleBinding"}]


# ---------------------------------------------------------------- serving contract shared by all overlays


@pytest.mark.parametrize("name", OVERLAYS)
def test_serving_contract(rendered, name):
    isvc = _the_isvc(rendered[name])
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    env = _pointer(isvc, STORAGE_URI_POINTER)
    assert env["name"] == "STORAGE_URI" and env["value"].startswith("s3://"), env
    for component in ("predictor", "transformer"):
        container = isvc["spec"][component]["containers"][0]
        assert container["name"] == "kserve-container"  # where KServe reads STORAGE_URI from
        assert container["image"] == isvc["spec"]["predictor"]["containers"][0]["image"]
        assert "@" in container["image"] or re.search(r":[\w.-]+$", container["image"]), "image has no tag"
        assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]  # no gRPC
        assert not [a for a in container["args"] if "grpc" in a], f"{component}: gRPC is not served"
        assert isvc["spec"][component]["minReplicas"] >= 1
    predictor_args = isvc["spec"]["predictor"]["containers"][0]["args"]
    assert predictor_args[:2] == ["serve", "predictor"]
    assert _flag(predictor_args, "--model_dir") == "/mnt/models"
    assert _flag(predictor_args, "--http_port") == "8080"
    transformer = isvc["spec"]["transformer"]["containers"][0]
    transformer_args = transformer["args"]
    assert transformer_args[:2] == ["serve", "transformer"]
    assert _flag(transformer_args, "--model_name") == isvc["metadata"]["name"] == "rakuten"
    assert _flag(transformer_args, "--predictor_protocol") == "v2"  # KServe never passes it (kserve#2227)
    assert _flag(transformer_args, "--http_port") == "8080"
    # The transformer needs no bundle: no --model_dir, no STORAGE_URI (so no storage initializer either).
    assert "--model_dir" not in transformer_args
    assert "STORAGE_URI" not in {e["name"] for e in transformer.get("env", [])}


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} in {args}"
    return args[args.index(flag) + 1]


# ---------------------------------------------------------------- (d) overlays


def _gpu(container: dict[str, Any]) -> dict[str, Any]:
    resources = container.get("resources", {})
    return {k: v["nvidia.com/gpu"] for k, v in resources.items() if "nvidia.com/gpu" in v}


def test_local_overlay_is_cpu_only_with_one_replica(rendered):
    isvc = _the_isvc(rendered["local"])
    for label, container in mt.containers_of(isvc):
        assert _gpu(container) == {}, label
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        assert spec["minReplicas"] == 1 and spec["maxReplicas"] == 1, component
        assert "nodeSelector" not in spec and "tolerations" not in spec, component
        assert "canaryTrafficPercent" not in spec, component


def test_gpu_overlay_puts_the_predictor_on_one_gpu(rendered):
    isvc = _the_isvc(rendered["gpu"])
    predictor = isvc["spec"]["predictor"]
    assert _gpu(predictor["containers"][0])["limits"] == "1"
    assert predictor["nodeSelector"]
    assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in predictor["tolerations"])
    transformer = isvc["spec"]["transformer"]
    assert _gpu(transformer["containers"][0]) == {}, "the transformer needs no GPU"
    assert "nodeSelector" not in transformer and "tolerations" not in transformer


def test_canary_overlay_sends_ten_percent_to_the_new_revision(rendered):
    isvc = _the_isvc(rendered["canary"])
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert _gpu(isvc["spec"]["predictor"]["containers"][0]) == {}


@pytest.mark.parametrize("name", ["base", "canary"])
def test_no_gpu_outside_the_gpu_overlay(rendered, name):
    isvc = _the_isvc(rendered[name])
    for label, container in mt.containers_of(isvc):
        assert _gpu(container) == {}, label
    assert "nodeSelector" not in isvc["spec"]["predictor"]


def test_overlays_only_change_what_they_are_for(rendered):
    # Everything but the overlay's own fields is the base, so a base fix reaches every overlay.
    def strip(isvc: dict[str, Any], overlay: str) -> dict[str, Any]:
        isvc = copy.deepcopy(isvc)
        for component in ("predictor", "transformer"):
            spec = isvc["spec"][component]
            if overlay == "local":
                spec.pop("maxReplicas", None)
                spec["containers"][0].pop("resources", None)
            if overlay == "gpu" and component == "predictor":
                spec.pop("nodeSelector", None)
                spec.pop("tolerations", None)
                spec["containers"][0].pop("resources", None)
            if overlay == "canary" and component == "predictor":
                spec.pop("canaryTrafficPercent", None)
        return isvc

    base = _the_isvc(rendered["base"])
    for overlay in ("local", "gpu", "canary"):
        assert strip(_the_isvc(rendered[overlay]), overlay) == strip(base, overlay), overlay


# ---------------------------------------------------------------- Dockerfiles


def _hadolint() -> str | None:
    pinned = Path(os.environ.get("RAKUTEN_TOOLS_VENV", REPO_ROOT / ".venv-tools")) / "bin" / "hadolint"
    return str(pinned) if pinned.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", ["images/pipeline.Dockerfile", "images/serving.Dockerfile"])
def test_dockerfile_is_hadolint_clean_and_non_root(dockerfile):
    text = (REPO_ROOT / dockerfile).read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] == str(RUN_AS_USER)
    for image in re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"unpinned base image {image}"
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed: `bash scripts/lint_platform.sh --install` puts it in .venv-tools")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "style", dockerfile],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
