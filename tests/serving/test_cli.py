"""``rakuten serve ...``: flags, defaults and fail-fast configuration errors (one line, non-zero exit, no server)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devtools.local_servers import free_port
from rakuten_cli.main import main
from serving.cli import build_model, build_parser
from serving.kserve_compat import import_model_server

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def test_defaults_differ_from_plain_kserve_where_it_matters() -> None:
    kserve_parser = import_model_server().parser
    predictor = build_parser("predictor", kserve_parser).parse_args([])
    assert (predictor.model_name, predictor.enable_grpc, predictor.model_dir) == ("rakuten", False, "/mnt/models")
    assert (predictor.max_batch_size, predictor.max_batch_delay_ms, predictor.workers) == (16, 5.0, 1)
    assert (predictor.max_products, predictor.max_text_chars, predictor.max_request_bytes) == (64, 50_000, 32 << 20)
    assert not predictor.enable_model_repository
    transformer = build_parser("transformer", kserve_parser).parse_args(
        ["--predictor_host", "p:80", "--max-image-pixels", "10", "--max_text_chars", "3"])
    assert (transformer.predictor_protocol, transformer.max_image_pixels, transformer.max_text_chars) == ("v2", 10, 3)
    assert (transformer.model_dir, transformer.predictor_request_timeout_seconds, transformer.enable_grpc) == \
        (None, 30.0, False)
    assert (transformer.max_products, transformer.hop_products, transformer.max_request_bytes) == (256, 32, 16 << 20)
    # The project's flags take both spellings; KServe's parser itself is left untouched.
    assert build_parser("predictor", kserve_parser).parse_args(["--max_batch_size", "3"]).max_batch_size == 3
    assert kserve_parser.parse_args([]).model_name == "model"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    assert "rakuten serve {predictor|transformer}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "predictor", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-batch-size" in out and "--http_port" in out and "--bind_host" in out
    # gRPC is not served: no help line may claim otherwise.
    flat = " ".join(out.split())
    assert "--grpc_port GRPC_PORT unused: gRPC is not served (HTTP/REST V2 only)" in flat
    assert "--enable_grpc ENABLE_GRPC must stay false: gRPC is not served" in flat
    assert "The GRPC Port listened to" not in flat and "Enable gRPC" not in flat
    assert "--enable-model-repository" in flat and "Trusted networks only" in flat


def test_the_transformer_ignores_a_bundle_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    opts = build_parser("transformer", import_model_server().parser).parse_args(
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
