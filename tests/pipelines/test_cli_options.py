"""Shared job plumbing: one --params JSON parser and one planned progress bar for every job."""

from __future__ import annotations

import argparse

import pytest

from pipelines import cnn, distill, stack, train, tune
from pipelines._cli import LineProgress, PlannedProgress, json_list, json_object


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
