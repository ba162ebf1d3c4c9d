"""Readers are not locked out of the store for a long job's run (issue 24, item 3), with real processes.

DuckDB refuses every other process a catalog that one process has open read-write, read-only
connections included. A long job therefore keeps ``writer.lock`` for its whole run but has the catalog
open only while it reads its inputs and records its results (:meth:`FeatureStore.release_catalog`); a
read-only open meanwhile waits seconds (by default up to ``READ_WAIT_SECONDS``), never the job's length.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from featurestore.errors import StoreBusyError, StoreError
from featurestore.store import READ_WAIT_SECONDS, FeatureStore

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HOST = socket.gethostname()

# A real embed (classical features of the demo's 4 test soundscapes, one worker, one file per task: one part
# each) whose progress hook pauses after the first
# finished task until the test writes a line: the job is then in the middle of its work, as a long embed is
# for hours, and stays alive for as long as the test reads.
PAUSE_ONCE = """
import sys
calls = []
def progress(value):
    calls.append(value)
    if len(calls) == 1:
        print("working", flush=True)
        sys.stdin.readline()
"""
EMBED = PAUSE_ONCE + """
from embed.job import run_embed
summary = run_embed(sys.argv[1], "classical", workers=1, sources=["test_soundscapes"], task_seconds=60.0,
                    progress=progress)
print("stored", summary.windows_stored["classical"], "of", summary.windows_in_scope["classical"], flush=True)
"""

# A real head trained in a subprocess, paused after its first fold the same way.
TRAIN = PAUSE_ONCE + """
from models.frame import FrameSpec
from models.training import train_head
result = train_head(sys.argv[1], "linear", FrameSpec("birdnet"), progress=progress)
print("head", result.head_id, flush=True)
"""

# A writer that releases the catalog and holds writer.lock until told to record a table and finish.
HOLDER = """
import sys
import pyarrow as pa
from featurestore.store import FeatureStore
store = FeatureStore.open(sys.argv[1])
store.release_catalog()
print("released", flush=True)
sys.stdin.readline()
store.write_table("after", pa.table({"k": [1, 2, 3]}))
store.close()
print("closed", flush=True)
"""

# A reader that holds the catalog open until told to close it.
READER = """
import sys
from featurestore.store import FeatureStore
store = FeatureStore.open(sys.argv[1], read_only=True, wait_s=0)
print("reading", store.count("things"), flush=True)
sys.stdin.readline()
store.close()
"""

# A writer that keeps the catalog open for ``argv[2]`` seconds (recording its results), then releases it.
BRIEF_WRITER = """
import sys, time
from featurestore.store import FeatureStore
store = FeatureStore.open(sys.argv[1])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
store.release_catalog()
sys.stdin.readline()
store.close()
"""


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _expect(proc: subprocess.Popen, word: str) -> str:
    line = proc.stdout.readline()
    if not line.startswith(word):
        proc.kill()
        pytest.fail(f"expected {word!r}, got {line!r}; stderr: {proc.stderr.read()[-2000:]}")
    return line.strip()


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _sql(root: Path, query: str) -> subprocess.CompletedProcess:
    """``python -m pipelines.sql`` as a user runs it (read-only, default wait), from another process."""
    return subprocess.run([sys.executable, "-m", "pipelines.sql", "--store", str(root), "-c", query], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def _value(done: subprocess.CompletedProcess) -> int:
    """The one value a one-column, one-row ``pipelines.sql`` printed (under its header and a rule)."""
    header, rule, value, *_ = done.stdout.split()
    return int(value)


def _things(root: Path) -> None:
    with FeatureStore.open(root) as store:
        store.write_table("things", pa.table({"k": ["a", "b"], "v": [1, 2]}))
        store.register_part_table("items", ["k"])
        store.append_part("items", pa.table({"k": ["a", "a", "b"], "v": [1, 2, 3],
                                             "written_at": pa.array([1, 2, 3], pa.timestamp("us"))}))
        store.refresh_part_views()


# ---------------------------------------------------------------------------- whole jobs
def test_a_reader_succeeds_while_an_embed_runs(demo_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(demo_store, root)
    with FeatureStore.open(root, read_only=True) as store:
        n_windows = store.count("windows")
        n_embedded = store.first("SELECT count(*) FROM windows WHERE source = 'test_soundscapes'")[0]
    embed = _start(EMBED, root)
    try:
        _expect(embed, "working")       # the embed has written its first part and goes on
        done = _sql(root, "SELECT count(*) AS n FROM windows")
        assert done.returncode == 0, done.stderr
        assert _value(done) == n_windows
        assert "waiting" not in done.stderr   # nothing to wait for: the embed has no catalog open while it works
        partial = _sql(root, "SELECT count(*) AS n FROM classical_windows")   # the parts written so far
        assert partial.returncode == 0, partial.stderr
        assert 0 < _value(partial) < n_embedded, partial.stdout
        assert embed.poll() is None     # the reads happened during the embed, not after it
        out, _ = _finish(embed)
    finally:
        _stop(embed)
    assert f"stored {n_embedded} of {n_embedded}" in out
    with FeatureStore.open(root, read_only=True) as store:
        assert store.count("classical_windows") == n_embedded
        assert store.first("SELECT count(DISTINCT window_id) FROM classical_windows")[0] == n_embedded


def test_a_reader_succeeds_while_a_head_trains_and_a_second_writer_is_named(synthetic_store: Path,
                                                                             tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(synthetic_store, root)
    train = _start(TRAIN, root)
    try:
        _expect(train, "working")       # fold 0 is trained; the job holds writer.lock, not the catalog
        done = _sql(root, "SELECT count(*) AS n FROM windows")
        assert done.returncode == 0 and "waiting" not in done.stderr, done.stderr
        with pytest.raises(StoreBusyError) as refused:
            FeatureStore.open(root)
        assert f"is being written by pid {train.pid} on host {HOST}" in str(refused.value)
        assert train.poll() is None
        out, _ = _finish(train)
    finally:
        _stop(train)
    head_id = out.split()[-1]
    with FeatureStore.open(root, read_only=True) as store:   # the results were recorded after the re-open
        assert store.first("SELECT count(*) FROM experiments WHERE head_id = ?", [head_id])[0] == 1
        assert store.first("SELECT count(DISTINCT head_id) FROM oof_predictions WHERE head_id = ?",
                           [head_id])[0] == 1


# ---------------------------------------------------------------------------- the store itself
def test_a_second_writer_is_refused_naming_the_first_while_its_catalog_is_released(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _things(root)
    holder = _start(HOLDER, root)
    try:
        _expect(holder, "released")
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError) as refused:
            FeatureStore.open(root)
        assert time.monotonic() - t0 < 5   # at once, not after a wait
        message = str(refused.value)
        assert message.startswith(f"store {root} is being written by pid {holder.pid} on host {HOST} (python -c ")
        with FeatureStore.open(root, read_only=True, wait_s=0) as store:   # readers get in at once
            assert store.count("things") == 2 and dict(store.rows("SELECT k, v FROM items")) == {"a": 2, "b": 3}
        out, _ = _finish(holder)       # the holder re-opens its catalog and records a table
    finally:
        _stop(holder)
    assert out.split() == ["closed"]
    with FeatureStore.open(root, read_only=True) as store:
        assert store.count("after") == 3


def test_release_then_use_reopens_with_the_store_settings(tmp_path: Path) -> None:
    for root in (tmp_path / "s", tmp_path / "with,comma"):   # a comma: views over absolute paths (TEMP views)
        _things(root)
        with FeatureStore.open(root) as store:
            store.release_catalog()
            store.release_catalog()                          # twice is nothing
            assert dict(store.rows("SELECT k, v FROM items")) == {"a": 2, "b": 3}   # the part view
            if "," not in str(root):                         # file_search_path re-set: relative globs resolve
                assert store.first("SELECT count(*) FROM read_parquet('parts/items/*.parquet')")[0] == 3
            store.release_catalog()
            store.write_table("things", pa.table({"k": ["c"], "v": [3]}))          # a write re-opens too
            assert len(store.versions("things")) == 2
        with pytest.raises(StoreError, match="is closed"):
            store.count("things")
        with FeatureStore.open(root, read_only=True) as store:
            store.release_catalog()
            assert store.count("things") == 1 and store.count("items") == 2


def test_a_reader_holding_the_catalog_makes_the_writer_wait_then_it_succeeds(tmp_path: Path, capfd) -> None:
    root = tmp_path / "s"
    _things(root)
    with FeatureStore.open(root) as store:
        store.release_catalog()
        reader = _start(READER, root)
        try:
            assert _expect(reader, "reading") == "reading 2"
            capfd.readouterr()
            t0 = time.monotonic()
            closer = subprocess.Popen(["sh", "-c", "sleep 1.5; echo go"], stdout=reader.stdin)
            assert store.count("things") == 2        # waits for the reader, then re-opens
            waited = time.monotonic() - t0
            closer.wait(timeout=30)
            assert reader.wait(timeout=30) == 0
        finally:
            _stop(reader)
        err = capfd.readouterr().err
        assert 1.0 < waited < 30
        assert (f"for another process to close {root / 'catalog.duckdb'} (it is open in pid {reader.pid} on host "
                f"{HOST} (python -c ") in err
        store.write_table("more", pa.table({"k": [1]}))
    with FeatureStore.open(root, read_only=True) as store:
        assert store.count("more") == 1


def test_a_reader_waits_by_default_while_a_writer_records_its_results(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _things(root)
    writer = _start(BRIEF_WRITER, root, "1.5")
    try:
        _expect(writer, "holding")
        done = _sql(root, "SELECT sum(v) AS s FROM things")
        assert done.returncode == 0, done.stderr
        assert _value(done) == 3
        assert (f"waiting up to {READ_WAIT_SECONDS:.0f} s for another process to close {root / 'catalog.duckdb'} "
                f"(it is being written by pid {writer.pid} on host {HOST} (python -c ") in done.stderr
        assert writer.poll() is None
        _finish(writer)
    finally:
        _stop(writer)


def test_a_reader_fails_at_once_for_a_program_holding_the_catalog_without_the_store(tmp_path: Path) -> None:
    """Nothing says when a program that opened the catalog itself (a duckdb shell) lets go: no default wait."""
    root = tmp_path / "s"
    _things(root)
    script = "import sys, duckdb; con = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()"
    other = _start(script, root / "catalog.duckdb")
    try:
        _expect(other, "open")
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match=f"it is open in pid {other.pid} on host {HOST}"):
            FeatureStore.open(root, read_only=True)
        assert time.monotonic() - t0 < 5
    finally:
        _stop(other)
