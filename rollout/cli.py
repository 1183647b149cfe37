"""``rakuten deploy`` and ``rakuten rollback``: argument parsing and one JSON line of output.

    rakuten deploy BUNDLE_URI [--canary-percent N] [--namespace NS] [--name NAME] [--timeout S] [--poll S]
                   [--image IMAGE] [--manifest FILE] [--context CTX | --kube-api URL]
    rakuten rollback [--namespace NS] [--name NAME] [--timeout S] [--poll S] [--context CTX | --kube-api URL]

Credentials: the pod's service account in a cluster, else the kubeconfig (``--context`` picks one of its
contexts). ``--kube-api URL`` talks to that API server without credentials (``kubectl proxy``, tests).
Errors raise ``RakutenError`` subclasses; ``rakuten_mm.cli`` prints them as one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rakuten_mm.errors import ConfigError
from rollout.defaults import load_manifest
from rollout.deploy import deploy, rollback
from rollout.session import kube_api_client
from rollout.spec import ALLOWED_URI_SCHEMES, PREVIOUS_URI_ANNOTATION, check_arguments

COMMANDS = ("deploy", "rollback")


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"rakuten {command}")
    if command == "deploy":
        parser.description = ("Serve a model bundle from the KServe InferenceService: create it if absent, else "
                              "patch its STORAGE_URI (and canary split); wait until Ready; print one JSON line.")
        schemes = ", ".join(f"{s}://" for s in ALLOWED_URI_SCHEMES)
        parser.add_argument("bundle_uri", metavar="BUNDLE_URI", help=f"the bundle, readable by the cluster ({schemes})")
        parser.add_argument("--canary-percent", type=int, default=0, metavar="N",
                            help="1..99: share of traffic for the new bundle (Knative mode); 0 (default) or 100: "
                                 "full rollout, which also promotes a canary of the same bundle")
        parser.add_argument("--image", default=None,
                            help="serving image, used only when the InferenceService is created")
        parser.add_argument("--manifest", default=None, metavar="FILE",
                            help="InferenceService YAML to create from, e.g. `kubectl kustomize manifests/overlays/"
                                 "local` output (default: manifests/base/inferenceservice.yaml)")
    else:
        parser.description = ("Serve the bundle the InferenceService served before the last `rakuten deploy` "
                              f"(its {PREVIOUS_URI_ANNOTATION} annotation), with all traffic; print one JSON line.")
    parser.add_argument("--name", default="rakuten", help="InferenceService name (default: rakuten)")
    parser.add_argument("--namespace", default="rakuten", help="namespace (default: rakuten)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="seconds to wait for Ready (default: 600)")
    parser.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between status reads (default 5)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--context", default=None, help="kubeconfig context (default: in-cluster, else current)")
    where.add_argument("--kube-api", default=None, metavar="URL",
                       help="Kubernetes API server URL to use without credentials (kubectl proxy, tests)")
    return parser


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` is the command (``deploy`` or ``rollback``), as ``rakuten`` forwards it."""
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"expected the command deploy or rollback, got {argv[:1]!r}")
    command, rest = argv[0], argv[1:]
    args = build_parser(command).parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # The Kubernetes client's HTTP retries log a warning per attempt (and the client resets urllib3's level when it
    # is configured); an unreachable API server is reported once, as the command's own error line.
    urllib3_log = logging.getLogger("urllib3")
    urllib3_log.addHandler(logging.NullHandler())
    urllib3_log.propagate = False

    # Bad values first: a typo must not be reported as missing credentials.
    check_arguments(args.name, args.namespace, args.timeout, args.poll,
                    bundle_uri=getattr(args, "bundle_uri", None), canary_percent=getattr(args, "canary_percent", 0))
    manifest_file = getattr(args, "manifest", None)
    manifest = load_manifest(Path(manifest_file), f"--manifest {manifest_file}") if manifest_file else None
    api_client = kube_api_client(context=args.context, host=args.kube_api)
    try:
        result: dict[str, Any]
        if command == "deploy":
            result = deploy(args.bundle_uri, name=args.name, namespace=args.namespace,
                            canary_percent=args.canary_percent, timeout_s=args.timeout, poll_s=args.poll,
                            api_client=api_client, manifest=manifest, image=args.image)
        else:
            result = rollback(name=args.name, namespace=args.namespace, timeout_s=args.timeout, poll_s=args.poll,
                              api_client=api_client)
    finally:
        api_client.close()
    print(json.dumps(result, sort_keys=True))
    return 0
