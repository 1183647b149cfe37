"""``rakuten serve predictor|transformer [flags]``: parse flags, load the model, start KServe's server.

Flags: the role's own, kebab-case (``--model-dir``, ``--max-batch-size``...; the snake_case spellings are accepted
too, unlisted), then KServe's inherited ones in KServe's spelling (``--http_port``, ``--model_name``,
``--predictor_host``...), parsed from a copy of KServe's parser (:mod:`serving.kserve_flags`) so that ``--help`` and
flag errors need no kserve import. Defaults that differ from plain KServe: ``--model_name rakuten``;
``--predictor_protocol v2`` (the only protocol the transformer speaks to its predictor);
``--predictor_request_timeout_seconds 30`` (KServe: 600); HTTP only: gRPC is not served, so ``--enable_grpc`` must
stay false (``true`` is refused) and the other gRPC flags are accepted but unused; ``--workers`` must be 1 (the model
and its micro-batching queue live in one process; scale with replicas). ``--enable-model-repository`` turns on
KServe's load/unload routes (off by default: trusted networks only). Flags with no effect for a role (the gRPC ones,
the transformer's for the predictor, KServe's deprecated ``--protocol``) are accepted and not listed in its help.

The transformer needs no bundle: ``--model-dir`` given to it is ignored with a warning (so manifests written for
the older, bundle-bound transformer still start).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (set it to override): OpenMP threads that spin while waiting turn a
shared or CPU-limited machine's forward pass into a scheduling fight (12x slower in ``benchmarks/serve_bench.py``).

Importing kserve parses the command line (see :mod:`serving.kserve_compat`), so kserve is imported, after the flags
are parsed, with an empty one, and the parsed namespace is handed to KServe.
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
from rakuten_mm.precision import PRECISION_ENV, PRECISIONS
from serving import kserve_compat, kserve_flags
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


# KServe's flags, by what they do for each role (the rest are accepted and not listed: see the epilog).
SERVER_FLAGS = ("http_port", "model_name", "workers", "max_asyncio_workers", "enable_docs_url",
                "enable_latency_logging", "configure_logging", "log_config_file", "access_log_format", "event_loop",
                "timeout_keep_alive", "ssl_certfile", "ssl_keyfile")
HOP_FLAGS = ("predictor_host", "predictor_protocol", "predictor_use_ssl", "predictor_request_timeout_seconds",
             "predictor_request_retries")
GRPC_FLAGS = ("enable_grpc", "grpc_port", "max_threads", "grpc_max_send_message_length",
              "grpc_max_receive_message_length")
ROLE_HELP = {
    "predictor": "Serve a bundle (text and image members, ensemble) over HTTP/REST V2; the transformer calls it.",
    "transformer": "Turn raw products (text, JPEG/PNG bytes) into the predictor's tensors and call the predictor over "
                   "V2 REST; needs no bundle.",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag under its kebab-case spelling: the project's snake_case aliases (``--model_dir``, kept for manifests
    written for KServe's conventions) are accepted but not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        listed = [s for s in action.option_strings if "_" not in s]
        if listed and len(listed) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = listed
        return super()._format_action_invocation(action)


def build_parser(role: str) -> argparse.ArgumentParser:
    """The flags of ``rakuten serve ROLE``: the role's own first (kebab-case, snake_case aliases accepted), then
    KServe's (:mod:`serving.kserve_flags`, KServe's spelling); flags with no effect for the role are accepted unlisted.
    Builds without importing kserve, so ``--help`` and flag errors answer at once."""
    hidden = (*GRPC_FLAGS, "protocol", "enable_predictor_health_check", *(HOP_FLAGS if role == "predictor" else ()))
    grpc = ", ".join(f"--{f}" for f in GRPC_FLAGS[1:])
    if role == "predictor":
        transformer_only = ", ".join(f"--{f}" for f in (*HOP_FLAGS, "enable_predictor_health_check"))
        others = f"its transformer flags ({transformer_only}) and its deprecated --protocol"
    else:
        others = ("--enable_predictor_health_check (readiness always checks the predictor), KServe's deprecated "
                  "--protocol, and --model-dir (with a warning: the transformer needs no bundle)")
    parser = argparse.ArgumentParser(
        prog=f"rakuten serve {role}", formatter_class=_HelpFormatter, description=ROLE_HELP[role],
        usage=f"%(prog)s {'--predictor_host HOST:PORT ' if role == 'transformer' else ''}[flags]",
        epilog=f"Accepted and ignored (not listed above): KServe's gRPC flags ({grpc}: gRPC is not served, and "
               f"--enable_grpc true is refused), {others}.")
    own = parser.add_argument_group(f"{role} flags")
    kserve = parser.add_argument_group(f"KServe flags (inherited from kserve {kserve_compat.KSERVE_VERSION}, "
                                       "KServe's spelling)")
    _own_flags(role, own)
    overrides: dict[str, dict[str, Any]] = {
        "model_name": {"default": "rakuten"},
        "workers": {"help": "The number of uvicorn workers: must be 1 here (scale with replicas)."},
        "predictor_host": {"help": "HOST:PORT of the predictor (no scheme or path)."},
        "predictor_protocol": {"default": "v2", "help": "The protocol to the predictor: v2 (REST) is the only one "
                                                        "allowed."},
        "predictor_request_timeout_seconds": {
            "type": float, "default": DEFAULT_HOP_TIMEOUT_S,
            "help": "each request to the predictor must be answered within this time (504 otherwise); readiness "
                    "checks wait at most 5 s (KServe's default: 600)"},
        "enable_grpc": {"default": False},  # and true is refused (check_options)
    }
    inherited = kserve_flags.flags()
    # The transformer's hop to the predictor first: --predictor_host is the one flag it needs.
    order = [*(HOP_FLAGS if role == "transformer" else ()), *SERVER_FLAGS, *inherited]
    for dest in dict.fromkeys(order):
        flag, kwargs = inherited[dest]
        kwargs = {**kwargs, **overrides.get(dest, {})}
        if dest in hidden:
            kwargs["help"] = argparse.SUPPRESS
        kserve.add_argument(flag, dest=dest, **kwargs)
    return parser


def _own_flags(role: str, group: argparse._ArgumentGroup) -> None:
    if role == "predictor":
        d = PredictorSettings()
        group.add_argument("--model-dir", "--model_dir", default=DEFAULT_MODEL_DIR, metavar="DIR|s3://...",
                           help="the model bundle: a directory, an s3:// URI, or KServe's storageUri mount")
        group.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                           help="auto: CUDA when present, else CPU")
        group.add_argument("--precision", choices=PRECISIONS, default=None,
                           help="image backbone numerics: auto (channels-last, plus bf16 where the hardware computes "
                                f"it natively), fp32 or bf16; unset (None): ${PRECISION_ENV}, else auto. Serve with "
                                "the precision the bundle was trained with (config.json: train_config.precision)")
        group.add_argument("--max-batch-size", "--max_batch_size", type=int, default=d.max_batch_size, metavar="N",
                           help="rows per merged forward pass; 1 turns micro-batching off")
        group.add_argument("--max-batch-delay-ms", "--max_batch_delay_ms", type=float, default=d.max_batch_delay_ms,
                           metavar="MS", help="how long the first request of a batch waits for others to join")
        defaults: Any = d
    else:
        t = TransformerSettings(predictor_host="unset:0")
        group.add_argument("--hop-products", "--hop_products", type=int, default=t.hop_products, metavar="N",
                           help="products per request to the predictor: larger requests are sent in chunks of this "
                                "size (at most the predictor's --max-products)")
        group.add_argument("--max-image-pixels", "--max_image_pixels", type=int, default=t.max_image_pixels,
                           metavar="N", help="images declaring more pixels are rejected with 400 (decompression bombs)")
        group.add_argument("--max-request-pixels", "--max_request_pixels", type=int, default=t.max_request_pixels,
                           metavar="N", help="requests whose images declare more pixels in all are rejected with 400")
        group.add_argument("--decode-threads", "--decode_threads", type=int, default=t.decode_threads, metavar="N",
                           help="threads decoding images, shared by all requests (bounds decoding memory)")
        group.add_argument("--model-dir", "--model_dir", default=None, help=argparse.SUPPRESS)
        defaults = t
    group.add_argument("--max-products", "--max_products", type=int, default=defaults.max_products, metavar="N",
                       help="products per request; more is a 400")
    group.add_argument("--max-text-chars", "--max_text_chars", type=int, default=defaults.max_text_chars, metavar="N",
                       help="characters per designation or description; more is a 400")
    group.add_argument("--max-request-bytes", "--max_request_bytes", type=int, metavar="N",
                       default=PREDICTOR_MAX_REQUEST_BYTES if role == "predictor" else TRANSFORMER_MAX_REQUEST_BYTES,
                       help="larger request bodies (also once decompressed) are rejected with 400")
    group.add_argument("--bind-host", "--bind_host", default="0.0.0.0", metavar="ADDRESS",
                       help="address the HTTP server binds (127.0.0.1 for local runs)")
    group.add_argument("--enable-model-repository", "--enable_model_repository", action="store_true",
                       help="serve KServe's model repository routes (/v2/repository/models/NAME/load|unload); "
                            "any caller could unload the model: trusted networks only")


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
            model_dir=opts.model_dir, device=opts.device, precision=opts.precision, max_batch_size=opts.max_batch_size,
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
    opts = build_parser(role).parse_args(flags)
    check_options(role, opts)
    model_server = kserve_compat.import_model_server()  # the first kserve import: before build_model's
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
