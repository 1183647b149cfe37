"""rollout.deploy against the fake Kubernetes API server: create, patch, canary, rollback, waiting, errors."""

from __future__ import annotations

import copy
import tomllib
from importlib.resources import files

import pytest
import yaml
from deploy_helpers import IMAGE, NAMESPACE, NEW_URI, OLD_URI, content_changes, existing_isvc, with_transformer_uri

from rakuten_mm.errors import ConfigError, RakutenError
from rollout import defaults
from rollout.defaults import default_manifest
from rollout.deploy import deploy, rollback
from rollout.errors import DeployError, DeployTimeout
from rollout.session import CONFLICT_ATTEMPTS, kube_api_client
from rollout.spec import (
    DEPLOYMENT_MODE_ANNOTATION,
    PREVIOUS_URI_ANNOTATION,
    creation_body,
    merge_patch,
    rollout_patch,
)
from tests.support.paths import BASE_MANIFEST, REPO_ROOT
from tests.support.schemas import isvc_schema_errors

pytestmark = [pytest.mark.platform, pytest.mark.integration]

FAST = {"timeout_s": 10, "poll_s": 0.02}
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"
URI_POINTERS = {"/spec/predictor/containers/0/env/0/value"}
ANNOTATION_POINTER = "/metadata/annotations/rakuten.io~1previous-storage-uri"
CANARY_POINTERS = {"/spec/predictor/canaryTrafficPercent"}
# An object created from an older manifest, whose transformer named the bundle too.
OLD_TRANSFORMER_URI_POINTERS = URI_POINTERS | {"/spec/transformer/containers/0/env/0/value"}
OLD_TRANSFORMER_CANARY_POINTERS = CANARY_POINTERS | {"/spec/transformer/canaryTrafficPercent"}


def uris(obj: dict) -> dict[str, str]:
    """component -> STORAGE_URI of its kserve-container, for the components that have one."""
    out = {}
    for component in ("predictor", "transformer"):
        (container,) = [c for c in obj["spec"][component]["containers"] if c["name"] == "kserve-container"]
        found = [e["value"] for e in container.get("env", []) if e["name"] == "STORAGE_URI"]
        if found:
            (out[component],) = found
    return out


def without_status(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "status"}


# ---------------------------------------------------------------- create


def test_creates_the_inferenceservice_when_absent(fake, api):
    result = deploy(OLD_URI, namespace=NAMESPACE, api_client=api, image=IMAGE, **FAST)

    assert result == {"action": "created", "url": f"http://rakuten.{NAMESPACE}.example.com",
                      "previous_storage_uri": None, "storage_uri": OLD_URI, "canary_percent": 0}
    methods = [(r["method"], r["path"]) for r in fake.requests()]
    assert methods[:2] == [("GET", f"{ISVC_PATH}/rakuten"), ("POST", ISVC_PATH)]
    assert {m for m, _ in methods[2:]} == {"GET"}  # then only status reads
    body = fake.requests("POST")[0]["body"]
    assert isvc_schema_errors(body) == []
    assert body["metadata"]["name"] == "rakuten" and body["metadata"]["namespace"] == NAMESPACE
    assert uris(body) == {"predictor": OLD_URI}  # the transformer needs no bundle
    assert {c["image"] for comp in ("predictor", "transformer") for c in body["spec"][comp]["containers"]} == {IMAGE}
    assert body["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]


def test_create_from_a_given_manifest_keeps_its_settings(fake, api):
    manifest = default_manifest()
    manifest["spec"]["predictor"]["maxReplicas"] = 7
    manifest["spec"]["predictor"]["containers"][0]["image"] = IMAGE
    manifest["spec"]["transformer"]["containers"][0]["image"] = IMAGE
    deploy(OLD_URI, namespace=NAMESPACE, api_client=api, manifest=manifest, **FAST)
    body = fake.requests("POST")[0]["body"]
    assert body["spec"]["predictor"]["maxReplicas"] == 7
    assert isvc_schema_errors(body) == []
    assert manifest["spec"]["predictor"]["containers"][0]["env"][0]["value"].startswith("s3://REPLACE_ME")  # a copy


def test_a_canary_on_creation_is_a_full_rollout(fake, api):
    result = deploy(OLD_URI, namespace=NAMESPACE, canary_percent=10, api_client=api, image=IMAGE, **FAST)
    assert result["action"] == "created" and result["canary_percent"] == 0
    assert "canaryTrafficPercent" not in fake.object()["spec"]["predictor"]


def test_create_refuses_the_placeholder_image_before_posting(fake, api):
    with pytest.raises(ConfigError, match="placeholder image 'rakuten-serving'.*--image"):
        deploy(OLD_URI, namespace=NAMESPACE, api_client=api, **FAST)
    assert fake.requests("POST") == []


def test_create_refuses_a_manifest_without_a_bundle_location(fake, api):
    manifest = default_manifest()
    manifest["spec"]["predictor"]["containers"][0]["env"] = [{"name": "PROTOCOL", "value": "v2"}]
    with pytest.raises(ConfigError, match="STORAGE_URI"):
        deploy(OLD_URI, namespace=NAMESPACE, api_client=api, manifest=manifest, image=IMAGE, **FAST)
    assert fake.requests("POST") == []


# ---------------------------------------------------------------- patch, canary, promote


def test_patches_only_the_bundle_uri_and_the_annotation(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)])
    before = fake.object()

    result = deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)

    assert result == {"action": "patched", "url": f"http://rakuten.{NAMESPACE}.example.com",
                      "previous_storage_uri": OLD_URI, "storage_uri": NEW_URI, "canary_percent": 0}
    (patch,) = fake.requests("PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["path"] == f"{ISVC_PATH}/rakuten"
    assert patch["body"]["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # precondition
    after = fake.object()
    assert content_changes(before, after) == URI_POINTERS | {ANNOTATION_POINTER}
    assert uris(after) == {"predictor": NEW_URI}
    assert "transformer" not in patch["body"]["spec"]  # nothing there names the bundle
    assert after["metadata"]["annotations"]["rakuten.io/previous-storage-uri"] == OLD_URI
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert isvc_schema_errors(without_status(after)) == []


def test_canary_sets_the_traffic_split_on_the_predictor(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)])
    before = fake.object()

    result = deploy(NEW_URI, namespace=NAMESPACE, canary_percent=10, api_client=api, **FAST)

    assert result["canary_percent"] == 10 and result["previous_storage_uri"] == OLD_URI
    after = fake.object()
    assert content_changes(before, after) == URI_POINTERS | {ANNOTATION_POINTER} | CANARY_POINTERS
    assert after["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in after["spec"]["transformer"]  # bundle-independent: no new revision
    assert isvc_schema_errors(without_status(after)) == []


def test_an_old_transformer_that_names_the_bundle_is_patched_and_split_too(fake, api):
    # Objects created before the transformer stopped needing the bundle keep working: its URI follows the
    # predictor's, with the same canary split, and a full rollout removes both splits.
    fake.reset(objects=[with_transformer_uri(existing_isvc(OLD_URI), OLD_URI)])
    before = fake.object()

    deploy(NEW_URI, namespace=NAMESPACE, canary_percent=30, api_client=api, **FAST)

    after = fake.object()
    assert uris(after) == {"predictor": NEW_URI, "transformer": NEW_URI}
    assert content_changes(before, after) == (OLD_TRANSFORMER_URI_POINTERS | {ANNOTATION_POINTER}
                                              | OLD_TRANSFORMER_CANARY_POINTERS)
    assert after["spec"]["transformer"]["canaryTrafficPercent"] == 30
    assert isvc_schema_errors(without_status(after)) == []

    deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)  # promote
    promoted = fake.object()
    assert content_changes(after, promoted) == OLD_TRANSFORMER_CANARY_POINTERS

    rollback(namespace=NAMESPACE, api_client=api, **FAST)
    assert uris(fake.object()) == {"predictor": OLD_URI, "transformer": OLD_URI}


@pytest.mark.parametrize("full", [0, 100])
def test_full_rollout_of_the_same_bundle_promotes_a_canary(fake, api, full):
    fake.reset(objects=[existing_isvc(NEW_URI, annotations={PREVIOUS_URI_ANNOTATION: OLD_URI},
                                      canaryTrafficPercent=10)])
    before = fake.object()

    result = deploy(NEW_URI, namespace=NAMESPACE, canary_percent=full, api_client=api, **FAST)

    assert result["canary_percent"] == 0
    assert result["previous_storage_uri"] == OLD_URI  # still what a rollback restores
    after = fake.object()
    assert content_changes(before, after) == {"/spec/predictor/canaryTrafficPercent"}
    assert "canaryTrafficPercent" not in after["spec"]["predictor"]
    assert fake.requests("PATCH")[0]["body"]["spec"]["predictor"]["canaryTrafficPercent"] is None  # merge: remove


def test_a_whole_float_canary_percent_is_accepted(fake, api):
    # KFP can deliver an int parameter as 10.0; 10.5 is still refused (see the bad-input table).
    fake.reset(objects=[existing_isvc(OLD_URI)])
    assert deploy(NEW_URI, namespace=NAMESPACE, canary_percent=10.0, api_client=api, **FAST)["canary_percent"] == 10
    assert fake.object()["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_a_new_bundle_with_full_rollout_removes_an_old_canary(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI, canaryTrafficPercent=25)])
    deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    after = fake.object()
    assert "canaryTrafficPercent" not in after["spec"]["predictor"]
    assert uris(after)["predictor"] == NEW_URI


def test_canary_is_refused_in_standard_mode_before_patching(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI, annotations={DEPLOYMENT_MODE_ANNOTATION: "Standard"})])
    with pytest.raises(ConfigError, match=r"needs Knative mode.*Standard mode.*canary_percent 0"):
        deploy(NEW_URI, namespace=NAMESPACE, canary_percent=10, api_client=api, **FAST)
    assert fake.requests("PATCH") == []
    # a full rollout is fine in Standard mode
    assert deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)["action"] == "patched"


def test_patches_a_model_format_predictor_storage_uri(fake, api):
    isvc = existing_isvc(OLD_URI)
    isvc["spec"] = {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": OLD_URI}}}
    fake.reset(objects=[isvc])
    before = fake.object()
    deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    after = fake.object()
    assert content_changes(before, after) == {"/spec/predictor/model/storageUri", ANNOTATION_POINTER}
    assert isvc_schema_errors(without_status(after)) == []


def test_a_service_without_a_bundle_location_is_refused(fake, api):
    # Only the predictor counts: a transformer that still names a bundle does not make a service deployable.
    isvc = with_transformer_uri(existing_isvc(OLD_URI), OLD_URI)
    container = isvc["spec"]["predictor"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "STORAGE_URI"]
    fake.reset(objects=[isvc])
    with pytest.raises(DeployError, match="names no bundle.*STORAGE_URI"):
        deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    assert fake.requests("PATCH") == []


def test_a_concurrent_change_is_kept_not_overwritten(fake, api):
    # Someone writes between our GET and PATCH: the resourceVersion precondition makes the API answer 409,
    # and deploy reads the object again instead of replacing their change with its stale copy.
    fake.reset(objects=[existing_isvc(OLD_URI)], concurrent_write_before_patches=1)
    deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    assert [r["method"] for r in fake.requests()][:4] == ["GET", "PATCH", "GET", "PATCH"]
    after = fake.object()
    assert after["metadata"]["labels"]["fake/concurrent-writes"] == "1"
    assert uris(after)["predictor"] == NEW_URI


def test_a_service_that_keeps_changing_gives_up_clearly(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)], concurrent_write_before_patches=100)
    with pytest.raises(DeployError, match="kept changing.*409") as info:
        deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    assert info.value.status == 409
    assert len(fake.requests("PATCH")) == CONFLICT_ATTEMPTS


# ---------------------------------------------------------------- rollback


def test_rollback_restores_the_previous_bundle_and_can_be_undone(fake, api):
    deploy(OLD_URI, namespace=NAMESPACE, api_client=api, image=IMAGE, **FAST)
    deploy(NEW_URI, namespace=NAMESPACE, canary_percent=20, api_client=api, **FAST)
    before = fake.object()

    result = rollback(namespace=NAMESPACE, api_client=api, **FAST)

    assert result == {"action": "rolled_back", "url": f"http://rakuten.{NAMESPACE}.example.com",
                      "previous_storage_uri": NEW_URI, "storage_uri": OLD_URI, "canary_percent": 0}
    after = fake.object()
    assert uris(after) == {"predictor": OLD_URI}
    assert after["metadata"]["annotations"][PREVIOUS_URI_ANNOTATION] == NEW_URI
    assert content_changes(before, after) == URI_POINTERS | {ANNOTATION_POINTER} | CANARY_POINTERS  # canary gone
    assert "canaryTrafficPercent" not in after["spec"]["predictor"]
    assert fake.requests("PATCH")[-1]["content_type"] == "application/merge-patch+json"
    assert isvc_schema_errors(without_status(after)) == []

    assert rollback(namespace=NAMESPACE, api_client=api, **FAST)["storage_uri"] == NEW_URI
    assert uris(fake.object())["predictor"] == NEW_URI


def test_rollback_without_a_previous_bundle_says_so(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)])
    with pytest.raises(DeployError, match="nothing to roll back to.*rakuten.io/previous-storage-uri"):
        rollback(namespace=NAMESPACE, api_client=api, **FAST)
    assert fake.requests("PATCH") == []


def test_rollback_of_a_missing_service(fake, api):
    with pytest.raises(DeployError, match=f"no InferenceService {NAMESPACE}/rakuten to roll back") as info:
        rollback(namespace=NAMESPACE, api_client=api, **FAST)
    assert info.value.status == 404


# ---------------------------------------------------------------- waiting for Ready


def test_waits_for_the_new_generation_not_a_stale_ready(fake, api):
    # After the patch the status still says Ready=True for generation 1; it catches up on the 3rd read.
    fake.reset(objects=[existing_isvc(OLD_URI)], ready_after_gets=3)
    deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    methods = [r["method"] for r in fake.requests()]
    assert methods == ["GET", "PATCH", "GET", "GET", "GET"]


def test_timeout_names_the_service_and_its_last_conditions(fake, api):
    fake.reset(ready_after_gets=None)
    with pytest.raises(DeployTimeout) as info:
        deploy(OLD_URI, namespace=NAMESPACE, api_client=api, image=IMAGE, timeout_s=0.3, poll_s=0.05)
    message = str(info.value)
    assert f"InferenceService {NAMESPACE}/rakuten was not Ready within 0.3 s" in message
    assert "Ready=Unknown (RevisionMissing: Configuration has not yet been reconciled)" in message
    assert f"kubectl describe inferenceservice rakuten -n {NAMESPACE}" in message
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, RakutenError)
    assert info.value.conditions[0]["reason"] == "RevisionMissing"
    assert 3 <= len(fake.requests("GET")) <= 12


def test_timeout_after_a_patch_says_the_status_is_stale(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)], ready_after_gets=None)
    with pytest.raises(DeployTimeout, match="still describes generation 1, not 2.*Ready=True"):
        deploy(NEW_URI, namespace=NAMESPACE, api_client=api, timeout_s=0.2, poll_s=0.05)


# ---------------------------------------------------------------- API errors


@pytest.mark.parametrize(("method", "verb"), [("GET", "get"), ("PATCH", "patch")])
def test_forbidden_explains_the_rbac_needed(fake, api, method, verb):
    fake.reset(objects=[existing_isvc(OLD_URI)], fail={method: 403})
    with pytest.raises(DeployError) as info:
        deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)
    message = str(info.value)
    assert info.value.status == 403
    assert f"forbidden (403) to {verb} InferenceService {NAMESPACE}/rakuten" in message
    assert f"needs get, create and patch on inferenceservices.serving.kserve.io in namespace {NAMESPACE}" in message
    assert f'cannot {verb} resource "inferenceservices"' in message  # the API server's own words follow
    assert "\n" not in message


def test_forbidden_create(fake, api):
    fake.reset(fail={"POST": 403})
    with pytest.raises(DeployError, match=r"forbidden \(403\) to create.*rbac.yaml"):
        deploy(OLD_URI, namespace=NAMESPACE, api_client=api, image=IMAGE, **FAST)


def test_kserve_not_installed(fake, api):
    fake.reset(crd_installed=False)
    with pytest.raises(DeployError, match=r"404.*is KServe installed \(CRD inferenceservices.serving.kserve.io"):
        deploy(OLD_URI, namespace=NAMESPACE, api_client=api, image=IMAGE, **FAST)


def test_server_error_is_reported_with_its_status(fake, api):
    fake.reset(objects=[existing_isvc(OLD_URI)], fail={"PATCH": 500})
    with pytest.raises(DeployError, match="patch InferenceService .* failed with HTTP 500.*injected failure"):
        deploy(NEW_URI, namespace=NAMESPACE, api_client=api, **FAST)


def test_unreachable_api_server():
    client = kube_api_client(host="http://127.0.0.1:9")
    client.configuration.retries = 0
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API at http://127.0.0.1:9"):
        deploy(OLD_URI, namespace=NAMESPACE, api_client=client, **FAST)


# ---------------------------------------------------------------- bad input, before any request


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"canary_percent": -1}, "canary_percent must be an integer from 0 to 100"),
        ({"canary_percent": 101}, "canary_percent must be an integer from 0 to 100"),
        ({"canary_percent": True}, "canary_percent must be an integer"),
        ({"canary_percent": "10"}, "canary_percent must be an integer"),
        ({"canary_percent": 10.5}, "canary_percent must be an integer"),
        ({"bundle_uri": "/data/bundle"}, "must start with one of s3://, gs://, pvc://.*local path"),
        ({"bundle_uri": "http://example.com/bundle"}, "must start with one of s3://"),
        ({"bundle_uri": "s3://"}, "must name a bucket"),
        ({"bundle_uri": "s3://REPLACE_ME-bucket/rakuten/bundle"}, "must name a bucket"),
        ({"bundle_uri": ""}, "must be a URI the cluster can read"),
        ({"bundle_uri": None}, "must be a URI the cluster can read"),
        ({"name": "Rakuten"}, "name must be a DNS-1035 label"),
        ({"name": "1rakuten"}, "name must be a DNS-1035 label"),
        ({"name": "r" * 64}, "at most 63 characters"),
        ({"namespace": "ML_team"}, "namespace must be a DNS-1123 label"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds > 0"),
        ({"poll_s": -1}, "poll_s must be a number of seconds > 0"),
        ({"manifest": {"kind": "Deployment"}}, "manifest must be an InferenceService"),
        ({"image": "a b"}, "image must be an image reference"),
    ],
)
def test_bad_input_is_refused_before_any_request(fake, api, kwargs, expected):
    args = {"bundle_uri": NEW_URI, "namespace": NAMESPACE, "api_client": api, **FAST, **kwargs}
    with pytest.raises(ConfigError, match=expected):
        deploy(**args)
    assert fake.requests() == []


def test_rollback_bad_input_is_refused_before_any_request(fake, api):
    with pytest.raises(ConfigError, match="name must be a DNS-1035 label"):
        rollback(name="bad_name", namespace=NAMESPACE, api_client=api)
    assert fake.requests() == []


def test_the_previous_uri_annotation_is_checked_before_a_rollback(fake, api):
    fake.reset(objects=[existing_isvc(NEW_URI, annotations={PREVIOUS_URI_ANNOTATION: "/tmp/bundle"})])
    with pytest.raises(ConfigError, match="the rakuten.io/previous-storage-uri annotation must start with"):
        rollback(namespace=NAMESPACE, api_client=api, **FAST)
    assert fake.requests("PATCH") == []


# ---------------------------------------------------------------- the manifest it creates from


def test_default_manifest_is_the_base_manifest_shipped_as_package_data():
    # One file: kustomize renders manifests/base/inferenceservice.yaml, and rollout reads the same file as
    # package data (rollout/inferenceservice.yaml links to it; a wheel gets a copy of its content).
    packaged = files("rollout").joinpath(defaults.PACKAGED_MANIFEST)
    assert packaged.read_bytes() == BASE_MANIFEST.read_bytes()
    assert default_manifest() == yaml.safe_load(BASE_MANIFEST.read_text())
    body = creation_body(default_manifest(), OLD_URI, "rakuten", NAMESPACE, image=IMAGE)
    assert isvc_schema_errors(body) == []


def test_the_package_build_includes_the_manifest():
    link = REPO_ROOT / "rollout" / defaults.PACKAGED_MANIFEST
    assert link.is_symlink() and link.resolve() == BASE_MANIFEST.resolve()
    setuptools_config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "rollout*" in setuptools_config["packages"]["find"]["include"]
    assert defaults.PACKAGED_MANIFEST in setuptools_config["package-data"]["rollout"]


def test_a_missing_packaged_manifest_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(defaults, "PACKAGED_MANIFEST", "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read the packaged rollout/missing.yaml"):
        default_manifest()


def test_rollout_patch_does_not_modify_its_input():
    current = existing_isvc(OLD_URI)
    snapshot = copy.deepcopy(current)
    patch, previous = rollout_patch(current, NEW_URI, 30)
    assert current == snapshot and previous == OLD_URI
    merged = merge_patch(current, patch)
    assert content_changes(current, merged) == URI_POINTERS | {ANNOTATION_POINTER} | CANARY_POINTERS
