"""Ctrl-C on a job with worker processes (featurestore/workers.py): a terminal sends SIGINT to the whole
process group, so the test does too (``os.killpg`` on a job started in its own session). The parent
reports it in its one line (exit 130); no worker prints ``Process SpawnPoolWorker-N:`` or a traceback,
and every worker is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from processes import spawned_children, survivors

REPO = Path(__file__).resolve().parents[2]


def _ingest(demo_data: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.ingest", "--data", str(demo_data), "--store", str(store),
                             "--workers", "2", "--batch-size", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"ingest ended (or took {timeout:.0f} s) before {what}: {out}\n{err}")
        time.sleep(0.02)


def _ctrl_c(proc: subprocess.Popen) -> tuple[list[str], list[int]]:
    """SIGINT to the job's process group, as a terminal's Ctrl-C; returns stderr's lines and the workers."""
    workers = spawned_children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return [line for line in err.splitlines() if line.strip()], workers


def _check_one_line(proc: subprocess.Popen, lines: list[str], workers: list[int]) -> None:
    text = "\n".join(lines)
    assert proc.returncode == 130, text
    assert len(lines) == 1, text                     # the job's own interrupt line, nothing else
    assert "SpawnPoolWorker" not in text and "Traceback" not in text and "KeyboardInterrupt" not in text
    assert len(workers) == 2 and survivors(workers) == []


def test_ctrl_c_while_workers_decode_prints_only_the_jobs_line(demo_data: Path, tmp_path: Path) -> None:
    """Mid-run: the first 2-file part is written, so both workers are up and decoding."""
    store = tmp_path / "store"
    parts = store / "parts" / "audio_inventory"
    proc = _ingest(demo_data, store)
    _wait_for(proc, lambda: parts.is_dir() and any(parts.glob("*.parquet")), "its first part")
    lines, workers = _ctrl_c(proc)
    _check_one_line(proc, lines, workers)


def test_ctrl_c_while_workers_still_start_prints_only_the_jobs_line(demo_data: Path, tmp_path: Path) -> None:
    """Early: both workers exist but still import their modules (about a second here), before any initializer
    could ignore SIGINT: they must have started with it ignored."""
    proc = _ingest(demo_data, tmp_path / "store")
    _wait_for(proc, lambda: len(spawned_children(proc.pid)) == 2, "its two workers started")
    time.sleep(0.1)      # past the parent's instant of fork + exec, well inside the workers' imports
    lines, workers = _ctrl_c(proc)
    _check_one_line(proc, lines, workers)
