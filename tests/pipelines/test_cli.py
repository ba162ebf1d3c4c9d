"""The one CLI boundary: bad invocations give one ``error:`` line and exit 2; progress suits a log file."""

from __future__ import annotations

import ast
import csv
import importlib
import io
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipelines
from models.heads import HeadError, make_head
from pipelines import folds, leaderboard, predict, report, train, tune, validate_submission
from pipelines._cli import LineProgress, progress, run_main

REPO = Path(__file__).resolve().parents[2]


def _run(job, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_main(job.main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("job, argv, expected", [
    (train, ["--head-kind", "linear", "--features", "birdnett"], "unknown feature view 'birdnett'"),
    (train, ["--head-kind", "linear", "--pooling", "maxx"], "unknown pooling 'maxx'"),
    (train, ["--head-kind", "svm"], "unknown head 'svm'"),
    (tune, ["--head-kind", "linear", "--study", "s", "--features", "birdnett"], "unknown feature view 'birdnett'"),
    (tune, ["--head-kind", "linear", "--study", "s", "--pooling", "maxx"], "unknown pooling 'maxx'"),
    (tune, ["--head-kind", "prior", "--study", "s"], "head 'prior' has nothing to tune"),
    (tune, ["--head-kind", "svm", "--study", "s"], "unknown head kind 'svm'"),
    (tune, ["--head-kind", "linear", "--study", "s", "--params", '{"Cee": 1}'], "unknown linear parameter(s) ['Cee']"),
    # (--focal-per-class 0 is now argparse's: tests/pipelines/test_cli_options.py, every count option)
])
def test_bad_invocations_exit_2_with_one_error_line(job, argv, expected, demo_store: Path, capsys) -> None:
    code, _, err = _run(job, ["--store", str(demo_store), *argv], capsys)
    assert code == 2
    assert expected in _one_error_line(err)


@pytest.mark.parametrize("job, argv", [
    (train, ["--head-kind", "linear"]),
    (tune, ["--head-kind", "linear", "--study", "s"]),
    (leaderboard, []),
    (predict, ["--audio", ".", "--out", "x.csv"]),
    (folds, []),
])
def test_jobs_refuse_a_missing_store_and_create_nothing(job, argv, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no" / "store"
    code, _, err = _run(job, ["--store", str(missing), *argv], capsys)
    assert code == 2 and "no feature store at" in _one_error_line(err)
    assert not (tmp_path / "no").exists()


def test_report_refuses_a_missing_store(tmp_path: Path, capsys) -> None:
    code, _, err = _run(report, ["--store", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.html")], capsys)
    assert code == 2 and "no feature store at" in _one_error_line(err)
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "m.html").exists()


def test_make_head_unknown_kind_is_a_head_error() -> None:
    with pytest.raises(HeadError, match="unknown head 'svm'; choose from"):
        make_head("svm", ["a"], ["f"])


def test_invalid_submission_is_an_error_line_on_stderr(shared_data: Path, tmp_path: Path, capsys) -> None:
    sample = shared_data / "bc2026" / "sample_submission.csv"
    bad = tmp_path / "submission.csv"
    with open(sample, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[1][1] = "nan"
    with open(bad, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    code, out, err = _run(validate_submission, [str(bad), "--sample", str(sample)], capsys)
    assert code == 2 and out == ""
    _one_error_line(err)
    code, out, err = _run(validate_submission, [str(sample), "--sample", str(sample)], capsys)
    assert code == 0 and out.startswith("valid: 3 rows") and err == ""


def test_line_progress_prints_status_lines_not_carriage_returns() -> None:
    stream = io.StringIO()
    bar = LineProgress(10, "embed", "file", every=0.0, stream=stream)
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("embed: 1/10 file (10%)") and lines[-1].startswith("embed: done: 10/10 file (100%)")
    assert len(lines) == 11


def test_progress_is_a_status_line_when_stderr_is_not_a_terminal(shared_data: Path, tmp_path: Path) -> None:
    """A real ingest with stderr to a file: readable lines, no tqdm redraws; quiet prints none."""
    assert isinstance(progress(3, "x"), LineProgress)  # pytest captures stderr: not a terminal
    with open(tmp_path / "log.txt", "w") as log:
        result = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--data", str(shared_data / "bc2026"),
                                 "--store", str(tmp_path / "store"), "--workers", "1"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
    text = (tmp_path / "log.txt").read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and "audio QA: done: 4/4 file" in text


def test_disk_full_is_one_error_line(capsys) -> None:
    """A real ENOSPC (writing to /dev/full) anywhere in a job ends as one line and exit 2."""
    import stat

    if not stat.S_ISCHR(Path("/dev/full").stat().st_mode):
        pytest.skip("/dev/full is not the full device here")

    def job(argv):
        with open("/dev/full", "w") as fh:
            fh.write("x" * 100_000)
            fh.flush()
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_main(job, [])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: disk full") and "re-run" in line


# ---------------------------------------------------------------------------- thin jobs
JOBS = sorted(m.name for m in pkgutil.iter_modules(pipelines.__path__) if not m.name.startswith("_"))


def test_the_jobs_are_the_documented_ones() -> None:
    """Every job has a row in the README's stage map, and every row names a job."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = [line for line in readme.split("## Stage map", 1)[1].split("\n## ", 1)[0].splitlines()
             if line.startswith("| ")]
    documented = {m for line in table for m in re.findall(r"`python -m pipelines\.(\w+)", line)}
    assert sorted(documented) == JOBS


@pytest.mark.parametrize("name", JOBS)
def test_every_job_has_help_and_defines_only_main(name: str, capsys) -> None:
    """``--help`` works, and the module holds ``main`` and constants only: no library code to import."""
    job = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(SystemExit) as exit_info:
        job.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m pipelines.{name}")
    tree = ast.parse(Path(job.__file__).read_text())
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert defined == ["main"], f"pipelines/{name}.py defines {defined}: move library code out of the job"


def test_python_dash_m_help_runs_a_job_as_a_script() -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines.demo", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m pipelines.demo"), result.stderr
