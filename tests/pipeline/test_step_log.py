"""What a local pipeline run shows: a line per step start and end (status, seconds, headline metric) and the steps'
own lines, from kfp.local's real log (captured here from a tiny pipeline of trivial components, run with
``SubprocessRunner(use_venv=False)`` as ``rakuten train`` runs its steps); ``--verbose`` shows all of it; ANSI codes
only on a terminal; a failed step still ends the run with its own error."""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.
import contextlib
import io
import random
import re
import threading
from typing import Any

import pytest
from kfp import dsl, local
from kfp.dsl import Metrics, Output

from pipelines.local_runner import _execute
from pipelines.step_log import ANSI, StepLog
from rakuten_cli.main import build_parser as rakuten_parser
from rakuten_cli.pipeline import build_parser as pipeline_parser
from rakuten_mm.errors import ConfigError

pytestmark = pytest.mark.pipeline


def _component(func: Any) -> Any:
    return dsl.component(func, base_image="python:3.11", packages_to_install=[], install_kfp_package=False)


@_component
def hello(epochs: int, metrics: Output[Metrics]) -> int:
    import sys

    for epoch in range(1, epochs + 1):
        print(f"text epoch {epoch}/{epochs}: train loss 0.5000, val weighted F1 0.2500", flush=True)
    print("\x1b[32mgreen\x1b[0m from the step", flush=True)
    sys.stderr.write("half a line ")
    sys.stderr.write("then its end\n")
    metrics.log_metric("val_weighted_f1", 0.75)
    metrics.log_metric("val_rows", 24.0)
    return epochs


@_component
def boom(n: int) -> int:
    from rakuten_mm.errors import ConfigError

    raise ConfigError(f"{n} is not allowed\nallowed: 0")


@dsl.pipeline(name="step-log")
def two_steps(epochs: int = 2) -> int:
    first = hello(epochs=epochs)
    return hello(epochs=first.outputs["Output"]).outputs["Output"]


@dsl.pipeline(name="step-log-failing")
def failing(epochs: int = 1) -> int:
    return boom(n=hello(epochs=epochs).outputs["Output"]).output


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def kfp_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """kfp.local's own output for :func:`two_steps`, as ``rakuten train`` receives it."""
    root = tmp_path_factory.mktemp("step-log")
    raw = io.StringIO()
    with contextlib.redirect_stdout(raw):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "runs"),
                   workspace_root=str(root / "workspace"), raise_on_error=True)
        two_steps(epochs=2)
    return raw.getvalue()


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, BaseException]:
    """The console of :func:`failing` run through the local runner's default output, and what it raised."""
    root = tmp_path_factory.mktemp("step-log-failing")
    (root / "scratch" / "workspace").mkdir(parents=True)
    console = io.StringIO()
    with contextlib.redirect_stdout(console), pytest.raises(ConfigError) as raised:
        _execute(failing, {"epochs": 1}, local.SubprocessRunner(use_venv=False), root, root / "scratch", quiet=False)
    return console.getvalue(), raised.value


def _feed(text: str, log: StepLog, seed: int = 0) -> None:
    """``text`` in pieces of random sizes: kfp writes a step's line and its indent separately."""
    rng, i = random.Random(seed), 0
    while i < len(text):
        size = rng.randint(1, 40)
        log.write(text[i:i + size])
        i += size
    log.close()


EPOCHS = ["  text epoch 1/2: train loss 0.5000, val weighted F1 0.2500",
          "  text epoch 2/2: train loss 0.5000, val weighted F1 0.2500"]


def test_the_sample_is_kfp_locals_own_log(kfp_log: str) -> None:
    assert "Got executor_input:" in kfp_log and "Executing task \x1b[96m'hello'" in kfp_log
    assert "\x1b[92mSUCCESS\x1b[0m" in kfp_log and "Task \x1b[96m'hello-2'\x1b[0m outputs:" in kfp_log


def test_default_output_is_a_line_per_step_start_and_end_and_the_steps_own_lines(kfp_log: str) -> None:
    console = io.StringIO()
    log = StepLog(console)
    _feed(kfp_log, log)
    lines = console.getvalue().splitlines()
    body = [*EPOCHS, "  green from the step", "  half a line then its end"]
    assert lines[0] == "hello: started" and lines[1:5] == body
    assert re.fullmatch(r"hello: SUCCESS in \d+\.\d s \(val_weighted_f1 0\.7500\)", lines[5])
    assert lines[6] == "hello-2: started" and lines[7:11] == body
    assert re.fullmatch(r"hello-2: SUCCESS in \d+\.\d s \(val_weighted_f1 0\.7500\)", lines[11])
    assert len(lines) == 12
    text = console.getvalue()
    assert "\x1b" not in text  # not a terminal
    for kfp_only in ("executor_input", "outputFile", "{", "KFP Executor", "Executing task", "Streamed logs",
                     "finished with status", "Pipeline", "-----", "metadata="):
        assert kfp_only not in text
    assert log.getvalue() == kfp_log  # everything is kept for step_error


def test_on_a_terminal_the_steps_colours_stay(kfp_log: str) -> None:
    console = Terminal()
    _feed(kfp_log, StepLog(console), seed=1)
    assert "  \x1b[32mgreen\x1b[0m from the step" in console.getvalue().splitlines()


def test_verbose_echoes_everything_without_colours_unless_on_a_terminal(kfp_log: str) -> None:
    plain, terminal = io.StringIO(), Terminal()
    _feed(kfp_log, StepLog(plain, verbose=True), seed=2)
    _feed(kfp_log, StepLog(terminal, verbose=True), seed=3)
    assert terminal.getvalue() == kfp_log
    assert plain.getvalue() == ANSI.sub("", kfp_log) and "\x1b" not in plain.getvalue()
    assert "Got executor_input:" in plain.getvalue()


def test_quiet_echoes_nothing_and_keeps_everything(kfp_log: str) -> None:
    log = StepLog(None)
    _feed(kfp_log, log)
    assert log.getvalue() == kfp_log


def test_steps_in_parallel_threads_do_not_mix_their_lines(kfp_log: str) -> None:
    """dsl.ParallelFor runs steps in threads: a line one thread writes in pieces stays whole."""
    alone = io.StringIO()
    _feed(kfp_log, StepLog(alone))
    console = io.StringIO()
    log = StepLog(console)
    half = kfp_log.index("text epoch 1/2") + 4  # inside a step's line
    first_half_written, second_thread_done = threading.Event(), threading.Event()

    def first() -> None:
        log.write(kfp_log[:half])
        first_half_written.set()
        second_thread_done.wait(30)
        log.write(kfp_log[half:])

    def second() -> None:
        first_half_written.wait(30)
        log.write(kfp_log)
        second_thread_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    log.close()
    assert sorted(console.getvalue().splitlines()) == sorted(alone.getvalue().splitlines() * 2)


def test_a_failed_step_ends_the_run_with_its_own_error_and_no_traceback(failed_run: tuple[str, BaseException]) -> None:
    console, error = failed_run
    assert str(error) == "1 is not allowed\nallowed: 0"
    lines = console.splitlines()
    assert lines[:2] == ["hello: started", "  text epoch 1/1: train loss 0.5000, val weighted F1 0.2500"]
    assert lines[-2] == "boom: started" and re.fullmatch(r"boom: FAILURE in \d+\.\d s", lines[-1])
    assert "Traceback" not in console and "executor_input" not in console and "\x1b" not in console


@pytest.mark.unit
def test_train_and_the_local_pipeline_commands_take_verbose() -> None:
    assert rakuten_parser().parse_args(["train", "d", "--out", "b", "--verbose"]).verbose
    assert not rakuten_parser().parse_args(["train", "d", "--out", "b"]).verbose
    for action in (["run", "d", "--out", "b"], ["predict", "d", "--out", "p.csv"]):
        args = pipeline_parser().parse_args([*action, "--verbose"])
        assert args.verbose and not args.quiet
        with pytest.raises(SystemExit) as exit_info:
            pipeline_parser().parse_args([*action, "--verbose", "--quiet"])
        assert exit_info.value.code == 2

