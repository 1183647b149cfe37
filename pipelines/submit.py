"""Send the compiled pipeline to a Kubeflow Pipelines API server (``kfp.Client``) and start a run.

The package is uploaded as a version of the pipeline ``rakuten-training`` (the pipeline is created on first use;
the version is named after the package version and the YAML's sha256, so resubmitting the same YAML reuses it),
then a run of exactly that version is created in a KFP experiment with the given parameters. Credentials are
kfp.Client's own (in-cluster ServiceAccount token, ``KF_PIPELINES_*`` environment, ``~/.config/kfp``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rakuten_mm
from pipelines.compile import DEFAULT_PACKAGE
from pipelines.training_pipeline import PIPELINE_NAME
from rakuten_mm.errors import ConfigError, RakutenError

DEFAULT_EXPERIMENT = "rakuten"


class SubmitError(RakutenError):
    """The Kubeflow Pipelines API server could not be reached or refused the request."""


@dataclass(frozen=True)
class SubmitRequest:
    """Everything one submission sends; built and checked before any network call."""

    arguments: dict[str, Any]
    package: Path = DEFAULT_PACKAGE
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str = field(default_factory=lambda: f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}")
    pipeline_name: str = PIPELINE_NAME
    namespace: str | None = None
    service_account: str | None = None

    def __post_init__(self) -> None:
        if not Path(self.package).is_file():
            raise ConfigError(f"pipeline package {self.package} not found; run 'rakuten pipeline compile' first")
        if not self.arguments.get("data_uri"):
            raise ConfigError("the pipeline needs data_uri (an s3:// prefix the cluster can read)")

    @property
    def version_name(self) -> str:
        digest = hashlib.sha256(Path(self.package).read_bytes()).hexdigest()[:12]
        return f"{rakuten_mm.__version__}-{digest}"


@dataclass(frozen=True)
class Submitted:
    run_id: str
    experiment_id: str
    pipeline_id: str
    version_id: str
    url: str


def _display_name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _version_id(client: Any, request: SubmitRequest) -> tuple[str, str]:
    """(pipeline id, version id) of this package, uploading the pipeline or a new version when needed."""
    package = str(request.package)
    pipeline_id = client.get_pipeline_id(request.pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, request.pipeline_name,
                                             description="Rakuten product classifier training",
                                             namespace=request.namespace).pipeline_id
        versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
        if len(versions) != 1:
            raise RuntimeError(f"pipeline {request.pipeline_name} was just created with {len(versions)} versions")
        return pipeline_id, versions[0].pipeline_version_id
    found = client.list_pipeline_versions(pipeline_id, filter=_display_name_filter(request.version_name))
    if found.pipeline_versions:
        return pipeline_id, found.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(package, request.version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(host: str, request: SubmitRequest, client: Any = None) -> Submitted:
    """Upload (if needed) and run the pipeline on the KFP API server at ``host``.

    An unreachable server or a refusal (authentication, permissions, a bad parameter) is a :class:`SubmitError`
    naming the host and the reason, not a client library traceback.
    """
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        return _submit(host, request, client)
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SubmitError(f"cannot reach the Kubeflow Pipelines API at {host}: {reason}") from None
    except ApiException as exc:
        raise SubmitError(f"the Kubeflow Pipelines API at {host} refused the request: HTTP {exc.status} "
                          f"{exc.reason}: {str(exc.body or '')[:300]}") from None


def _submit(host: str, request: SubmitRequest, client: Any) -> Submitted:
    if client is None:
        import warnings

        import kfp

        with warnings.catch_warnings():  # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later": we know
            warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline.*", category=FutureWarning)
            client = kfp.Client(host=host, namespace=request.namespace or "kubeflow")
    experiment = client.create_experiment(request.experiment, namespace=request.namespace)
    pipeline_id, version_id = _version_id(client, request)
    run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=request.run_name,
                              params=request.arguments, pipeline_id=pipeline_id, version_id=version_id,
                              enable_caching=False, service_account=request.service_account)
    return Submitted(run_id=run.run_id, experiment_id=experiment.experiment_id, pipeline_id=pipeline_id,
                     version_id=version_id, url=f"{host.rstrip('/')}/#/runs/details/{run.run_id}")
