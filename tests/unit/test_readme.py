"""README.md is true line by line: every command it shows parses with the real parsers (nothing is run), every
``make`` target exists, every option of the command-line synopsis is accepted, and every repository path it names
exists. What the commands do is tested elsewhere (``make demo`` runs the demo's commands, the e2e and pipeline
tests run the rest)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT as REPO

pytestmark = pytest.mark.unit

README = (REPO / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL = ("bash", "sh", "shell", "console")
# Commands of the "Run on a cluster" steps that need a cluster, a registry or a cloud account: not run here.
NEEDS_A_CLUSTER = ("kubectl ", "aws ", "podman ", "eval ", "DOCKER_HOST=")
# Code spans that are paths, but not in this repository (the data layout, a bundle's or a run's files).
NOT_REPO_PATHS = {"images/image_train/", "images/image_test/"}


def _spans(text: str) -> Iterator[str]:
    """Inline code spans outside fenced blocks, with line breaks inside a span joined."""
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
        yield " ".join(span.split())


def _shell_commands() -> list[str]:
    commands = []
    for lang, body in FENCE.findall(README):
        if lang in SHELL:
            for line in body.splitlines():
                command = line.split(" #")[0].strip()
                if command and not command.startswith("#"):
                    commands.append(command)
    return commands


def _synopsis() -> list[str]:
    """The ``rakuten ...`` usage lines of the "Command line" section, continuation lines joined."""
    block = README.split("## Command line", 1)[1]
    body = FENCE.search(block)
    assert body is not None
    entries: list[str] = []
    for line in body.group(2).splitlines():
        if line.startswith("rakuten "):
            entries.append(line)
        elif line.strip():
            entries[-1] += " " + line.strip()
    return entries


def _concrete(command: str) -> list[str]:
    """A usage-style command as arguments: ``[optional ...]`` parts dropped, ``a|b`` alternatives → ``a``."""
    text = command
    while (shorter := re.sub(r"\[[^\[\]]*\]", "", text)) != text:
        text = shorter
    words = shlex.split(text)
    return [w.split("|")[0] if "|" in w and not w.startswith(("s3:", "/")) else w for w in words if w != "..."]


def _parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The parser ``rakuten`` uses for ``argv`` (``["rakuten", ...]``), the command words it stands for, and the
    arguments it parses."""
    from rakuten_cli.main import FORWARDED
    from rakuten_cli.main import build_parser as rakuten_parser

    assert argv[0] == "rakuten", argv
    if argv[1] == "pipeline":
        from rakuten_cli.pipeline import build_parser as pipeline_parser

        parser, path, rest = pipeline_parser(), argv[:2], argv[2:]
    elif argv[1] == "serve":
        from serving.cli import build_parser as serve_parser

        return serve_parser(argv[2]), argv[:3], argv[3:]
    elif argv[1] in ("deploy", "rollback"):
        from rollout.cli import build_parser as rollout_parser

        return rollout_parser(argv[1]), argv[:2], argv[2:]
    else:
        assert argv[1] not in FORWARDED
        parser, path, rest = rakuten_parser(), argv[:1], argv[1:]
    return parser, path, rest


def _subcommand(parser: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The sub-parser that the leading command words of ``words`` select, and how many words that took."""
    taken = 0
    while taken < len(words):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or words[taken] not in actions[0].choices:
            break
        parser, taken = actions[0].choices[words[taken]], taken + 1
    return parser, taken


def _parses(argv: list[str]) -> str | None:
    """None when ``rakuten ARGV`` parses, else argparse's complaint."""
    parser, _, rest = _parser(argv)
    try:
        parser.parse_args(rest)
    except SystemExit as exc:
        return f"{shlex.join(argv)!r} does not parse (exit {exc.code})"
    return None


def _options_accepted(argv: list[str]) -> str | None:
    """For a mention of a command and some of its options (``rakuten train --in-process``, ``rakuten pipeline run
    --runner docker``): None when the command exists and takes those options (and values), else why not."""
    parser, path, rest = _parser(argv)
    parser, taken = _subcommand(parser, rest)
    command = " ".join([*path, *rest[:taken]])
    actions = {o: a for a in parser._actions for o in a.option_strings}
    words = rest[taken:]
    for i, word in enumerate(words):
        if word.startswith("--"):
            action = actions.get(word)
            if action is None:
                return f"{word} is not an option of {command}"
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            if value is not None and action.choices is not None and value not in action.choices:
                return f"{command} {word}: {value!r} is not one of {list(action.choices)}"
        elif i == 0 or not words[i - 1].startswith("--"):
            return f"{command}: {word!r} is not a sub-command"
    return None


def _is_mention(argv: list[str]) -> bool:
    """Command words followed only by options (each with at most one value): a mention, not a runnable command."""
    parser, path, rest = _parser(argv)
    _, taken = _subcommand(parser, rest)
    words = rest[taken:]
    return all(w.startswith("--") or (i > 0 and words[i - 1].startswith("--")) for i, w in enumerate(words))


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def _check_command(command: str) -> str | None:
    """None when the README command is one the repo can run as written, else why not."""
    argv = _concrete(command)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    if argv[0] == "make":
        missing = [t for t in argv[1:] if "=" not in t and not t.startswith("-") and t not in _make_targets()]
        return f"{command!r}: no make target {missing}" if missing else None
    if argv[0].endswith("rakuten"):
        argv = ["rakuten", *argv[1:]]
        return _options_accepted(argv) if _is_mention(argv) else _parses(argv)
    if Path(argv[0]).name in ("python", "python3") and argv[1:2] == ["-m"]:
        found = importlib.util.find_spec(argv[2].split(".")[0]) and importlib.util.find_spec(argv[2])
        return None if found else f"{command!r}: no module {argv[2]}"
    if command.startswith(NEEDS_A_CLUSTER):
        return None
    return f"{command!r}: not a command this test knows how to check"


def test_the_fenced_shell_commands_run_as_written() -> None:
    commands = _shell_commands()
    assert "make demo" in commands and "make test" in commands
    assert [problem for c in commands if (problem := _check_command(c))] == []


def test_every_rakuten_command_in_the_text_parses() -> None:
    commands = [s for s in _spans(README) if re.match(r"(\.venv/bin/)?rakuten \w", s)]
    assert len(commands) > 10
    assert [problem for c in commands if (problem := _check_command(c))] == []


def test_every_make_and_python_m_command_in_the_text_exists() -> None:
    spans = [s for s in _spans(README) if re.match(r"(make \w|(\.venv/bin/)?python -m \w)", s)]
    assert any(s.startswith("make ") for s in spans)
    assert [problem for s in spans if (problem := _check_command(s))] == []


def test_every_option_of_the_command_line_synopsis_is_accepted() -> None:
    problems = []
    for entry in _synopsis():
        command = [w for w in entry.split()[:3] if re.fullmatch(r"[a-z]+", w)]
        if command[-1] in ("pipeline", "serve"):  # one line for several actions: their options are in the text
            continue
        flags = [f.replace("[no-]", spelling) for f in re.findall(r"--(?:\[no-\])?[a-z][a-z-]*", entry)
                 for spelling in (("", "no-") if "[no-]" in f else ("",))]
        if problem := _options_accepted([*command, *flags]):
            problems.append(f"{entry!r}: {problem}")
    assert problems == []


def _repo_paths() -> set[str]:
    # The repository's own directories (not .demo/, .state/, .venv/...: made by make, not in a clone).
    top = {p.name for p in REPO.iterdir() if p.is_dir() and (not p.name.startswith(".") or p.name == ".github")}
    found = set()
    for span in [*_spans(README), *re.findall(r"\]\(([^)#:]+)\)", README)]:
        for word in span.split():
            word = word.rstrip(".,;:)")
            first = word.split("/")[0]
            if word in NOT_REPO_PATHS or not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", word):
                continue
            if ("/" in word and first in top) or re.fullmatch(r"[\w-]+\.(md|lock|toml)", word):
                found.add(word)
    return found


def test_every_repository_path_named_exists() -> None:
    paths = _repo_paths()
    assert {"rakuten_mm/text.py", "BENCHMARKS.md", "schemas/SOURCE.md"} <= paths
    assert sorted(p for p in paths if not (REPO / p).exists()) == []


def _demo_recipe() -> list[str]:
    """The commands ``make demo`` runs, with the Makefile's variables at their defaults."""
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    values = {**dict(re.findall(r"^(\w+) \?= (.*)$", makefile, re.M)), "DEMO": ".demo"}  # DEMO: $(CURDIR)/.demo
    commands = []
    for line in recipe:
        command = " ".join(re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], line.replace("$(BIN)/", "")).split())
        if not command.startswith(("rm ", "@echo")):
            commands.append(command)
    return commands


def test_what_make_demo_does_lists_the_commands_it_runs() -> None:
    section = README.split("## What `make demo` does", 1)[1].split("\n## ", 1)[0]
    listed = [" ".join(m.split()) for m in re.findall(r"^\d+\. `([^`]+)`", section, re.M | re.S)]
    assert listed == _demo_recipe()
