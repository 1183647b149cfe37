"""``rakuten pipeline compile|run|submit|predict``: argument parsing and printing only.

compile   write the Kubeflow YAML of the training pipeline (default: the checked-in pipelines/training.yaml) or, with
          --pipeline batch-prediction, of the batch prediction pipeline (pipelines/batch_prediction.yaml), with the
          GPU node pool settings
run       run the training pipeline here with kfp.local (no cluster) and print the bundle, scores and gate decision
submit    upload the compiled YAML to a Kubeflow Pipelines API server and start a run
predict   run the batch prediction pipeline here with kfp.local: DATA + a model reference → one predictions CSV
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rakuten_mm.config import TrainConfig
from rakuten_mm.data import DataOptions
from rakuten_mm.errors import ConfigError
from rakuten_mm.registry import MODEL_NAME
from rakuten_mm.tracking import EXPERIMENT


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    TrainConfig.add_arguments(parser)
    DataOptions.add_arguments(parser)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the state dir)")
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--min-improvement", type=float, default=0.0,
                        help="gate: weighted F1 margin over the champion, both scored on this run's held-out test "
                             "rows, needed to move alias champion")
    parser.add_argument("--registered-model", default=MODEL_NAME, help="MLflow registered model name")


def build_parser() -> argparse.ArgumentParser:
    from pipelines.batch_pipeline import DEFAULT_MODEL, DEFAULT_SHARDS
    from pipelines.compile import DEFAULT_PACKAGE, PACKAGES
    from pipelines.submit import DEFAULT_EXPERIMENT
    from pipelines.training_pipeline import DEFAULT_SECRET

    parser = argparse.ArgumentParser(prog="rakuten pipeline", description="the Kubeflow pipelines: training and "
                                                                          "batch prediction")
    sub = parser.add_subparsers(dest="action", required=True)

    comp = sub.add_parser("compile", help="compile a pipeline to Kubeflow YAML")
    comp.add_argument("--pipeline", choices=tuple(PACKAGES), default="training",
                      help="which pipeline (default: %(default)s)")
    comp.add_argument("--out", default=None, help="YAML path (default: the pipeline's checked-in file, "
                                                  f"{DEFAULT_PACKAGE.name} or {PACKAGES['batch-prediction'].name})")
    comp.add_argument("--gpu-node-selector", action="append", metavar="KEY=VALUE", default=None,
                      help="node label of the GPU pool for the training steps (repeatable; default: "
                           "nvidia.com/gpu.present=true)")
    comp.add_argument("--gpu-toleration", action="append", metavar="KEY[=VALUE]:EFFECT", default=None,
                      help="taint of the GPU pool the training steps tolerate (repeatable; default: "
                           "nvidia.com/gpu:NoSchedule)")
    comp.add_argument("--cpu-only", action="store_true", help="no GPU request, node selector or toleration")
    comp.add_argument("--resources-preset", choices=("full", "small"), default="full",
                      help="CPU/memory requests of every step: full (the challenge data) or small (a small or "
                           "CPU-only cluster, demo-sized data) (default: %(default)s)")
    comp.add_argument("--step-resources", action="append", metavar="STEP=CPU,MEMORY[,CPU_LIMIT,MEMORY_LIMIT]",
                      default=None, help="override one step's requests (and limits) (repeatable)")
    comp.add_argument("--secret", default=DEFAULT_SECRET, help="Secret with S3 and MLflow credentials "
                                                               "(default: %(default)s)")
    comp.add_argument("--image", default=None, help="component image (default: components.base.IMAGE)")

    run = sub.add_parser("run", help="run the pipeline locally with kfp.local (no cluster)")
    run.add_argument("data", help="data directory or s3:// URI")
    run.add_argument("--out", required=True, help="bundle directory or s3:// URI")
    _add_run_options(run)
    _add_echo_options(run)
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="subprocess: every step in this virtualenv (default); docker: every step in the pipeline "
                          "image through a Docker API (Docker, or podman's: set DOCKER_HOST), as Kubeflow runs it")
    run.add_argument("--image", default=None, metavar="REF",
                     help="with --runner docker: the image to run (default: components.base.IMAGE, what "
                          "`make images` tags)")

    submit = sub.add_parser("submit", help="upload the compiled pipeline to Kubeflow and start a run")
    submit.add_argument("data", help="s3:// URI of the data, readable from the cluster")
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080/pipeline")
    submit.add_argument("--out", default="", help="s3:// URI for the bundle (default: the run's artifact store)")
    _add_run_options(submit)
    submit.add_argument("--deploy", action="store_true", help="deploy to KServe when champion moves")
    submit.add_argument("--canary-percent", type=int, default=0, help="with --deploy: canary traffic share")
    submit.add_argument("--deploy-name", default="rakuten", help="InferenceService name")
    submit.add_argument("--deploy-namespace", default="rakuten", help="InferenceService namespace")
    submit.add_argument("--package", default=str(DEFAULT_PACKAGE), help="compiled YAML (default: %(default)s)")
    submit.add_argument("--kfp-experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment")
    submit.add_argument("--run-name", default=None, help="KFP run name (default: rakuten-training-TIMESTAMP)")
    submit.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user)")
    submit.add_argument("--service-account", default=None, help="service account the run's pods use")

    predict = sub.add_parser("predict", help="batch-predict a catalogue with the batch prediction pipeline, locally "
                                             "with kfp.local (shards in parallel)")
    predict.add_argument("data", help="directory or s3:// URI holding X_test_update.csv and image_test/")
    predict.add_argument("--model", default=DEFAULT_MODEL,
                         help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle directory / s3:// URI "
                              "(default: %(default)s)")
    predict.add_argument("--out", required=True, help="predictions CSV: a file path or s3://bucket/key.csv")
    predict.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                         help="parallel shards, each a contiguous run of whole batches (default: %(default)s)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    DataOptions.add_arguments(predict)
    predict.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI of the registry (default: MLFLOW_TRACKING_URI, else sqlite in the "
                              "state dir)")
    _add_echo_options(predict)
    return parser


def _add_echo_options(parser: argparse.ArgumentParser) -> None:
    echo = parser.add_mutually_exclusive_group()
    echo.add_argument("--quiet", action="store_true", help="print only the result, no step lines")
    echo.add_argument("--verbose", action="store_true",
                      help="echo kfp.local's whole log (every step's executor input and outputs) instead of a line "
                           "per step start and end and the steps' own progress lines")


def cluster_settings(args: argparse.Namespace) -> Any:
    from pipelines.training_pipeline import (
        ClusterSettings,
        Toleration,
        parse_node_selector,
        preset_resources,
        step_resources,
    )

    if args.cpu_only and (args.gpu_node_selector or args.gpu_toleration):
        raise ConfigError("--cpu-only compiles without GPU settings: drop --gpu-node-selector/--gpu-toleration")
    resources = dict(preset_resources(args.resources_preset))
    resources.update(step_resources(text) for text in args.step_resources or ())
    kwargs: dict[str, Any] = {"gpu": not args.cpu_only, "secret": args.secret, "image": args.image,
                              "resources": tuple(resources.items())}
    if args.gpu_node_selector:
        kwargs["node_selector"] = tuple(parse_node_selector(s) for s in args.gpu_node_selector)
    if args.gpu_toleration:
        kwargs["tolerations"] = tuple(Toleration.parse(t) for t in args.gpu_toleration)
    return ClusterSettings(**kwargs)


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_pipeline

    print(f"wrote {compile_pipeline(args.out, cluster_settings(args), pipeline=args.pipeline)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.local_runner import run_local

    result = run_local(args.data, args.out, TrainConfig.from_args(args), DataOptions.from_args(args), args.tracking_uri,
                       args.experiment, args.min_improvement, registered_model=args.registered_model,
                       quiet=args.quiet, verbose=args.verbose, runner=args.runner, image=args.image)
    test, gate = result["test"], result["gate"]
    print(f"bundle: {result['bundle_uri']}")
    print(f"ensemble weights: {json.dumps(result['weights'], sort_keys=True)}")
    print(f"held-out test: weighted F1 {test['weighted_f1']:.4f}, macro F1 {test['macro_f1']:.4f}, "
          f"accuracy {test['accuracy']:.4f} ({test['rows']} rows)")
    print(f"registry: {args.registered_model} version {gate['model_version']}; {gate['decision']}")
    print(f"report: {result['report']}")
    print(f"MLflow run: {result['mlflow_run_id']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.local_runner import pipeline_arguments
    from pipelines.submit import SubmitRequest, submit
    from rakuten_mm.storage import is_s3

    for flag, uri in (("DATA", args.data), ("--out", args.out)):
        if uri and not is_s3(uri):
            raise ConfigError(f"{flag} must be an s3:// URI the cluster can read, got {uri!r}")
    if not 0 <= args.canary_percent <= 100:
        raise ConfigError(f"--canary-percent must be between 0 and 100, got {args.canary_percent}")
    arguments = {**pipeline_arguments(args.data, args.out, TrainConfig.from_args(args), DataOptions.from_args(args),
                                      args.tracking_uri, args.experiment, args.min_improvement, args.registered_model),
                 "deploy": args.deploy, "canary_percent": args.canary_percent, "deploy_name": args.deploy_name,
                 "deploy_namespace": args.deploy_namespace}
    request = SubmitRequest(arguments=arguments, package=Path(args.package), experiment=args.kfp_experiment,
                            **({"run_name": args.run_name} if args.run_name else {}), namespace=args.namespace,
                            service_account=args.service_account)
    done = submit(args.host, request)
    print(f"run {done.run_id} (pipeline version {done.version_id}): {done.url}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipelines.local_runner import predict_local

    result = predict_local(args.data, args.model, args.out, args.shards, DataOptions.from_args(args),
                           args.tracking_uri, args.device, quiet=args.quiet, verbose=args.verbose)
    print(f"wrote {result['rows']} predictions to {result['predictions_uri']}")
    print(f"model: {result['model']} (bundle sha256 {result['bundle_sha256']})")
    return 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "submit": cmd_submit, "predict": cmd_predict}


def main(argv: Sequence[str]) -> int:
    """``argv`` as ``rakuten`` forwards it (``["pipeline", ...]``) or without the leading ``pipeline``."""
    argv = list(argv)
    if argv and argv[0] == "pipeline":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    return COMMANDS[args.action](args)
