"""A job silent for HEARTBEAT_S says it still works (pipelines._cli.Heartbeat), quoting its last line."""

from __future__ import annotations

import sys
import time

import pytest

from pipelines import _cli


def test_silent_job_gets_heartbeat_lines_quoting_its_last_line(capsys):
    with _cli.Heartbeat(every=0.3):
        print("fold 0 done")
        time.sleep(1.2)
    err = capsys.readouterr().err
    beats = [line for line in err.splitlines() if line.startswith("... still working")]
    assert 2 <= len(beats) <= 5, err
    assert "since: fold 0 done" in beats[0] and "memory" in beats[0]


def test_a_job_that_prints_often_gets_none_and_streams_are_restored(capsys):
    out, err = sys.stdout, sys.stderr
    with _cli.Heartbeat(every=0.5):
        for i in range(8):
            print(f"step {i}")
            time.sleep(0.1)
    assert "still working" not in capsys.readouterr().err
    assert (sys.stdout, sys.stderr) == (out, err)


def test_run_main_quiet_has_no_heartbeat(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "HEARTBEAT_S", 0.2)

    def main(argv):
        time.sleep(0.8)
        return 0

    with pytest.raises(SystemExit) as stop:
        _cli.run_main(main, ["--quiet"])
    assert stop.value.code == 0
    assert "still working" not in capsys.readouterr().err


def test_run_main_beats_for_a_silent_job(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "HEARTBEAT_S", 0.2)

    def main(argv):
        time.sleep(0.7)
        return 0

    with pytest.raises(SystemExit):
        _cli.run_main(main, [])
    assert "still working" in capsys.readouterr().err
