"""The writer lock when its file is deleted under a running writer (issue 23, item 11), with real processes.

Deleting ``writer.lock`` while a writer runs lets the next writer create a fresh lock file and take it;
DuckDB's own lock on the catalog still refuses that writer, and the error used to name the refused
process itself as the writer (it read back its own fresh record).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from featurestore.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HOST = socket.gethostname()

WRITER = """
import sys
from featurestore.store import FeatureStore
store = FeatureStore.open(sys.argv[1], wait_s=float(sys.argv[2]))
print("holding", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
store.write_table("x", __import__("pyarrow").table({"k": [1]}))
store.close()
"""

PROBE = """
import os, sys
from featurestore.store import FeatureStore, StoreError
print(os.getpid(), flush=True)
try:
    FeatureStore.open(sys.argv[1], read_only=sys.argv[2] == "ro").close()
except StoreError as exc:
    print(exc)
"""


def _writer(root: Path, *args: str, wait_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(wait_s), *args], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _probe(root: Path, mode: str = "rw") -> tuple[int, str]:
    """(pid, the one-line error) of a process that opens the store once, without waiting."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(root), mode], env=ENV, capture_output=True, text=True,
                          timeout=60)
    pid, *lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return int(pid), lines[0]


def _lock_text(root: Path) -> str:
    try:
        return (root / "writer.lock").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def test_a_deleted_lock_file_names_the_real_writer_never_the_refused_process(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FeatureStore.open(root).close()
    a = _writer(root, "--writer-a")
    try:
        assert a.stdout.readline().strip() == "holding", a.stderr.read()
        (root / "writer.lock").unlink()
        for mode in ("rw", "rw", "ro"):   # B, then C after B gave up, then a reader
            pid, message = _probe(root, mode)
            assert f"pid {pid}" not in message
            assert message.startswith(f"cannot open {root / 'catalog.duckdb'}: it is being written by pid {a.pid} "
                                      f"on host {HOST} (python -c ")
            assert "--writer-a) since " in message
            assert f"whose {root / 'writer.lock'} was deleted while it ran" in message
        # the refused writers left a released record behind, so the next writer after A takes it quietly
        assert json.loads((root / "writer.lock").read_text())["state"] == "released"
    finally:
        _stop(a)


def test_a_writer_waiting_behind_a_deleted_lock_is_not_named_as_the_writer(tmp_path: Path) -> None:
    """B waits (holding the new lock file) for the catalog A has open; C is refused by B's lock and must
    learn that A writes; when A finishes, B goes on and its record no longer says it waits."""
    root = tmp_path / "s"
    FeatureStore.open(root).close()
    a = _writer(root, "--writer-a")
    b = None
    try:
        assert a.stdout.readline().strip() == "holding", a.stderr.read()
        (root / "writer.lock").unlink()
        b = _writer(root, "--writer-b", wait_s=60)
        deadline = time.monotonic() + 60
        while "waiting_for" not in _lock_text(root):   # B took the new lock file and waits for the catalog
            assert time.monotonic() < deadline and b.poll() is None
            time.sleep(0.1)
        pid, message = _probe(root)
        assert f"pid {pid}" not in message
        assert message.startswith(f"store {root} is being written by pid {b.pid} on host {HOST} ")
        assert (f"(not writing yet: the catalog is open elsewhere, it is being written by pid {a.pid} on host "
                f"{HOST} (python -c ") in message
        assert "--writer-a) since " in message and "was deleted while it ran" in message
        a.stdin.close()          # A finishes: B opens the catalog and writes
        assert a.wait(timeout=60) == 0, a.stderr.read()
        assert b.stdout.readline().strip() == "holding", b.stderr.read()
        record = json.loads((root / "writer.lock").read_text())
        assert record["pid"] == b.pid and record["state"] == "held" and "waiting_for" not in record
        assert f"waiting up to 60 s for another process to close {root / 'catalog.duckdb'} (it is being written " \
               f"by pid {a.pid}" in b.stderr.readline()
        b.stdin.close()
        assert b.wait(timeout=60) == 0, b.stderr.read()
    finally:
        _stop(a, *([b] if b else []))
    with FeatureStore.open(root, read_only=True) as store:
        assert store.count("x") == 1


def test_a_catalog_opened_without_the_store_names_that_process(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FeatureStore.open(root).close()
    script = "import sys, duckdb; con = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()"
    other = subprocess.Popen([sys.executable, "-c", script, str(root / "catalog.duckdb")], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == "open", other.stderr.read()
        pid, message = _probe(root)
        assert f"pid {pid}" not in message
        assert message.startswith(f"cannot open {root / 'catalog.duckdb'}: it is open in pid {other.pid} on host "
                                  f"{HOST} (python -c 'import sys, duckdb; ")
        assert f"which does not hold {root / 'writer.lock'}" in message
    finally:
        _stop(other)
