"""``--engine ray`` on a real two-node local Ray cluster: after a SIGKILLed driver and a re-run during which an
actor is SIGKILLed, the demo's classical features are bit-identical to the process pool's and every window
is in the raw parts exactly once (not only in the view); a node that cannot see the store is refused with
one error naming it. (A clean run is this path minus the kills; a re-run that plans nothing is tested by
the local engine's tests: that part of the job is shared.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import duckdb
import pytest

from embed.job import EmbedActor, run_embed
from embed.ray_engine import run_actor_tasks
from featurestore.errors import DataError

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
JOB = {"extractors": "classical", "sources": ["train_audio"], "task_seconds": 8.0}   # 56 files, 94 windows, ~40 tasks


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine, this process connected as a driver."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def local_rows(demo_embedded_store: Path) -> list[tuple]:
    """The reference: the classical rows of the demo's train_audio windows as the process pool embedded them
    (the session's demo store, embedded with birdnet+classical by two worker processes)."""
    rows = [r for r in raw_rows(demo_embedded_store) if r[0].startswith("train_audio/")]
    assert len(rows) == 94
    return rows


def raw_rows(store: Path) -> list[tuple]:
    """Every row of every classical part (not the deduplicating view), write time left out, sorted."""
    con = duckdb.connect()
    rows = con.execute(f"SELECT * EXCLUDE (written_at) FROM read_parquet('{store}/parts/classical_windows/*.parquet')"
                       ).fetchall()
    return sorted(rows, key=lambda r: r[0])


def assert_complete(store: Path, local_rows: list[tuple]) -> None:
    rows = raw_rows(store)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 94, "every window exactly once in the raw parts"
    assert rows == local_rows, "features bit-identical to --engine local"


def actor_pids(cluster) -> list[int]:
    """Pids of the Ray Data map actors of this test's cluster: children of its raylets whose process title
    names the actor class (never another job's processes on this machine)."""
    from ray._private import ray_constants

    raylets = {str(info.process.pid) for node in cluster.list_all_nodes()
               for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
                parent = (entry / "stat").read_text().rpartition(")")[2].split()[1]
            except (OSError, IndexError):
                continue
            if title.startswith(b"ray::MapWorker") and parent in raylets:
                pids.append(int(entry.name))
    return pids


def parts(store: Path) -> int:
    return len(list((store / "parts" / "classical_windows").glob("*.parquet")))


@pytest.fixture(scope="module")
def killed_twice(cluster, demo_store: Path, store_copy) -> dict:
    """One embed of the demo's train_audio on the two nodes, killed twice: its driver (a ``pipelines.embed``
    process) is SIGKILLed once two parts exist; the re-run (this process) has one of its actors SIGKILLed
    once one more part exists. (One scenario for both kills: each Ray pipeline costs ~6 s of actor start.)"""
    store = store_copy(demo_store, "ray-killed")
    cmd = [sys.executable, "-m", "pipelines.embed", "--store", str(store), "--extractor", "classical",
           "--sources", "train_audio", "--task-seconds", "8", "--engine", "ray", "--address", cluster.address,
           "--quiet"]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300   # a loaded box starts actors slowly: only a ceiling
    while parts(store) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    driver.kill()
    driver.wait()
    seen = {"driver_rc": driver.returncode, "driver_stderr": driver.stderr.read().decode(),
            "parts_at_driver_kill": parts(store), "killed": []}

    def watcher() -> None:   # SIGKILL one map actor once the re-run has written a part (more remain)
        first = parts(store)
        deadline = time.monotonic() + 300   # a loaded box starts actors slowly: only a ceiling
        while time.monotonic() < deadline and not seen["killed"]:
            pids = actor_pids(cluster)
            if pids and parts(store) >= first + 1:
                os.kill(pids[0], signal.SIGKILL)
                seen["killed"].append((pids[0], parts(store)))
            time.sleep(0.01)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    seen["summary"] = run_embed(store, JOB["extractors"], engine="ray", sources=JOB["sources"],
                                task_seconds=JOB["task_seconds"])
    thread.join(5)
    seen["store"] = store
    return seen


def test_a_killed_driver_then_a_rerun_embeds_nothing_twice(killed_twice: dict, local_rows) -> None:
    seen = killed_twice
    assert seen["driver_rc"] == -signal.SIGKILL, seen["driver_stderr"]
    assert seen["parts_at_driver_kill"] >= 2, seen["driver_stderr"]
    summary = seen["summary"]
    assert 0 < summary.windows_before["classical"] < 94, "the re-run resumed a part-done store"
    assert summary.windows_stored == {"classical": 94} and summary.errors == []
    assert_complete(seen["store"], local_rows)


def test_an_actor_killed_mid_run_is_retried_and_the_run_ends_identical(killed_twice: dict, local_rows) -> None:
    seen, summary = killed_twice, killed_twice["summary"]
    assert seen["killed"], "the watcher found no actor to kill"
    assert seen["killed"][0][1] < parts(seen["store"]), "the actor was killed before the last part was written"
    assert summary.engine == "ray" and summary.workers == 2          # every CPU of the two nodes
    assert summary.windows_now["classical"] == 94 - summary.windows_before["classical"]
    assert summary.actor_startup_s is not None and summary.actor_startup_s > 0
    assert_complete(seen["store"], local_rows)


def test_a_node_that_cannot_see_the_store_is_refused_by_name(cluster, tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted" / "parts"
    make = partial(EmbedActor, [], {}, str(missing), str(tmp_path), str(tmp_path / "embed-0of1.lock"), None)
    with pytest.raises(DataError, match=rf"node \S+ cannot see {missing}: the store and audio folders must be"):
        list(run_actor_tasks(make, [[]], actors=1))
