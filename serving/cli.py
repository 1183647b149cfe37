"""``rakuten serve predictor|transformer [flags]``: parse flags, load the model, start KServe's server.

Flags are KServe's own (``--http_port``, ``--grpc_port``, ``--model_name``, ``--predictor_host``, ...) plus the
project's. Defaults that differ from plain KServe: ``--model_name rakuten``; gRPC off (``--enable_grpc true`` turns it
on; its port is then checked to be free and distinct from the HTTP port, since a clash would be silent);
``--predictor_protocol v2``, the only protocol the transformer accepts. ``--workers`` must be 1: the model and its
micro-batching queue live in one process (scale with replicas instead).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (set it to override): OpenMP threads that spin while waiting turn a
shared or CPU-limited machine's forward pass into a scheduling fight (12x slower in ``benchmarks/serve_bench.py``).

Importing kserve parses ``sys.argv`` (known args only, at import time), so kserve is imported here with an empty
command line and the flags are parsed once, by this module, into one namespace that is handed to KServe.
"""

from __future__ import annotations

import argparse
import copy
import errno
import os
import socket
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from rakuten_mm.errors import ConfigError

ROLES = ("predictor", "transformer")
USAGE = "usage: rakuten serve {predictor|transformer} [flags]  (rakuten serve predictor --help lists them)"


def _import_model_server() -> ModuleType:
    saved = sys.argv
    sys.argv = saved[:1] or ["rakuten"]
    try:
        import kserve.model_server as model_server
    finally:
        sys.argv = saved
    return model_server


def build_parser(role: str, kserve_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from rakuten_mm.image import DEFAULT_MAX_PIXELS
    from serving.predictor import DEFAULT_MODEL_DIR, PredictorSettings
    from serving.server import DEFAULT_MAX_REQUEST_BYTES

    parser = argparse.ArgumentParser(prog=f"rakuten serve {role}", parents=[copy.deepcopy(kserve_parser)],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(model_name="rakuten", enable_grpc=False, predictor_protocol="v2")
    parser.add_argument("--model_dir", "--model-dir", default=DEFAULT_MODEL_DIR,
                        help="the model bundle: a directory, an s3:// URI, or KServe's storageUri mount")
    parser.add_argument("--bind_host", "--bind-host", default="0.0.0.0",
                        help="address the HTTP server binds (127.0.0.1 for local runs)")
    parser.add_argument("--max_request_bytes", "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="larger request bodies (also once decompressed) are rejected with 400")
    if role == "predictor":
        d = PredictorSettings()
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
        parser.add_argument("--max_batch_size", "--max-batch-size", type=int, default=d.max_batch_size,
                            help="rows per merged forward pass; 1 turns micro-batching off")
        parser.add_argument("--max_batch_delay_ms", "--max-batch-delay-ms", type=float,
                            default=d.max_batch_delay_ms,
                            help="how long the first request of a batch waits for others to join")
    else:
        parser.add_argument("--max_image_pixels", "--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                            help="images declaring more pixels are rejected with 400 (decompression bombs)")
        parser.add_argument("--max_text_chars", "--max-text-chars", type=int, default=10_000,
                            help="designation/description are truncated to this many characters (not rejected)")
    return parser


def _check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn and gRPC do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{flag} {port} is already in use on {host}; allowed: a free port") from None
            raise ConfigError(f"cannot bind {flag} {port} on {host}: {exc}") from None


def check_options(role: str, opts: argparse.Namespace) -> None:
    """Fail fast on configurations that would start a broken or silently clashing server."""
    if opts.workers != 1:
        raise ConfigError(f"--workers must be 1 (the model and its batching queue live in one process; scale with "
                          f"replicas), got {opts.workers}")
    if opts.max_request_bytes < 1024:
        raise ConfigError(f"--max-request-bytes must be at least 1024, got {opts.max_request_bytes}")
    if role == "transformer":
        if opts.predictor_protocol != "v2":
            raise ConfigError(f"the transformer calls its predictor over V2 REST; allowed --predictor_protocol v2, "
                              f"got {opts.predictor_protocol}")
        if not opts.predictor_host:
            raise ConfigError("the transformer needs --predictor_host HOST:PORT (where the predictor listens)")
    _check_port_free(opts.bind_host, opts.http_port, "--http_port")
    if opts.enable_grpc:
        if opts.grpc_port == opts.http_port:
            raise ConfigError(f"--grpc_port must differ from --http_port, both are {opts.http_port}")
        _check_port_free("0.0.0.0", opts.grpc_port, "--grpc_port")


def build_model(role: str, opts: argparse.Namespace) -> Any:
    if role == "predictor":
        from serving.predictor import PredictorSettings, RakutenPredictor

        return RakutenPredictor(opts.model_name, PredictorSettings(
            model_dir=opts.model_dir, device=opts.device, max_batch_size=opts.max_batch_size,
            max_batch_delay_ms=opts.max_batch_delay_ms))
    from serving.transformer import RakutenTransformer, TransformerSettings

    return RakutenTransformer(opts.model_name, TransformerSettings(
        predictor_host=opts.predictor_host, model_dir=opts.model_dir, predictor_use_ssl=opts.predictor_use_ssl,
        predictor_timeout_s=opts.predictor_request_timeout_seconds, max_image_pixels=opts.max_image_pixels,
        max_text_chars=opts.max_text_chars))


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["serve"]:
        args = args[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not args or args[0] not in ROLES:
        raise ConfigError(f"{USAGE}; allowed roles: {list(ROLES)}, got {args[:1] or 'none'}")
    role, flags = args[0], args[1:]
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With spinning, a CPU shared with
    # other processes (or a pod's CPU limit) made the VGG16 forward up to 12x slower here (BENCHMARKS.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model_server = _import_model_server()
    opts = build_parser(role, model_server.parser).parse_args(flags)
    check_options(role, opts)
    model = build_model(role, opts)
    if role == "predictor":
        from serving.batching import MicroBatcher

        MicroBatcher.check(opts.max_batch_size, opts.max_batch_delay_ms)
    model.load()

    from kserve import PredictorConfig

    from serving.server import RakutenModelServer

    # KServe reads a few flags (logging setup, gRPC kwargs) from its import-time namespace: hand it ours.
    setattr(model_server, "args", opts)  # noqa: B010 - a module global, not an attribute of ours
    server = RakutenModelServer(
        bind_host=opts.bind_host, max_request_bytes=opts.max_request_bytes, http_port=opts.http_port,
        grpc_port=opts.grpc_port, workers=1, max_threads=opts.max_threads,
        max_asyncio_workers=opts.max_asyncio_workers, enable_grpc=opts.enable_grpc,
        enable_docs_url=opts.enable_docs_url, enable_latency_logging=opts.enable_latency_logging,
        access_log_format=opts.access_log_format, event_loop=opts.event_loop,
        timeout_keep_alive=opts.timeout_keep_alive, ssl_certfile=opts.ssl_certfile, ssl_keyfile=opts.ssl_keyfile,
        predictor_config=PredictorConfig(
            predictor_host=opts.predictor_host if role == "transformer" else None,
            predictor_protocol="v2", predictor_use_ssl=opts.predictor_use_ssl,
            predictor_request_timeout_seconds=opts.predictor_request_timeout_seconds,
            predictor_request_retries=opts.predictor_request_retries,
            predictor_health_check=opts.enable_predictor_health_check))
    server.start([model])
    return 0
