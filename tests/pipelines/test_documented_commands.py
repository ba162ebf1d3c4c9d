"""Every command line the user is shown parses with the job it names (issue 28 item 15: README drift).

Two sources, read from the files themselves:

* every job's ``--help`` epilog: each ``python -m pipelines.X ...`` line under "Example(s):" is parsed, as
  written, by X's own argument parser (the job's ``main`` with ``parse_args`` stopped right after parsing, so no
  work runs): a renamed or removed option, a wrong type or a missing required option fails here;
* README.md: every ``python -m pipelines.X`` in a code block is parsed the same way (after the README's own
  placeholders - ``DIR``, ``ID``, ``N`` ... - are given values of their type), and every ``--option`` named
  after ``pipelines.X`` in the stage map and the prose must be one of X's options.

The jobs whose examples are cheap and read-only also run for real against the trained demo store
(``sql``, ``leaderboard``). Wall time: ~3 s (imports).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
JOBS = sorted(p.stem for p in (ROOT / "pipelines").glob("*.py") if not p.stem.startswith("_"))
COMMAND = re.compile(r"python -m pipelines\.(\w+)")
# the README's placeholders, each given a value its option's type accepts
PLACEHOLDERS = {"DIR": "work/store", "ID": "linear-0123456789ab", "ID,ID": "linear-0123456789ab,lgbm-0123456789ab",
                "N": "2", "T": "0.5", "W": "0.5", "ALPHA": "0.5", "I/N": "1/2", "NAME": "study", "F": "journal.log",
                "FILE": "out.tflite", "PATH": "model.tflite", "BUNDLE": "bundle", "VERSION": "pseudo-0123456789ab",
                "RECORDINGS": "recordings", "T,": "t"}


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.parser, self.namespace = parser, namespace


def parse(job: str, argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """``argv`` parsed by ``pipelines.<job>``'s own parser; raises AssertionError with argparse's message when
    the job would refuse it."""
    module = importlib.import_module(f"pipelines.{job}")
    original = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise Parsed(self, original(self, args, namespace))

    err = io.StringIO()
    argparse.ArgumentParser.parse_args = stop
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module.main(argv)
    except Parsed as done:
        return done.parser, done.namespace
    except SystemExit as exc:
        raise AssertionError(f"pipelines.{job} {shlex.join(argv)}: exit {exc.code}: {err.getvalue().strip()}") from None
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"pipelines.{job}: main returned without parsing its arguments")


def options_of(job: str) -> set[str]:
    parser, _ = _parser_only(job)
    return set(parser._option_string_actions)


def _parser_only(job: str) -> tuple[argparse.ArgumentParser, None]:
    """The job's parser, caught before it parses anything."""
    module = importlib.import_module(f"pipelines.{job}")
    original = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise Parsed(self, argparse.Namespace())

    argparse.ArgumentParser.parse_args = stop
    try:
        module.main([])
    except Parsed as done:
        return done.parser, None
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"pipelines.{job}: no parser")


def joined(text: str) -> list[str]:
    """Lines with shell continuations (a trailing backslash) joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def epilog_examples() -> list[tuple[str, list[str]]]:
    """``(job, argv)`` for every ``python -m pipelines.X ...`` line of every job's epilog."""
    found = []
    for job in JOBS:
        parser, _ = _parser_only(job)
        for line in joined(parser.epilog or ""):
            line = line.split("  #")[0].strip()
            if line.startswith("python -m pipelines."):
                words = shlex.split(line)
                found.append((words[2].removeprefix("pipelines."), words[3:]))
    return found


def readme_blocks() -> list[tuple[int, str, list[str]]]:
    """``(line number, job, argv)`` for every ``python -m pipelines.X`` line inside a README code block, with
    the README's placeholders given values."""
    found, inside = [], False
    for number, line in enumerate(joined(README.read_text()), 1):
        if line.startswith("```"):
            inside = not inside
            continue
        match = COMMAND.search(line) if inside else None
        if match:
            words = shlex.split(line[match.start():].split("  #")[0].split(" #")[0])
            found.append((number, match[1], [PLACEHOLDERS.get(w, w) for w in words[3:]]))
    return found


def readme_mentions() -> list[tuple[int, str, str]]:
    """``(line number, job, --option)`` for every option written after ``python -m pipelines.X`` in the same code
    span or code-block line of the README (the stage map, the prose)."""
    found = []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        spans = re.findall(r"`([^`]*python -m pipelines\.[^`]*)`", line) or ([line] if COMMAND.search(line) else [])
        for span in spans:
            pieces = COMMAND.split(span)                   # [before, job, rest, job, rest, ...]
            for job, rest in zip(pieces[1::2], pieces[2::2], strict=True):
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest.split(" #")[0]):
                    found.append((number, job, option))
    return found


def test_every_help_example_parses_as_written() -> None:
    examples = epilog_examples()
    assert len({job for job, _ in examples}) >= 20          # nearly every job shows one
    missing = [job for job in JOBS if job not in {j for j, _ in examples}]
    assert missing == [], f"jobs whose --help shows no example: {missing}"
    failures = []
    for job, argv in examples:
        try:
            parse(job, argv)
        except AssertionError as exc:
            failures.append(str(exc))
    assert failures == []


def test_readme_code_blocks_parse_and_every_named_option_exists() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 5
    failures = []
    for number, job, argv in blocks:
        if job not in JOBS:
            failures.append(f"README.md:{number}: no job pipelines.{job}")
            continue
        try:
            parse(job, argv)
        except AssertionError as exc:
            failures.append(f"README.md:{number}: {exc}")
    options = {job: options_of(job) for job in JOBS}
    mentions = readme_mentions()
    assert len(mentions) > 60
    for number, job, option in mentions:
        if job not in JOBS:
            failures.append(f"README.md:{number}: no job pipelines.{job}")
        elif option not in options[job]:
            failures.append(f"README.md:{number}: pipelines.{job} has no option {option}")
    assert failures == []


def test_a_wrong_option_is_caught() -> None:
    """The checker itself: a misspelt option and a bad value fail with argparse's own words."""
    with pytest.raises(AssertionError, match=r"unrecognized arguments: --worksers"):
        parse("leaderboard", ["--store", "s", "--worksers", "2"])
    with pytest.raises(AssertionError, match=r"--cpus"):
        parse("plan", ["--bundle", "b", "--cpus", "0"])
    _, ns = parse("plan", ["--bundle", "b", "--cpus", "4"])
    assert ns.cpus == 4


@pytest.mark.slow
def test_read_only_examples_run_on_the_trained_demo_store(demo_trained) -> None:
    """``sql``'s and ``leaderboard``'s own examples, run as written but for the store path."""
    ran = 0
    for job, argv in epilog_examples():
        if job not in ("sql", "leaderboard") or "--out" in argv:
            continue
        argv = [str(demo_trained.store) if a == "work/store" else a for a in argv]
        run = subprocess.run([sys.executable, "-m", f"pipelines.{job}", *argv], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert run.returncode == 0, (job, argv, run.stderr[-500:])
        assert run.stdout.strip(), (job, argv)
        ran += 1
    assert ran >= 3
