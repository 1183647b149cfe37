"""Step and CLI processes exit without the final garbage collection (rakuten_mm.process_exit, issue 11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _lines(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_collector_is_frozen_at_exit_once_and_only_then():
    code = """
import atexit, gc
atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))  # runs after the freeze
from rakuten_mm import process_exit
before = atexit._ncallbacks()
process_exit.skip_final_collection()
process_exit.skip_final_collection()
print('registered:', atexit._ncallbacks() - before)
print('frozen now:', gc.get_freeze_count() > 0, flush=True)
"""
    assert _lines(code) == ["registered: 1", "frozen now: False", "frozen at exit: True"]


@pytest.mark.parametrize("entry", ["import rakuten_mm.steps", "from rakuten_cli.main import main; main(['--help'])"])
def test_a_step_process_and_the_cli_register_it(entry):
    code = f"""
try:
    {entry}
except SystemExit:
    pass
from rakuten_mm import process_exit
print('registered:', process_exit._registered)
"""
    assert _lines(code)[-1] == "registered: True"
