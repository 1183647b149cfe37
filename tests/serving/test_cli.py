"""``rakuten serve ...``: flags, defaults and fail-fast configuration errors (one line, non-zero exit, no server)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

import pytest

from devtools.local_servers import free_port
from rakuten_cli.main import main
from serving import kserve_flags
from serving.cli import HOP_FLAGS, build_model, build_parser
from serving.kserve_compat import import_model_server

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def test_defaults_differ_from_plain_kserve_where_it_matters() -> None:
    kserve_parser = import_model_server().parser
    predictor = build_parser("predictor").parse_args([])
    assert (predictor.model_name, predictor.enable_grpc, predictor.model_dir) == ("rakuten", False, "/mnt/models")
    assert (predictor.max_batch_size, predictor.max_batch_delay_ms, predictor.workers) == (16, 5.0, 1)
    assert (predictor.max_products, predictor.max_text_chars, predictor.max_request_bytes) == (64, 50_000, 32 << 20)
    assert not predictor.enable_model_repository
    transformer = build_parser("transformer").parse_args(
        ["--predictor_host", "p:80", "--max-image-pixels", "10", "--max_text_chars", "3"])
    assert (transformer.predictor_protocol, transformer.max_image_pixels, transformer.max_text_chars) == ("v2", 10, 3)
    assert (transformer.model_dir, transformer.predictor_request_timeout_seconds, transformer.enable_grpc) == \
        (None, 30.0, False)
    assert (transformer.max_products, transformer.hop_products, transformer.max_request_bytes) == (256, 32, 16 << 20)
    # The project's flags take both spellings; KServe's parser itself is left untouched.
    assert build_parser("predictor").parse_args(["--max_batch_size", "3"]).max_batch_size == 3
    assert build_parser("predictor").parse_args(["--model_dir", "b", "--bind_host", "h"]).model_dir == "b"
    assert kserve_parser.parse_args([]).model_name == "model"


def _actions(parser: argparse.ArgumentParser) -> dict[str, tuple[Any, ...]]:
    def kind(convert: Any) -> Any:
        # KServe's booleans are lambdas around its strtobool: compare what they do.
        return ("bool", convert("true"), convert("0")) if getattr(convert, "__name__", "") in (
            "<lambda>", "strtobool") else convert

    return {a.dest: (a.option_strings, a.default, a.choices, a.help, a.nargs, a.const, kind(a.type))
            for a in parser._actions}


def test_the_copy_of_kserves_flags_matches_kserve() -> None:
    """serving.kserve_flags parses flags without importing kserve; it must say what kserve's own parser says."""
    assert _actions(kserve_flags.parser()) == _actions(import_model_server().parser)
    # Every flag KServe defines reaches the namespace handed to KServe, under KServe's dest.
    for role in ("predictor", "transformer"):
        assert set(vars(build_parser(role).parse_args([]))) >= set(kserve_flags.flags())


def _listed_flags(help_text: str) -> list[str]:
    """The flags of a help text's option lines, in order."""
    return [line.split()[0].rstrip(",") for line in help_text.splitlines() if line.startswith("  --")]


@pytest.mark.parametrize("role", ["predictor", "transformer"])
def test_help_lists_the_roles_own_flags_first_then_kserves(role: str) -> None:
    text = build_parser(role).format_help()
    own, kserve = text.split(f"\n{role} flags:\n")[1].split("\nKServe flags")
    inherited = {flag for flag, _ in kserve_flags.flags().values()}
    own_flags, kserve_flags_listed = _listed_flags(own), _listed_flags(kserve)
    assert own_flags and kserve_flags_listed
    assert not inherited & set(own_flags) and set(kserve_flags_listed) <= inherited
    # One style for the project's flags (kebab-case); the snake_case aliases are accepted, not listed.
    assert all("_" not in flag for flag in own_flags)
    assert "--max-products" in own_flags and "--max_products" not in text and "--bind-host" in own_flags
    assert ("--model-dir" in own_flags) is (role == "predictor")
    assert "--http_port" in kserve_flags_listed and "--model_name" in kserve_flags_listed
    for hidden in ("--grpc_port", "--protocol", "--enable_predictor_health_check"):
        assert hidden not in own_flags + kserve_flags_listed
    hop = [f"--{dest}" for dest in HOP_FLAGS]
    if role == "predictor":  # the transformer's flags have no effect on the predictor: not listed
        assert not set(hop) & set(kserve_flags_listed)
    else:  # what the transformer needs most comes first
        assert kserve_flags_listed[:len(hop)] == hop


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    assert "rakuten serve {predictor|transformer}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "predictor", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-batch-size" in out and "--http_port" in out and "--bind-host" in out
    # gRPC is not served: no help line may claim otherwise.
    flat = " ".join(out.split())
    assert "KServe's gRPC flags (--grpc_port, --max_threads," in flat
    assert "gRPC is not served, and --enable_grpc true is refused" in flat
    assert "The GRPC Port listened to" not in flat and "Enable gRPC" not in flat
    assert "--enable-model-repository" in flat and "trusted networks only" in flat


def test_the_transformer_ignores_a_bundle_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    opts = build_parser("transformer").parse_args(
        ["--predictor_host", "p:80", "--model_dir", "/somewhere/bundle"])
    with caplog.at_level("WARNING"):
        model = build_model("transformer", opts)
    assert "--model_dir /somewhere/bundle is ignored: the transformer needs no bundle" in caplog.text
    assert model.load() and model.ready


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.mark.parametrize(("argv", "message"), [
    (["serve"], "allowed roles: ['predictor', 'transformer'], got none"),
    (["serve", "explainer"], "allowed roles: ['predictor', 'transformer'], got ['explainer']"),
    (["serve", "predictor", "--workers", "2"], "--workers must be 1"),
    (["serve", "predictor", "--max-batch-size", "0"], "--max-batch-size must be at least 1"),
    (["serve", "predictor", "--max-batch-delay-ms", "-3"], "--max-batch-delay-ms must lie in [0, 10000]"),
    (["serve", "predictor", "--max-request-bytes", "10"], "--max-request-bytes must be at least 1024"),
    (["serve", "predictor", "--model_dir", "/nonexistent/bundle"], "no such directory: /nonexistent/bundle"),
    (["serve", "transformer"], "the transformer needs --predictor_host HOST:PORT"),
    (["serve", "transformer", "--predictor_host", "p:80", "--predictor_protocol", "v1"],
     "allowed --predictor_protocol v2, got v1"),
    (["serve", "transformer", "--predictor_host", "http://p:80/x"], "--predictor_host must be HOST:PORT"),
    (["serve", "transformer", "--predictor_host", "p:80", "--max-image-pixels", "0"],
     "--max-image-pixels must be positive, got 0"),
    (["serve", "predictor", "--enable_grpc", "true"], "--enable_grpc true is not supported: gRPC is not served "
     "(HTTP/REST V2 only); allowed: --enable_grpc false"),
    (["serve", "transformer", "--predictor_host", "p:80", "--enable_grpc", "true"], "gRPC is not served"),
    (["serve", "transformer", "--predictor_host", "p:80", "--hop-products", "50", "--max-products", "10"],
     "--hop-products (50) must not exceed --max-products (10)"),
    (["serve", "transformer", "--predictor_host", "p:80", "--max-request-pixels", "0"],
     "--max-request-pixels must be positive, got 0"),
    (["serve", "predictor", "--max-products", "0"], "--max-products must be positive, got 0"),
])
def test_configuration_errors_exit_with_one_line(argv: list[str], message: str, port: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{port}", str(port)) for a in argv]
    if argv[1:2] in (["predictor"], ["transformer"]):
        argv += ["--http_port", str(port), "--bind_host", "127.0.0.1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err


def test_a_busy_port_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "predictor", "--model_dir", str(tmp_path), "--http_port", str(port),
                     "--bind_host", "127.0.0.1"]) == 1
    assert f"--http_port {port} is already in use on 127.0.0.1" in capsys.readouterr().err


def test_a_bad_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "predictor", "--http_port", "eighty"])
    assert exit_info.value.code == 2
    assert "argument --http_port: invalid int value: 'eighty'" in capsys.readouterr().err
