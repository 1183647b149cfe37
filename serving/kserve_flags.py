"""KServe's server flags (``kserve.model_server.parser``) as data, so flags parse and ``--help`` answers without
importing kserve (1.5-2 s: fastapi, kubernetes, pandas).

A copy of the parser of kserve :data:`serving.kserve_compat.KSERVE_VERSION`, flag by flag and unchanged (name,
type, default, choices, help); ``tests/serving/test_cli.py`` compares it with the real parser, so an upgrade that
adds, drops or changes a flag fails there. :mod:`serving.cli` groups them per role and overrides a few defaults.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

# The environment variables KServe reads for the TLS flags' defaults (kserve.constants).
TLS_CERT_ENV, TLS_KEY_ENV = "KSERVE_TLS_CERT_FILE", "KSERVE_TLS_KEY_FILE"
MAX_GRPC_MESSAGE_LENGTH = 8388608
PROTOCOLS = ["v1", "v2", "grpc-v2"]


def strtobool(value: str) -> bool:
    """KServe's ``utils.strtobool``, with argparse's error for anything else."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def flags() -> dict[str, tuple[str, dict[str, Any]]]:
    """dest → (option string, ``add_argument`` keywords), in KServe's order (TLS defaults read from the env now)."""
    def boolean(default: bool, help: str) -> dict[str, Any]:
        return {"default": default, "type": strtobool, "help": help}

    return {
        "http_port": ("--http_port", {"default": 8080, "type": int,
                                      "help": "The HTTP Port listened to by the model server."}),
        "grpc_port": ("--grpc_port", {"default": 8081, "type": int,
                                      "help": "The GRPC Port listened to by the model server."}),
        "workers": ("--workers", {"default": 1, "type": int,
                                  "help": "The number of uvicorn workers for multi-processing."}),
        "max_threads": ("--max_threads", {"default": 4, "type": int,
                                          "help": "The max number of gRPC processing threads."}),
        "max_asyncio_workers": ("--max_asyncio_workers", {"default": None, "type": int,
                                                          "help": "The max number of asyncio workers to spawn."}),
        "enable_grpc": ("--enable_grpc", boolean(True, "Enable gRPC for the model server.")),
        "enable_docs_url": ("--enable_docs_url", boolean(False, "Enable docs url '/docs' to display Swagger UI.")),
        "enable_latency_logging": ("--enable_latency_logging", boolean(
            True, "Enable a log line per request with preprocess/predict/postprocess latency metrics.")),
        "configure_logging": ("--configure_logging", boolean(True, "Enable to configure KServe and Uvicorn logging.")),
        "log_config_file": ("--log_config_file", {
            "default": None, "type": str,
            "help": "File path containing UvicornServer's log config. Needs to be a yaml or json file."}),
        "access_log_format": ("--access_log_format", {
            "default": None, "type": str,
            "help": "The asgi access logging format. It allows to override only the `uvicorn.access`'s format "
                    "configuration with a richer set of fields"}),
        "event_loop": ("--event-loop", {
            "default": "auto", "type": str, "choices": ["auto", "asyncio", "uvloop"],
            "help": "Event loop implementation used by the HTTP server. Valid values are 'auto' (default; use uvloop "
                    "if available), 'asyncio', or 'uvloop'."}),
        "timeout_keep_alive": ("--timeout-keep-alive", {
            "default": 65, "type": int,
            "help": "Timeout for keep-alive connections in seconds. The keep-alive timeout should be longer than the "
                    "proxy idle timeout to avoid intermittent 503 errors from the proxy (e.g. Istio/Envoy)."}),
        "model_name": ("--model_name", {"default": "model", "type": str,
                                        "help": "The name of the model used on the endpoint path."}),
        "predictor_host": ("--predictor_host", {
            "default": None, "type": str,
            "help": "The host name used for calling to the predictor from transformer."}),
        "protocol": ("--protocol", {
            "default": "v1", "type": str, "choices": PROTOCOLS,
            "help": "The inference protocol used for calling to the predictor from transformer. Deprecated and "
                    "replaced by --predictor_protocol"}),
        "predictor_protocol": ("--predictor_protocol", {
            "default": "v1", "type": str, "choices": PROTOCOLS,
            "help": "The inference protocol used for calling to the predictor from transformer."}),
        "predictor_use_ssl": ("--predictor_use_ssl", boolean(
            False, "Use ssl for the http connection to the predictor.")),
        "predictor_request_timeout_seconds": ("--predictor_request_timeout_seconds", {
            "default": 600, "type": int, "help": "The timeout seconds for the request sent to the predictor."}),
        "grpc_max_send_message_length": ("--grpc_max_send_message_length", {
            "default": MAX_GRPC_MESSAGE_LENGTH, "type": int, "help": "The max message length for gRPC send message."}),
        "grpc_max_receive_message_length": ("--grpc_max_receive_message_length", {
            "default": MAX_GRPC_MESSAGE_LENGTH, "type": int,
            "help": "The max message length for gRPC receive message."}),
        "predictor_request_retries": ("--predictor_request_retries", {
            "default": 0, "type": int, "help": "The number of retries if predictor request fails. Defaults to 0."}),
        "enable_predictor_health_check": ("--enable_predictor_health_check", {
            "action": "store_true",
            "help": "The Transformer will perform readiness check for the predictor in addition to its health check. "
                    "By default it is disabled."}),
        "ssl_certfile": ("--ssl_certfile", {
            "default": os.environ.get(TLS_CERT_ENV), "type": str,
            "help": f"The path to the SSL certificate file for serving HTTPS. Falls back to {TLS_CERT_ENV} env var "
                    "if not set."}),
        "ssl_keyfile": ("--ssl_keyfile", {
            "default": os.environ.get(TLS_KEY_ENV), "type": str,
            "help": f"The path to the SSL private key file for serving HTTPS. Falls back to {TLS_KEY_ENV} env var "
                    "if not set."}),
    }


def parser() -> argparse.ArgumentParser:
    """The copy as one parser, like KServe's (``add_help=False``)."""
    out = argparse.ArgumentParser(add_help=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for dest, (flag, kwargs) in flags().items():
        out.add_argument(flag, dest=dest, **kwargs)
    return out
