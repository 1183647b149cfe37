"""``rakuten pipeline submit``: the real kfp.Client against a small fake KFP API server on loopback that records
every request, so the requests themselves (upload, version reuse, run body) are what is checked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.compile import DEFAULT_PACKAGE
from pipelines.submit import SubmitRequest, submit
from rakuten_cli.pipeline import main as cli_main
from rakuten_mm.errors import ConfigError

pytestmark = [pytest.mark.pipeline, pytest.mark.integration]

API = "/apis/v2beta1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


@dataclass
class FakeKfp:
    """Just enough of the KFP v2beta1 REST API: experiments, pipelines (upload + versions) and runs."""

    pipelines: dict[str, str] = field(default_factory=dict)  # display name → id
    versions: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # pipeline id → versions
    requests: list[Recorded] = field(default_factory=list)

    def answer(self, req: Recorded) -> tuple[int, dict[str, Any]]:
        path = req.path[len(API):]
        wanted = json.loads(req.query["filter"][0])["predicates"][0]["stringValue"] if "filter" in req.query else None
        if req.method == "GET" and path == "/healthz":
            return 200, {"multi_user": False}
        if req.method == "GET" and path == "/experiments":
            return 200, {}
        if req.method == "POST" and path == "/experiments":
            return 200, {"experiment_id": "exp-1", **json.loads(req.body)}
        if req.method == "GET" and path == "/pipelines":
            return 200, ({"pipelines": [{"pipeline_id": self.pipelines[wanted], "display_name": wanted}],
                          "total_size": 1} if wanted in self.pipelines else {})
        if req.method == "POST" and path == "/pipelines/upload":
            name = req.query["name"][0]
            pid = self.pipelines[name] = f"pipe-{len(self.pipelines) + 1}"
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": "ver-1", "display_name": name}]
            return 200, {"pipeline_id": pid, "display_name": name}
        if req.method == "GET" and path.startswith("/pipelines/") and path.endswith("/versions"):
            found = [v for v in self.versions[path.split("/")[2]] if wanted in (None, v["display_name"])]
            return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        if req.method == "POST" and path == "/pipelines/upload_version":
            pid = req.query["pipelineid"][0]
            version = {"pipeline_id": pid, "pipeline_version_id": f"ver-{len(self.versions[pid]) + 1}",
                       "display_name": req.query["name"][0]}
            self.versions[pid].append(version)
            return 200, version
        if req.method == "POST" and path == "/runs":
            return 200, {"run_id": f"run-{len(self.runs())}", **json.loads(req.body)}
        return 404, {"error": f"not faked: {req.method} {req.path}"}

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests if r.method == "POST" and r.path == f"{API}/runs"]


@pytest.fixture
def kfp_api() -> Iterator[tuple[str, FakeKfp]]:
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = Recorded(self.command, url.path, parse_qs(url.query), body)
            fake.requests.append(req)
            status, payload = fake.answer(req)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


def test_first_submit_uploads_the_pipeline_and_runs_that_version(kfp_api: tuple[str, FakeKfp]) -> None:
    host, fake = kfp_api
    assert cli_main(["pipeline", "submit", "s3://data/rakuten", "--host", host, "--out", "s3://models/run-1",
                     "--epochs-text", "3", "--image-size", "128", "--min-improvement", "0.01", "--deploy",
                     "--canary-percent", "10", "--run-name", "nightly", "--namespace", "team-a",
                     "--service-account", "rakuten-pipeline"]) == 0
    (upload,) = [r for r in fake.requests if r.path.endswith("/pipelines/upload")]
    assert upload.query["name"] == ["rakuten-training"] and upload.query["namespace"] == ["team-a"]
    assert DEFAULT_PACKAGE.read_bytes() in upload.body  # the checked-in YAML, as a multipart file
    (run,) = fake.runs()
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == "rakuten-pipeline"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipe-1", "pipeline_version_id": "ver-1"}
    params = run["runtime_config"]["parameters"]
    assert params["data_uri"] == "s3://data/rakuten" and params["bundle_uri"] == "s3://models/run-1"
    assert params["epochs_text"] == 3 and params["image_size"] == 128 and params["min_improvement"] == 0.01
    assert params["deploy"] is True and params["canary_percent"] == 10 and params["image_weights"] == "imagenet"
    created = [json.loads(r.body) for r in fake.requests if r.method == "POST" and r.path.endswith("/experiments")]
    assert created == [{"display_name": "rakuten", "namespace": "team-a"}]


def test_resubmitting_the_same_yaml_reuses_its_version(kfp_api: tuple[str, FakeKfp], tmp_path: Path) -> None:
    host, fake = kfp_api
    request = SubmitRequest(arguments={"data_uri": "s3://d/x"}, run_name="a")
    fake.pipelines["rakuten-training"] = "pipe-9"
    fake.versions["pipe-9"] = [{"pipeline_id": "pipe-9", "pipeline_version_id": "old", "display_name": "0.0.9-x"}]
    first = submit(host, request)
    second = submit(host, SubmitRequest(arguments={"data_uri": "s3://d/y"}, run_name="b"))
    assert first.version_id == second.version_id == "ver-2" and first.pipeline_id == "pipe-9"
    uploads = [r for r in fake.requests if r.path.endswith("/upload_version")]
    assert len(uploads) == 1 and uploads[0].query["name"] == [request.version_name]
    assert [r["runtime_config"]["parameters"]["data_uri"] for r in fake.runs()] == ["s3://d/x", "s3://d/y"]
    assert second.url == f"{host}/#/runs/details/{second.run_id}"

    changed = tmp_path / "changed.yaml"
    changed.write_text(DEFAULT_PACKAGE.read_text() + "\n# changed\n")
    third = submit(host, SubmitRequest(arguments={"data_uri": "s3://d/z"}, package=changed))
    assert third.version_id == "ver-3"


def test_requests_are_checked_before_any_call(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rakuten pipeline compile"):
        SubmitRequest(arguments={"data_uri": "s3://d"}, package=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="data_uri"):
        SubmitRequest(arguments={})
