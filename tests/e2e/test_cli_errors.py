"""Every CLI failure a user can cause is one ``error:`` line on stderr and exit 1; usage errors exit 2 (argparse).

Each case runs the installed ``rakuten`` command as a user would and checks the WHOLE stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import rakuten

pytestmark = pytest.mark.e2e

# (arguments, words the error line must contain); {tmp} is a fresh temporary directory.
USER_ERRORS = [
    (["train", "/nonexistent/data", "--out", "{tmp}/b"], "/nonexistent/data"),
    (["train", "/nonexistent/data", "--out", "{tmp}/b", "--in-process", "--no-tracking"], "/nonexistent/data"),
    (["train", "{tmp}", "--out", "{tmp}/b", "--epochs-text", "0"], "epochs_text must be at least 1"),
    (["train", "{tmp}", "--out", "{tmp}/b", "--members", "text,sound"], "members must be distinct names"),
    (["train", "{tmp}", "--out", "{tmp}/b", "--members", "tfidf,image"], "tfidf needs text"),
    (["evaluate", "{tmp}/nobundle", "{tmp}"], "no such directory"),
    (["data", "validate", "{tmp}/nodata"], "nodata"),
    (["pipeline", "submit", "s3://bucket/data", "--host", "http://127.0.0.1:9/pipeline"], "cannot reach"),
    (["pipeline", "submit", "/local/data", "--host", "http://127.0.0.1:9/pipeline"], "must be an s3:// URI"),
    (["pipeline", "compile", "--out", "{tmp}/p.yaml", "--step-resources", "nope=1,1Gi"], "STEP=CPU,MEMORY"),
    (["deploy", "s3://bucket/bundle", "--kube-api", "http://127.0.0.1:9", "--timeout", "5"], "127.0.0.1:9"),
]

USAGE_ERRORS = [
    ["train", "{tmp}", "--out", "{tmp}/b", "--epochs-text", "abc"],
    ["train", "{tmp}", "--out", "{tmp}/b", "--device", "tpu"],
    ["pipeline"],
    ["data"],
    ["no-such-command"],
]


def _fill(args: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in args]


@pytest.mark.parametrize(("args", "words"), USER_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in
                                                             enumerate(USER_ERRORS)])
def test_user_error_is_one_error_line_and_exit_1(args: list[str], words: str, tmp_path: Path) -> None:
    proc = rakuten(*_fill(args, tmp_path), timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "b").exists()  # nothing half-written


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a[:3]) for a in USAGE_ERRORS])
def test_usage_error_exits_2_with_usage(args: list[str], tmp_path: Path) -> None:
    proc = rakuten(*_fill(args, tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr
