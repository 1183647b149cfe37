"""Run the installed ``rakuten`` command the way a user does: a subprocess of this venv's console script."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.paths import REPO_ROOT

RAKUTEN = Path(sys.executable).parent / "rakuten"


def rakuten(*args: str, env: Mapping[str, str] | None = None, unset: Iterable[str] = (), timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """``rakuten ARGS`` from the repository root, output captured as text.

    The environment is this process's, with ``env`` added and the names in ``unset`` removed. ``check``:
    raise ``AssertionError`` with the end of stderr when the command exits non-zero.
    """
    assert RAKUTEN.is_file(), f"{RAKUTEN} is not installed: `make venv` (pip install -e .) puts it there"
    run_env = {k: v for k, v in os.environ.items() if k not in set(unset)}
    run_env.update(env or {})
    proc = subprocess.run([str(RAKUTEN), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env=run_env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"rakuten {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
