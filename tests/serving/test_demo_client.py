"""The demo client (devtools, not shipped in the serving image): an unreachable server is one ``error:`` line."""

from __future__ import annotations

import pytest

from devtools.demo_client import main
from devtools.local_servers import free_port

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def test_an_unreachable_server_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(["--url", f"127.0.0.1:{port}", "-n", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot classify through 127.0.0.1:{port}: "), lines
    assert "Traceback" not in captured.err
