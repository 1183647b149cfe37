"""What a local pipeline run (kfp.local) shows on the console: one line when a step starts, one when it ends (status,
seconds, its headline metric), and the lines the steps' own code prints (epoch progress...), instead of kfp.local's
whole log (every step's ``executor_input`` JSON, banners, ANSI colours).

kfp.local writes everything to ``sys.stdout``: its log records (``HH:MM:SS.mmm - LEVEL - message``: ``Executing task
'NAME'``, ``Task 'NAME' finished with status SUCCESS``, ``Task 'NAME' outputs:`` and one indented block per output),
horizontal rules, and each step's merged stdout/stderr indented by 4 spaces (``kfp.local.logging_utils``), where
the KFP executor logs ``[KFP Executor ...]`` lines and the pretty-printed executor input. :class:`StepLog` takes
that text in any pieces, keeps all of it (:meth:`StepLog.getvalue`, for :func:`pipelines.local_runner.step_error`)
and echoes complete lines: all of them when ``verbose``, else the concise form. ANSI escape codes are removed
unless the echo stream is a terminal. Steps run in threads under ``dsl.ParallelFor``: partial lines and parsing
state are kept per thread, so their lines do not mix.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import threading
from dataclasses import dataclass, field
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RECORD = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - ([A-Z]+) - (.*)$")  # logging_utils.local_logger_context
_TASK = re.compile(r"^(?:Executing task|Task) '([^']+)'(.*)$")
_RULE = re.compile(r"^-{20,}$")
_METADATA = re.compile(r"metadata=(\{.*\}) \)$")
# Another library's INFO/DEBUG log record inside a step (MLflow's ``2026/01/02 10:00:00 INFO mlflow...: ...``).
_LIBRARY_INFO = re.compile(r"^\d{4}[/-]\d\d[/-]\d\d[ T]\d\d:\d\d:\d\d\S* +(?:INFO|DEBUG) ")
STEP_INDENT = " " * 4  # kfp.local's indented_print
# The metrics a step's end line shows, when its Metrics (or other) artifact's metadata holds them.
HEADLINE = ("val_weighted_f1", "test_weighted_f1", "gate_challenger_weighted_f1")


@dataclass
class _Thread:
    """What one thread is in the middle of: its partial line, and where kfp's output is."""

    partial: str = ""
    in_step: bool = False  # inside a step's streamed logs
    in_json: bool = False  # inside the executor_input dump
    json_indent: str | None = None  # the indentation of its first line
    traceback: str = ""  # inside a traceback: "frames", then "message" (its exception line and continuation)
    in_outputs: bool = False  # in a finished step's output block
    ending: tuple[str, str, float] | None = None  # (task, status, seconds) not yet printed
    metrics: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # task → when it started (a task logs in one thread)


class StepLog(io.TextIOBase):
    """A text stream for ``contextlib.redirect_stdout`` around a kfp.local run; ``echo=None`` echoes nothing."""

    def __init__(self, echo: TextIO | None, *, verbose: bool = False) -> None:
        self.echo, self.verbose = echo, verbose
        self.keep_ansi = bool(echo is not None and getattr(echo, "isatty", lambda: False)())
        self._all = io.StringIO()
        self._threads: dict[int, _Thread] = {}
        self._lock = threading.Lock()

    def getvalue(self) -> str:
        """Everything written so far, as written (colours included)."""
        return self._all.getvalue()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._all.write(text)
            if self.echo is not None:
                state = self._threads.setdefault(threading.get_ident(), _Thread())
                *lines, state.partial = (state.partial + text).split("\n")
                for line in lines:
                    self._line(state, line)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def close(self) -> None:
        """Echo what is still pending (a last unterminated line, a step's end line); the log stays readable."""
        with self._lock:
            if self.echo is not None:
                for state in self._threads.values():
                    if state.partial:
                        self._line(state, state.partial)
                        state.partial = ""
                    self._end(state)
                if not getattr(self.echo, "closed", False):  # close() runs again when this object is collected
                    self.echo.flush()

    def _emit(self, line: str) -> None:
        assert self.echo is not None
        self.echo.write((line if self.keep_ansi else ANSI.sub("", line)) + "\n")

    def _line(self, state: _Thread, raw: str) -> None:
        if self.verbose:
            self._emit(raw)
            return
        plain = ANSI.sub("", raw).rstrip("\r")
        record = _RECORD.match(plain)
        if record:
            self._record(state, record)
        elif _RULE.match(plain):
            self._end(state)
        elif state.in_outputs:
            if found := _METADATA.search(plain):
                # Only for the headline metric: metadata that is not a Python literal is skipped.
                with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    state.metrics.update(ast.literal_eval(found.group(1)))
        elif state.in_step:
            self._step_line(state, raw[len(STEP_INDENT):] if raw.startswith(STEP_INDENT) else raw)
        elif plain.strip():
            self._emit(raw)

    def _step_line(self, state: _Thread, line: str) -> None:
        plain = ANSI.sub("", line)
        if state.in_json:
            # The dump is indented JSON: it ends with a "}" indented as its first line, "{", was.
            if state.json_indent is None:
                state.json_indent = plain[:len(plain) - len(plain.lstrip())]
            elif plain.rstrip() == state.json_indent + "}":
                state.in_json, state.json_indent = False, None
        elif plain.lstrip().startswith("[KFP Executor "):
            state.in_json = plain.rstrip().endswith("Got executor_input:")
        elif plain.lstrip().startswith(("Traceback (most recent call last):", "During handling of the above exception",
                                        "The above exception was the direct cause")):
            state.traceback = "frames"  # a failed run's error line says what failed; --verbose shows the traceback
        elif state.traceback:
            # Frames are indented; the exception line is not, and its message runs to the next blank line.
            if state.traceback == "frames" and plain[:1] not in (" ", ""):
                state.traceback = "message"
            elif state.traceback == "message" and not plain.strip():
                state.traceback = ""
        elif plain.strip() and not _LIBRARY_INFO.match(plain):
            self._emit("  " + line.rstrip("\r"))

    def _record(self, state: _Thread, record: re.Match[str]) -> None:
        hours, minutes, seconds, millis, level, message = record.groups()
        at = int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000
        task = _TASK.match(message)
        if task and task.group(2) == " outputs:":
            state.in_outputs = True
            return
        self._end(state)
        state.in_step = state.in_json = False
        state.traceback = ""
        state.json_indent = None
        if message.startswith("Streamed logs:"):
            state.in_step = True
        elif task and message.startswith("Executing task"):
            state.started[task.group(1)] = at
            self._emit(f"{task.group(1)}: started")
        elif task and (finished := re.match(r" finished with status (\w+)", task.group(2))):
            name, status = task.group(1), finished.group(1)
            state.ending = (name, status, (at - state.started.pop(name, at)) % 86400)
            state.metrics = {}
            if status != "SUCCESS":  # no output block follows a failure
                self._end(state)
        elif task and task.group(2) == " has no outputs":
            pass
        elif level in ("WARNING", "ERROR", "CRITICAL") and not message.startswith("Pipeline "):
            self._emit(f"kfp: {message}")

    def _end(self, state: _Thread) -> None:
        state.in_outputs = False
        if state.ending is None:
            return
        name, status, seconds = state.ending
        shown = [f"{key} {state.metrics[key]:.4f}" for key in HEADLINE if isinstance(state.metrics.get(key), float)]
        self._emit(f"{name}: {status} in {seconds:.1f} s" + (f" ({', '.join(shown)})" if shown else ""))
        state.ending, state.metrics = None, {}
