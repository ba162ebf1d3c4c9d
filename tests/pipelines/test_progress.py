"""Progress of the long jobs in a log (issue 28 item 11): every job that can run past the status period reports
``n of N`` (a bar on a terminal, a line every period in a log) - the demo's own stages included - and the
period is ``$BIRDCLEF_STACK_STATUS_S`` (30 s; 0.2 s here, so no test waits 30 s). The heartbeat itself:
tests/pipelines/test_heartbeat.py."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.demo_data import DemoSize, audio_file_count, generate_demo_dataset
from pipelines import _cli

REPO = Path(__file__).resolve().parents[2]
FAST = {**os.environ, _cli.STATUS_ENV: "0.2"}


def test_the_status_period_is_the_environment_s_or_30_s(monkeypatch, capsys) -> None:
    monkeypatch.setenv(_cli.STATUS_ENV, "0.25")
    assert _cli.status_seconds() == 0.25
    monkeypatch.delenv(_cli.STATUS_ENV)
    assert _cli.status_seconds() == 30.0 and capsys.readouterr().err == ""
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(_cli.STATUS_ENV, bad)
        assert _cli.status_seconds() == 30.0
        assert capsys.readouterr().err.strip() == (f"warning: ${_cli.STATUS_ENV}={bad!r} is not a number of seconds "
                                                   "> 0; status lines every 30 s")
    monkeypatch.setattr(_cli, "HEARTBEAT_S", 0.3)             # a bar's default period is the job's status period
    assert _cli.LineProgress(3, "x", "file").every == 0.3


def test_a_bar_ended_by_an_exception_prints_no_done_line(monkeypatch, capsys) -> None:
    """Ctrl-C (or an error) mid-bar: the job's one interrupt (error) line is the last word, not ``done: 4/92``."""
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), _cli.LineProgress(10, "embed", "file", every=0.0, stream=stream) as bar:
        bar.update(4)
        raise KeyboardInterrupt
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]    # the 4/10 line only
    assert stream.getvalue().startswith("embed: 4/10 file (40%)") and "done" not in stream.getvalue()
    bar.close()                                                  # and nothing later either
    assert "done" not in stream.getvalue()
    monkeypatch.setattr(_cli, "HEARTBEAT_S", 3600.0)
    with pytest.raises(ValueError), _cli.PlannedProgress("audio QA") as planned:
        planned.start(92)
        planned.update(4)
        raise ValueError("bad file")
    assert capsys.readouterr().err == ""


def test_the_demo_dataset_reports_every_file_it_writes(monkeypatch, capsys, tmp_path: Path) -> None:
    """The demo's first stage (115 s at full size): ``demo data: n/N file`` lines while it writes, N counted
    ahead (:func:`audio_file_count`) and equal to the audio files on disk."""
    size = DemoSize(clips_per_class=1, clip_seconds=(1.0, 2.0), train_soundscapes=0, test_soundscapes=0,
                    unlabelled_soundscapes=0)      # one short clip per class: cheap (a 60-s soundscape costs ~1 s)
    monkeypatch.setattr(_cli, "HEARTBEAT_S", 0.05)
    with _cli.PlannedProgress("demo data", "file") as bar:
        bar.start(audio_file_count(size))
        data = generate_demo_dataset(tmp_path, size, seed=3, progress=bar.update)
    on_disk = len(list(data.rglob("*.ogg")))
    lines = capsys.readouterr().err.splitlines()
    assert on_disk == audio_file_count(size) == 14
    counts = [int(m.group(1)) for line in lines
              if (m := re.match(r"demo data: (\d+)/14 file \(\d+%\) in \d+ s, ~\d+ s left$", line))]
    assert len(counts) >= 2 and counts[0] < 14, lines          # lines while it writes, not only at the end
    assert lines[-1].startswith("demo data: done: 14/14 file (100%)"), lines


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_the_demo_s_log_shows_ingest_and_embed_progress_and_ctrl_c_ends_it(demo_data: Path, tmp_path: Path) -> None:
    """The demo with stdout and stderr to files, on the session's small dataset (seed 7, so the dataset stage
    re-uses it): audio QA and embed lines appear as they run; Ctrl-C (SIGINT to the process group) in the
    embed stage ends the log with the job's interrupt line: no ``done`` line, no worker's traceback."""
    out = tmp_path / "demo"
    shutil.copytree(demo_data.parent, out, ignore=shutil.ignore_patterns(".done", "*.lock"))
    (out / "demo.json").write_text('{"size": "small", "seed": 7, "generator": 3}')
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.demo", "--out", str(out), "--small", "--seed", "7",
                                 "--workers", "2"], cwd=REPO, stdout=fo, stderr=fe, env=FAST, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not re.search(r"^embed: \d", _read(log_err), re.M):
                assert proc.poll() is None and time.monotonic() < deadline, _read(log_out) + _read(log_err)
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = _read(log_out), _read(log_err)
    assert "[demo] dataset (" in stdout and "[demo] ingest (" in stdout and "[demo] embed" not in stdout
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]   # TFLite's
    assert any(re.match(r"audio QA: \d+/92 file \(\d+%\) in \d+ s, ~\d+ s left$", line) for line in lines), stderr
    assert any(line.startswith("audio QA: done: 92/92 file (100%)") for line in lines), stderr
    embed = [line for line in lines if line.startswith("embed: ")]
    assert re.match(r"embed: \d+/\d+ audio-s \(\d+%\) in \d+ s, ~\d+ s left$", embed[0]), stderr
    assert not any("done" in line for line in embed), stderr
    assert lines[-1].startswith("interrupted"), stderr            # the job's own line, last
    assert "Traceback" not in stderr and "SpawnPoolWorker" not in stderr


def test_export_says_each_step_as_it_starts_in_a_log(demo_trained, tmp_path: Path) -> None:
    """``export [i/N] ...`` lines as the export runs (stdout and stderr to one log file), the status period's
    still-working lines quoting the step they wait on (building the toolkit wheel takes seconds), then a corrupt
    file to measure on stops it at step 6 with one error line, last."""
    measure = tmp_path / "measure"
    measure.mkdir()
    (measure / "BC2026_Test_0001_S01_20240101_000000.ogg").write_bytes(b"OggS" + bytes(3000))
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, "-m", "pipelines.export", "--store", str(demo_trained.store),
                               "--head-id", demo_trained.head("classical"), "--fallback-head", "none",
                               "--out", str(tmp_path / "bundle"), "--measure", str(measure)],
                              cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=FAST).returncode
    lines = [line for line in log.read_text().splitlines() if line.strip() and not line.startswith("INFO: ")]
    text = "\n".join(lines)
    assert code == 2, text
    steps = [line for line in lines if line.startswith("export [")]
    assert [s.split("]")[0] for s in steps] == [f"export [{i}/8" for i in range(1, 7)], text
    assert steps[3].startswith("export [4/8] building the toolkit wheel")
    assert any(line.startswith("... still working") and "since: export [4/8] building" in line for line in lines), text
    assert lines[-1].startswith(f"error: {measure / 'BC2026_Test_0001_S01_20240101_000000.ogg'}: "), text
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".bundle.partial").exists()


def test_the_demo_s_closing_hint_runs_as_printed(demo_trained, tmp_path: Path) -> None:
    """Issue 28 item 14: the hint is a command of this toolkit (the DuckDB CLI is not installed by step 1), quoted
    for a shell: run through ``sh`` on a store path with a space, it prints the leaderboard's heads."""
    from pipelines._demo import try_command

    store = tmp_path / "my demo" / "store"
    store.parent.mkdir()
    store.symlink_to(demo_trained.store, target_is_directory=True)
    hint = try_command(store)
    assert hint.startswith("python -m pipelines.sql --store ") and "duckdb" not in hint.split(" -c ")[0]
    result = subprocess.run(["sh", "-c", hint.replace("python", sys.executable, 1)], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["head_id", "fold_mean", "fold_std", "oof_auc"]
    assert demo_trained.head("linear") in result.stdout and demo_trained.head("lgbm") in result.stdout


def test_a_close_in_a_finally_that_an_exception_runs_through_prints_no_done_line() -> None:
    """How predict closes its bars (``try: ... finally: bar.close()``): Ctrl-C leaves no ``done`` line either; a
    normal close still prints it."""
    stream = io.StringIO()
    bar = _cli.LineProgress(12, "predict", "file", every=3600.0, stream=stream)
    with pytest.raises(KeyboardInterrupt):
        try:
            bar.update(3)
            raise KeyboardInterrupt
        finally:
            bar.close()
    assert stream.getvalue() == ""
    done = _cli.LineProgress(12, "predict", "file", every=3600.0, stream=stream)
    try:
        done.update(12)
    finally:
        done.close()
    assert stream.getvalue().startswith("predict: done: 12/12 file (100%)")
