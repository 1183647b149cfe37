"""``rakuten serve predictor|transformer [flags]``: parse flags, load the model, start KServe's server.

Flags are KServe's own (``--http_port``, ``--model_name``, ``--predictor_host``, ...) plus the project's. Defaults
that differ from plain KServe: ``--model_name rakuten``; ``--predictor_protocol v2`` (the only protocol the
transformer speaks to its predictor); ``--predictor_request_timeout_seconds 30`` (KServe: 600); HTTP only: gRPC is
not served, so ``--enable_grpc`` must stay false (``true`` is refused) and ``--grpc_port`` is accepted but unused;
``--workers`` must be 1 (the model and its micro-batching queue live in one process; scale with replicas).
``--enable-model-repository`` turns on KServe's load/unload routes (off by default: trusted networks only).

The transformer needs no bundle: ``--model_dir`` given to it is ignored with a warning (so manifests written for
the older, bundle-bound transformer still start).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (set it to override): OpenMP threads that spin while waiting turn a
shared or CPU-limited machine's forward pass into a scheduling fight (12x slower in ``benchmarks/serve_bench.py``).

Importing kserve parses the command line (see :mod:`serving.kserve_compat`), so kserve is imported with an empty one
and the flags are parsed once, here, into one namespace that is handed to KServe.
"""

from __future__ import annotations

import argparse
import copy
import errno
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from rakuten_mm.errors import ConfigError
from serving import kserve_compat
from serving.settings import (
    DEFAULT_HOP_TIMEOUT_S,
    DEFAULT_MODEL_DIR,
    PREDICTOR_MAX_REQUEST_BYTES,
    TRANSFORMER_MAX_REQUEST_BYTES,
    PredictorSettings,
    TransformerSettings,
)

ROLES = ("predictor", "transformer")
USAGE = "usage: rakuten serve {predictor|transformer} [flags]  (rakuten serve predictor --help lists them)"
NO_GRPC = "gRPC is not served (HTTP/REST V2 only)"
log = logging.getLogger(__name__)


def build_parser(role: str, kserve_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"rakuten serve {role}", parents=[copy.deepcopy(kserve_parser)],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     conflict_handler="resolve")
    parser.set_defaults(model_name="rakuten", predictor_protocol="v2")
    # KServe's gRPC flags stay accepted (manifests and scripts pass them) but say what they do here: nothing.
    parser.add_argument("--enable_grpc", default=False, type=_strtobool,
                        help=f"must stay false: {NO_GRPC}")
    parser.add_argument("--grpc_port", default=8081, type=int, help=f"unused: {NO_GRPC}")
    for flag in ("--max_threads", "--grpc_max_send_message_length", "--grpc_max_receive_message_length"):
        parser.add_argument(flag, type=int, default=kserve_parser.get_default(flag.lstrip("-")),
                            help=f"unused: {NO_GRPC}")
    parser.add_argument("--bind_host", "--bind-host", default="0.0.0.0",
                        help="address the HTTP server binds (127.0.0.1 for local runs)")
    parser.add_argument("--max_request_bytes", "--max-request-bytes", type=int,
                        default=PREDICTOR_MAX_REQUEST_BYTES if role == "predictor" else TRANSFORMER_MAX_REQUEST_BYTES,
                        help="larger request bodies (also once decompressed) are rejected with 400")
    parser.add_argument("--enable_model_repository", "--enable-model-repository", action="store_true",
                        help="serve KServe's model repository routes (/v2/repository/models/NAME/load|unload); "
                             "off by default: any caller could unload the model. Trusted networks only")
    if role == "predictor":
        d = PredictorSettings()
        parser.add_argument("--model_dir", "--model-dir", default=DEFAULT_MODEL_DIR,
                            help="the model bundle: a directory, an s3:// URI, or KServe's storageUri mount")
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
        parser.add_argument("--max_batch_size", "--max-batch-size", type=int, default=d.max_batch_size,
                            help="rows per merged forward pass; 1 turns micro-batching off")
        parser.add_argument("--max_batch_delay_ms", "--max-batch-delay-ms", type=float,
                            default=d.max_batch_delay_ms,
                            help="how long the first request of a batch waits for others to join")
        _limits(parser, d)
    else:
        t = TransformerSettings(predictor_host="unset:0")
        parser.add_argument("--model_dir", "--model-dir", default=None,
                            help="ignored (with a warning): the transformer needs no bundle")
        parser.add_argument("--predictor_request_timeout_seconds", type=float, default=DEFAULT_HOP_TIMEOUT_S,
                            help="each request to the predictor must be answered within this time (504 otherwise); "
                                 "readiness checks wait at most 5 s")
        parser.add_argument("--enable_predictor_health_check", action="store_true",
                            help="no effect: readiness always checks the predictor")
        parser.add_argument("--hop_products", "--hop-products", type=int, default=t.hop_products,
                            help="products per request to the predictor: larger requests are sent in chunks of "
                                 "this size (at most the predictor's --max-products)")
        parser.add_argument("--max_image_pixels", "--max-image-pixels", type=int, default=t.max_image_pixels,
                            help="images declaring more pixels are rejected with 400 (decompression bombs)")
        parser.add_argument("--max_request_pixels", "--max-request-pixels", type=int, default=t.max_request_pixels,
                            help="requests whose images declare more pixels in all are rejected with 400")
        parser.add_argument("--decode_threads", "--decode-threads", type=int, default=t.decode_threads,
                            help="threads decoding images, shared by all requests (bounds decoding memory)")
        _limits(parser, t)
    return parser


def _limits(parser: argparse.ArgumentParser, defaults: Any) -> None:
    parser.add_argument("--max_products", "--max-products", type=int, default=defaults.max_products,
                        help="products per request; more is a 400")
    parser.add_argument("--max_text_chars", "--max-text-chars", type=int, default=defaults.max_text_chars,
                        help="characters per designation or description; more is a 400")


def _strtobool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{flag} {port} is already in use on {host}; allowed: a free port") from None
            raise ConfigError(f"cannot bind {flag} {port} on {host}: {exc}") from None


def check_options(role: str, opts: argparse.Namespace) -> None:
    """Fail fast on configurations that would start a broken or silently misleading server."""
    if opts.enable_grpc:
        raise ConfigError(f"--enable_grpc true is not supported: {NO_GRPC}; allowed: --enable_grpc false "
                          "(the default)")
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
        if opts.hop_products > opts.max_products:
            raise ConfigError(f"--hop-products ({opts.hop_products}) must not exceed --max-products "
                              f"({opts.max_products})")
    _check_port_free(opts.bind_host, opts.http_port, "--http_port")


def build_model(role: str, opts: argparse.Namespace) -> Any:
    if role == "predictor":
        from serving.batching import MicroBatcher
        from serving.predictor import RakutenPredictor

        MicroBatcher.check(opts.max_batch_size, opts.max_batch_delay_ms)
        return RakutenPredictor(opts.model_name, PredictorSettings(
            model_dir=opts.model_dir, device=opts.device, max_batch_size=opts.max_batch_size,
            max_batch_delay_ms=opts.max_batch_delay_ms, max_products=opts.max_products,
            max_text_chars=opts.max_text_chars))
    from serving.transformer import RakutenTransformer

    if opts.model_dir is not None:
        log.warning("--model_dir %s is ignored: the transformer needs no bundle (the predictor does all "
                    "bundle-specific work)", opts.model_dir)
    return RakutenTransformer(opts.model_name, TransformerSettings(
        predictor_host=opts.predictor_host, predictor_use_ssl=opts.predictor_use_ssl,
        predictor_timeout_s=opts.predictor_request_timeout_seconds, max_products=opts.max_products,
        hop_products=opts.hop_products, max_text_chars=opts.max_text_chars, max_image_pixels=opts.max_image_pixels,
        max_request_pixels=opts.max_request_pixels, decode_threads=opts.decode_threads))


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
    model_server = kserve_compat.import_model_server()
    opts = build_parser(role, model_server.parser).parse_args(flags)
    check_options(role, opts)
    model = build_model(role, opts)
    model.load()

    from kserve import PredictorConfig

    from serving.server import RakutenModelServer, ServerOptions

    # KServe reads a few flags (logging setup) from its import-time namespace: hand it ours.
    kserve_compat.use_options(model_server, opts)
    server = RakutenModelServer(
        bind_host=opts.bind_host, http_port=opts.http_port, grpc_port=opts.grpc_port, workers=1,
        max_threads=opts.max_threads, max_asyncio_workers=opts.max_asyncio_workers, enable_grpc=False,
        enable_docs_url=opts.enable_docs_url, enable_latency_logging=opts.enable_latency_logging,
        access_log_format=opts.access_log_format, event_loop=opts.event_loop,
        timeout_keep_alive=opts.timeout_keep_alive, ssl_certfile=opts.ssl_certfile, ssl_keyfile=opts.ssl_keyfile,
        options=ServerOptions(model_name=opts.model_name, max_request_bytes=opts.max_request_bytes,
                              enable_model_repository=opts.enable_model_repository,
                              enable_docs_url=opts.enable_docs_url),
        predictor_config=PredictorConfig(
            predictor_host=opts.predictor_host if role == "transformer" else None,
            predictor_protocol="v2", predictor_use_ssl=opts.predictor_use_ssl,
            predictor_request_timeout_seconds=max(1, int(opts.predictor_request_timeout_seconds)),
            predictor_request_retries=opts.predictor_request_retries, predictor_health_check=False))
    server.start([model])
    return 0
