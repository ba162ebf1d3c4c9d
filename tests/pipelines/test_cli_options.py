"""Shared job plumbing: one --params JSON parser and one planned progress bar for every job."""

from __future__ import annotations

import argparse
import importlib

import pytest

from pipelines import cnn, distill, stack, train, tune
from pipelines._cli import LineProgress, PlannedProgress, json_list, json_object, run_main


def test_json_options_parse_or_name_what_they_expected() -> None:
    assert json_object('{"C": 0.05}') == {"C": 0.05} and json_list('[["smooth", {}]]') == [["smooth", {}]]
    with pytest.raises(argparse.ArgumentTypeError, match=r"not valid JSON .*; expected a JSON object"):
        json_object("{C: 1}")
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a JSON object.*got list '\[1\]'"):
        json_object("[1]")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a JSON list"):
        json_list("{}")


@pytest.mark.parametrize("job, argv", [
    (train, ["--head-kind", "linear"]),
    (tune, ["--head-kind", "linear", "--study", "s"]),
    (stack, ["--heads", "h", "--method", "blend"]),
    (distill, ["--teacher", "t"]),
    (cnn, ["--out", "o"]),
])
def test_every_job_refuses_bad_params_json_the_same_way(job, argv, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        job.main(["--store", str(tmp_path / "store"), *argv, "--params", "[1, 2]"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "error: argument --params: expected a JSON object" in err
    assert not (tmp_path / "store").exists()


# every count option of every job, its minimum and one value below it (issue 28 item 2: plan --cpus 0 divided by
# zero, --files -5 projected -0.3 min, demo --workers 0 took another rule)
COUNT_OPTIONS = [
    ("cnn", "--epochs", 1), ("cnn", "--distill-epochs", 1), ("demo", "--workers", 1), ("distill", "--measure-files", 0), ("export", "--measure-files", 1),
    ("dryrun", "--files", 1), ("dryrun", "--cpus", 1), ("embed", "--batch-size", 1), ("embed", "--threads", 1),
    ("embed", "--workers", 1), ("errors", "--worst", 0), ("errors", "--examples", 0),
    ("errors", "--diversity-heads", 0), ("folds", "--k", 2), ("folds", "--date-block-days", 1),
    ("ingest", "--batch-size", 1), ("plan", "--files", 1), ("plan", "--cpus", 1), ("plan", "--measure-files", 1),
    ("predict", "--workers", 1), ("pseudo", "--round", 1), ("selftrain", "--rounds", 1), ("sql", "--max-rows", 0),
    ("stack", "--trials", 0), ("tune", "--trials", 0), ("tune", "--focal-per-class", 1),
]


@pytest.mark.parametrize("name, option, minimum", COUNT_OPTIONS)
def test_every_count_option_refuses_values_below_its_minimum(name: str, option: str, minimum: int,
                                                             capsys) -> None:
    """One shared argparse type: below the minimum (or not a whole number) is a one-line usage error naming the
    option, before any work; the minimum itself parses."""
    job = importlib.import_module(f"pipelines.{name}")
    for bad in (str(minimum - 1), "-5", "2.5"):
        with pytest.raises(SystemExit) as info:
            job.main([option, bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and err[-1].startswith(f"python -m pipelines.{name}: error: argument "), err
        assert option in err[-1] and f"expected a whole number >= {minimum}" in err[-1], err[-1]
    with pytest.raises(SystemExit) as info:     # the minimum passes the type (then --help stops before any work)
        job.main([option, str(minimum), "--help"])
    assert info.value.code == 0 and f"expected a whole number >= {minimum}" not in capsys.readouterr().err


def test_planned_progress_appears_at_start_and_closes_once(capsys) -> None:
    with PlannedProgress("audio QA", "file") as bar:
        assert bar.bar is None                        # nothing drawn before the work is planned
        bar.start(3)
        bar.update()
        bar.update(2)
        assert isinstance(bar.bar, LineProgress)
    assert "audio QA: done: 3/3 file" in capsys.readouterr().err
    with PlannedProgress("embed", quiet=True) as quiet:
        quiet.start(5)
        quiet.update(5)
    assert capsys.readouterr().err == ""
    with PlannedProgress("never started"):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["pseudo", "selftrain"])
@pytest.mark.parametrize("option, value, message", [
    ("--min-prob", "1.5", "pseudo: min_prob must be in [0, 1), got 1.5"),
    ("--power", "0", "pseudo: power must be > 0, got 0.0"),
    ("--weight", "-1", "pseudo: weight must be >= 0, got -1.0"),
])
def test_pseudo_label_options_name_the_one_bad_value(name: str, option: str, value: str, message: str, tmp_path,
                                                     capsys) -> None:
    """(issue 28 item 8: every rule was listed whichever value broke one)"""
    job = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(SystemExit) as info:
        run_main(job.main, ["--store", str(tmp_path / "store"), "--teacher", "t", option, value])
    assert info.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "store").exists()
