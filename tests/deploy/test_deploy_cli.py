"""`rakuten deploy` / `rakuten rollback` end to end: the installed command against the fake API server."""

from __future__ import annotations

import functools
import json
import subprocess

import pytest
import yaml
from deploy_helpers import IMAGE, NAMESPACE, NEW_URI, OLD_URI, existing_isvc

from tests.support.cli import rakuten as run_rakuten

pytestmark = [pytest.mark.platform, pytest.mark.integration]

FAST = ["--timeout", "10", "--poll", "0.02"]
# Never the developer's cluster: no in-cluster service account, no kubeconfig unless a test sets one.
rakuten = functools.partial(run_rakuten, unset=("KUBERNETES_SERVICE_HOST", "KUBECONFIG"), timeout=60)


def one_json_line(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_deploy_canary_and_rollback(fake):
    created = one_json_line(rakuten("deploy", OLD_URI, "--namespace", NAMESPACE, "--image", IMAGE,
                                    "--kube-api", fake.url, *FAST))
    assert created == {"action": "created", "canary_percent": 0, "previous_storage_uri": None,
                       "storage_uri": OLD_URI, "url": f"http://rakuten.{NAMESPACE}.example.com"}

    canary = one_json_line(rakuten("deploy", NEW_URI, "--namespace", NAMESPACE, "--canary-percent", "20",
                                   "--kube-api", fake.url, *FAST))
    assert canary["action"] == "patched" and canary["canary_percent"] == 20
    assert fake.object()["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert fake.requests("PATCH")[-1]["content_type"] == "application/merge-patch+json"

    back = one_json_line(rakuten("rollback", "--namespace", NAMESPACE, "--kube-api", fake.url, *FAST))
    assert back["action"] == "rolled_back" and back["storage_uri"] == OLD_URI
    assert back["previous_storage_uri"] == NEW_URI
    assert "canaryTrafficPercent" not in fake.object()["spec"]["predictor"]


def test_deploy_from_a_manifest_file_and_a_kubeconfig_context(fake, tmp_path):
    manifest = existing_isvc(OLD_URI, ready=False)
    manifest["metadata"] = {"name": "ignored", "annotations": {"serving.kserve.io/deploymentMode": "Knative"}}
    manifest["spec"]["predictor"]["maxReplicas"] = 5
    path = tmp_path / "isvc.yaml"
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}}
    path.write_text(yaml.safe_dump_all([service_account, manifest]))  # like `kubectl kustomize` output
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "me"}}],
    }))

    result = one_json_line(rakuten("deploy", NEW_URI, "--name", "svc", "--namespace", NAMESPACE,
                                   "--manifest", str(path), "--context", "fake", *FAST,
                                   env={"KUBECONFIG": str(kubeconfig)}))

    assert result["action"] == "created"
    created = fake.object("svc")
    assert created["spec"]["predictor"]["maxReplicas"] == 5
    assert created["spec"]["predictor"]["containers"][0]["env"][0]["value"] == NEW_URI


def test_bad_canary_is_one_error_line_and_no_request(fake):
    proc = rakuten("deploy", NEW_URI, "--canary-percent", "150", "--kube-api", fake.url, *FAST)
    assert "canary_percent must be an integer from 0 to 100" in one_error_line(proc)
    assert fake.requests() == []


def test_local_bundle_path_is_refused(fake):
    proc = rakuten("deploy", "./bundle", "--kube-api", fake.url, *FAST)
    assert "a local path cannot be read by the cluster" in one_error_line(proc)
    assert fake.requests() == []


def test_forbidden_is_one_error_line(fake):
    fake.reset(objects=[existing_isvc(OLD_URI)], fail={"PATCH": 403})
    proc = rakuten("deploy", NEW_URI, "--namespace", NAMESPACE, "--kube-api", fake.url, *FAST)
    assert "the service account needs get, create and patch on inferenceservices.serving.kserve.io" \
        in one_error_line(proc)


def test_timeout_is_one_error_line(fake):
    fake.reset(objects=[existing_isvc(OLD_URI)], ready_after_gets=None)
    proc = rakuten("deploy", NEW_URI, "--namespace", NAMESPACE, "--kube-api", fake.url, "--timeout", "0.3",
                   "--poll", "0.05")
    assert "was not Ready within 0.3 s" in one_error_line(proc)


def test_rollback_without_history_is_one_error_line(fake):
    fake.reset(objects=[existing_isvc(OLD_URI)])
    proc = rakuten("rollback", "--namespace", NAMESPACE, "--kube-api", fake.url, *FAST)
    assert "nothing to roll back to" in one_error_line(proc)


def test_no_credentials_is_one_error_line(tmp_path):
    proc = rakuten("rollback", "--namespace", NAMESPACE, env={"KUBECONFIG": str(tmp_path / "missing"),
                                                              "HOME": str(tmp_path)})
    assert "no Kubernetes credentials" in one_error_line(proc)


def test_missing_manifest_file_is_one_error_line(fake, tmp_path):
    proc = rakuten("deploy", NEW_URI, "--manifest", str(tmp_path / "nope.yaml"), "--kube-api", fake.url)
    assert "cannot read --manifest" in one_error_line(proc)
    assert fake.requests() == []


def test_help_names_the_options():
    proc = rakuten("deploy", "--help")
    assert proc.returncode == 0
    for option in ("--canary-percent", "--namespace", "--name", "--timeout", "--context", "--kube-api", "--image"):
        assert option in proc.stdout
