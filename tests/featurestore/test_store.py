"""Feature store: content-versioned snapshot tables and deduplicating Parquet part tables."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.compact import compact_parts
from featurestore.store import DiskFullError, DiskFullGuard, FeatureStore, StoreError, content_hash

REPO = Path(__file__).resolve().parents[2]


def _table(values: list[int], stamp: str = "2026-01-01") -> pa.Table:
    return pa.table({"k": [f"id{v}" for v in values], "v": values,
                     "ingested_at": pa.array([stamp] * len(values)).cast(pa.timestamp("us"))})


def test_snapshot_versions_follow_content_not_time(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        v1 = store.write_table("things", _table([1, 2, 3]))
        again = store.write_table("things", _table([1, 2, 3], stamp="2026-06-01"))
        assert again.version == v1.version and len(store.versions("things")) == 1
        v2 = store.write_table("things", _table([1, 2, 4]))
        assert v2.version != v1.version and [v.version for v in store.versions("things")] == [v1.version, v2.version]
        assert store.read_table("things").column("v").to_pylist() == [1, 2, 4]
        assert store.read_table("things", v1.version).column("v").to_pylist() == [1, 2, 3]
        store.set_current("things", v1.version)
        assert store.sql("SELECT sum(v) AS s FROM things").column("s").to_pylist() == [6]
    # the catalog is a plain DuckDB file: the view works from a fresh DuckDB connection
    con = duckdb.connect(str(tmp_path / "s" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM things").fetchall() == [(3,)]
    con.close()


def test_content_hash_ignores_volatile_columns_only() -> None:
    assert content_hash(_table([1])) == content_hash(_table([1], stamp="2030-01-01"))
    assert content_hash(_table([1])) != content_hash(_table([2]))


def test_part_table_keeps_latest_row_per_key(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        store.register_part_table("items", ["k"], order_column="ingested_at")
        store.append_part("items", _table([1, 2], stamp="2026-01-01"))
        newer = _table([2, 3], stamp="2026-02-01").set_column(1, "v", pa.array([20, 30]))
        store.append_part("items", newer)
        store.refresh_part_views()
        rows = dict(store.rows("SELECT k, v FROM items"))
        assert rows == {"id1": 1, "id2": 20, "id3": 30}
        assert compact_parts(store, "items") == 3
        files = store.part_files("items")
        assert len(files) == 1 and pq.read_table(files[0]).num_rows == 3
        assert pq.read_metadata(files[0]).row_group(0).column(0).compression == "ZSTD"


def test_errors_name_the_table_and_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no feature store at"):
        FeatureStore.open(tmp_path / "missing", create=False)
    with FeatureStore.open(tmp_path / "s") as store:
        with pytest.raises(StoreError, match="'nothing' is not in the store"):
            store.read_table("nothing")
        with pytest.raises(StoreError, match="invalid table name"):
            store.write_table("Bad Name", _table([1]))
        store.write_table("things", _table([1]))
        with pytest.raises(StoreError, match="has no version 'abc'"):
            store.read_table("things", "abc")


# ---------------------------------------------------------------------------- one writer at a time
HOLDER = """
import sys
from featurestore.store import FeatureStore
store = FeatureStore.open(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
store.close()
"""


def _holder(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), "--marker"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
    return proc


def _record(root: Path) -> dict:
    return json.loads((root / "writer.lock").read_text())


def test_second_writer_fails_at_once_naming_the_holder_and_kill_9_is_taken_over(tmp_path: Path, capfd) -> None:
    root = tmp_path / "s"
    with FeatureStore.open(root) as store:
        store.write_table("things", _table([1, 2]))
    proc = _holder(root)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as info:
            FeatureStore.open(root)
        assert time.monotonic() - t0 < 2
        message = str(info.value)
        assert f"is being written by pid {proc.pid} on host {socket.gethostname()}" in message
        assert "--marker" in message and "since" in message and "writer.lock" in message
        with pytest.raises(StoreError, match=f"being written by pid {proc.pid}"):
            FeatureStore.open(root, read_only=True, wait_s=0)  # a reader that will not wait: say who writes
        proc.kill()  # kill -9: the OS drops the lock, the record stays behind
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert _record(root)["state"] == "held" and _record(root)["pid"] == proc.pid
    capfd.readouterr()
    with FeatureStore.open(root) as store:
        assert store.count("things") == 2
        assert _record(root)["pid"] == os.getpid() and _record(root)["state"] == "held"
    err = capfd.readouterr().err
    assert f"taking over the writer lock of store {root} from pid {proc.pid}" in err and "process is gone" in err
    assert _record(root)["state"] == "released"
    with FeatureStore.open(root):
        pass
    assert "taking over" not in capfd.readouterr().err  # a released lock is no warning


def test_waiting_writer_is_announced_and_proceeds(tmp_path: Path, capfd) -> None:
    root = tmp_path / "s"
    FeatureStore.open(root).close()
    proc = _holder(root)
    try:
        threading.Timer(1.0, proc.stdin.close).start()  # the holder finishes after ~1 s
        with FeatureStore.open(root, wait_s=60) as store:
            assert _record(root)["pid"] == os.getpid()
            assert store.table_names() == []
    finally:
        proc.kill()
        proc.wait(timeout=30)
    err = capfd.readouterr().err
    assert f"waiting up to 60 s for pid {proc.pid}" in err and "taking over" not in err


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path: Path, capfd) -> None:
    root = tmp_path / "s"
    FeatureStore.open(root).close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (root / "writer.lock").write_text(json.dumps({"state": "held", "pid": int(dead), "host": socket.gethostname(),
                                                  "command": "python -m pipelines.embed", "started_at": "x"}))
    with FeatureStore.open(root) as store:
        store.write_table("things", _table([1]))
    err = capfd.readouterr().err
    assert f"from pid {dead} on host {socket.gethostname()} (python -m pipelines.embed)" in err
    assert _record(root)["state"] == "released" and _record(root)["pid"] == os.getpid()


def test_nested_writers_in_one_process_share_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "s"
    probe = ("import sys\nfrom featurestore.store import FeatureStore, StoreError\n"
             "try:\n    FeatureStore.open(sys.argv[1]).close()\nexcept StoreError as e:\n    print(e)")
    with FeatureStore.open(root) as outer:
        with FeatureStore.open(root) as inner:
            inner.write_table("things", _table([1]))
        assert _record(root)["state"] == "held"  # reading the record does not drop the lock either
        assert outer.count("things") == 1
        other = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert f"is being written by pid {os.getpid()}" in other.stdout, other.stderr
    assert _record(root)["state"] == "released"


# ---------------------------------------------------------------------------- disk full
def test_enospc_from_pyarrow_and_the_os_becomes_one_store_error(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: the store's guard names the file and the folder."""
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full device here")
    # through file objects only: given a path, pyarrow deletes the file it failed to write
    with pytest.raises(DiskFullError) as info, DiskFullGuard(tmp_path / "x.parquet", tmp_path), \
            open("/dev/full", "wb", buffering=0) as fh:
        pq.write_table(_table([1, 2, 3]), fh)
    assert str(info.value) == (f"disk full while writing {tmp_path / 'x.parquet'}: free space in {tmp_path} "
                               "and re-run; finished parts are kept")
    with pytest.raises(DiskFullError), DiskFullGuard(tmp_path / "y", tmp_path), \
            open("/dev/full", "wb", buffering=0) as fh:
        fh.write(b"x" * 10_000)
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # crosses worker processes
    assert Path("/dev/full").is_char_device()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 4 MB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'}); "
                    "the /dev/full test covers the error translation")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_opens_and_fails_writes_with_one_store_error(tiny_disk: Path) -> None:
    root = tiny_disk / "s"
    with FeatureStore.open(root) as store:
        store.write_table("things", _table([1, 2, 3]))
        store.register_part_table("items", ["k"], order_column="ingested_at")
        store.append_part("items", _table([1, 2]))
        store.refresh_part_views()
    filler = tiny_disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    assert os.statvfs(tiny_disk).f_bavail == 0
    with FeatureStore.open(root) as store:  # nothing changed: opening writes nothing
        assert store.count("items") == 2 and store.count("things") == 3
        store.write_table("things", _table([1, 2, 3]))  # unchanged content: nothing to write
        with pytest.raises(DiskFullError, match=f"disk full while writing {root / 'parts' / 'items'}/part-"):
            store.append_part("items", _table(list(range(50_000))))
        with pytest.raises(DiskFullError, match=f"disk full while writing {root / 'catalog.duckdb'}: free space "
                                                f"in {root} and re-run; finished parts are kept"):
            store.write_table("big", pa.table({"x": list(range(300_000))}))
    assert [p.name for p in (root / "parts" / "items").iterdir()] == [store.part_files("items")[0].name]
    filler.unlink()
    with FeatureStore.open(root) as store:
        assert store.count("items") == 2
        store.append_part("items", _table([3]))
        store.write_table("big", pa.table({"x": list(range(1000))}))
