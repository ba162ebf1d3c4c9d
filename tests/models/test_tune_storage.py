"""Tuning across processes and machines: ``pipelines.tune --storage URL --workers N`` on a journal file and on a
real PostgreSQL server started here; cooperating processes share the trial count, never train one parameter set
twice, try the defaults once, keep each other's live trials and re-train the best once."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from featurestore.store import FeatureStore
from models.tuning import (
    GRACE_S,
    WORKER_ATTR,
    Active,
    _machine,
    _start_ticks,
    fail_stale,
    replay_repeat,
    resolve_storage,
    worker_identity,
)
from pipelines._cli import run_main
from pipelines.tune import main as tune_main

REPO = Path(__file__).resolve().parents[2]
# the cheapest study: linear head, C and balanced searched, one fold, two focal windows per class
CHEAP = ["--head-kind", "linear", "--mode", "fast", "--focal-per-class", "2", "--tune-folds", "0",
         "--params", '{"pca_components": 0}']
DEFAULTS = {"C": 0.1, "balanced": True}


@pytest.fixture(scope="module")
def store(demo_embedded_store, store_copy) -> Path:
    """A writable copy of the embedded demo (the tuner needs features and folds, no trained head)."""
    return store_copy(demo_embedded_store, "tune_storage")


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary on PATH, else where Debian's package puts it (.ci/run installs it)."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free port of 127.0.0.1, in a temporary folder, with an empty database
    ``optuna``; stopped and removed at teardown. The server refuses to run as root: then it runs as the
    ``postgres`` account (or ``nobody``)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them")
    import psycopg2

    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
    root = Path(tempfile.mkdtemp(prefix="tune-pg-"))   # not under pytest's root-only tmp folders
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
    run = dict(check=True, capture_output=True, text=True, cwd=root, **as_user)
    subprocess.run([initdb, "-D", str(root / "data"), "-A", "trust", "-U", "tune", "--no-sync", "-E", "UTF8"],
                   **run)
    subprocess.run([pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -h 127.0.0.1 -k {root} -F", "start"], **run)
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user="tune", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE optuna")
        con.close()
        yield f"postgresql://tune@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([pg_ctl, "-D", str(root / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=root, **as_user)
        shutil.rmtree(root, ignore_errors=True)


def _tuned_rows(store: Path) -> int:
    with FeatureStore.open(store, read_only=True) as fs:
        return fs.first("SELECT count(*) FROM experiments WHERE tag = 'tuned'")[0] if fs.has_table("experiments") else 0


def _check_cooperation(study: optuna.Study, trials: int) -> None:
    """Trial counts add up, both processes ran trials, no failed trial, the defaults once, no parameter set
    trained twice (a repeat is answered from the earlier trial)."""
    done = study.get_trials(deepcopy=False)
    assert len(done) == trials, [t.state for t in done]
    assert {t.state for t in done} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in done}) == 2, "both processes ran trials"
    assert [t.params for t in done].count(DEFAULTS) == 1
    trained = [tuple(sorted(t.params.items())) for t in done if "repeat_of" not in t.user_attrs]
    assert len(trained) == len(set(trained)), trained
    for t in done:
        if "repeat_of" in t.user_attrs:
            assert study.trials[t.user_attrs["repeat_of"]].params == t.params


def _check_recorded(study: optuna.Study, store: Path) -> None:
    recorded = study.user_attrs["best_recorded"]
    assert recorded["trial"] == study.best_trial.number and recorded["head_id"].startswith("linear-")
    with FeatureStore.open(store, read_only=True) as fs:
        assert fs.first("SELECT tag FROM experiments WHERE head_id = ?", [recorded["head_id"]]) == ("tuned",)


def test_two_workers_share_a_journal_study(store: Path, capfd) -> None:
    before = _tuned_rows(store)
    code = tune_main(["--store", str(store), *CHEAP, "--study", "journal-2", "--trials", "4", "--workers", "2"])
    out = capfd.readouterr().out
    assert code == 0 and "2 processes" in out, out
    journal = store / "optuna.journal"
    assert journal.exists() and f"optuna-dashboard {journal}" in out
    study = optuna.load_study(study_name="journal-2", storage=resolve_storage(store, None, 2).open())
    _check_cooperation(study, 4)
    assert "[worker 2] trial" in out
    assert out.count("re-training the best parameters") == 1, out     # by the parent, after its helper ended
    _check_recorded(study, store)
    assert _tuned_rows(store) == before + 1


def test_two_commands_on_postgres_cooperate(store: Path, postgres: str, capsys) -> None:
    """Two ``pipelines.tune`` commands (two machines, here two processes) on one PostgreSQL study, while a third
    process (this test) is still working on it: neither records the best; a later command does, once."""
    args = ["--store", str(store), *CHEAP, "--study", "pg-2", "--storage", postgres]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.tune", *args, "--trials", "2"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    backend = resolve_storage(store, postgres).open()
    deadline = time.monotonic() + 90
    while "pg-2" not in optuna.get_all_study_names(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    with Active(optuna.load_study(study_name="pg-2", storage=backend)):
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for out in outputs:
        assert "re-training" not in out and "other process(es)" in out, out
    study = optuna.load_study(study_name="pg-2", storage=backend)
    _check_cooperation(study, 4)
    assert "best_recorded" not in study.user_attrs
    capsys.readouterr()
    assert tune_main([*args, "--trials", "0"]) == 0            # the last one: records the best
    assert capsys.readouterr().out.count("re-training the best parameters") == 1
    _check_recorded(optuna.load_study(study_name="pg-2", storage=backend), store)
    assert tune_main([*args, "--trials", "0"]) == 0
    assert "already recorded as" in capsys.readouterr().out


def test_a_live_process_trial_is_kept_and_a_dead_ones_failed(tmp_path: Path) -> None:
    """The stale rule on a journal file: this machine's trials by their process (alive: kept; gone or its pid
    reused: failed at once), another machine's by their heartbeat's age."""
    study = optuna.create_study(study_name="stale", storage=resolve_storage(tmp_path, f"journal:{tmp_path}/j").open())
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["sleep", "60"])
    dead_started = _start_ticks(dead.pid)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        here = {"host": socket.gethostname(), "machine": _machine()}
        cases = {
            "live": {**here, "pid": live.pid, "started": _start_ticks(live.pid)},
            "killed": {**here, "pid": dead.pid, "started": dead_started},
            "pid reused": {**here, "pid": live.pid, "started": "1"},
            "remote fresh": {"host": "far", "machine": "another", "pid": 1, "started": "1"},
            "remote silent": {"host": "far", "machine": "another", "pid": 1, "started": "1"},
        }
        trials = {}
        for name, who in cases.items():
            trial = study.ask()
            trial.set_user_attr(WORKER_ATTR, who)
            trial.set_user_attr("heartbeat", time.time() - (2 * GRACE_S if name == "remote silent" else 0))
            trials[name] = trial.number
        trials["just asked"] = study.ask().number     # no worker yet: its start counts as its heartbeat
        assert fail_stale(study) == 3
        state = {name: study.trials[n].state.name for name, n in trials.items()}
        assert state == {"live": "RUNNING", "killed": "FAIL", "pid reused": "FAIL", "remote fresh": "RUNNING",
                         "remote silent": "FAIL", "just asked": "RUNNING"}
        assert "no heartbeat for" in study.trials[trials["remote silent"]].user_attrs["failed_because"]
        assert study.trials[trials["killed"]].user_attrs["failed_because"] == "left running by a killed process"
        # SQLite is one process: anything running there is a killed process's, except a live local one
        assert fail_stale(study, one_process=True) == 2
        assert study.trials[trials["live"]].state.name == "RUNNING"
    finally:
        live.kill()
        live.wait()


def test_a_repeat_of_a_trial_running_elsewhere_waits_for_its_result(tmp_path: Path) -> None:
    """A parameter set another live process is training now is not trained again: its result is awaited and
    copied; one whose process is dead is not awaited."""
    study = optuna.create_study(study_name="wait", direction="maximize",
                                storage=resolve_storage(tmp_path, f"journal:{tmp_path}/j").open())

    def running(c: float, alive: bool) -> optuna.Trial:
        study.enqueue_trial({"C": c})
        trial = study.ask()
        trial.suggest_float("C", 0.01, 1.0)
        who = worker_identity() if alive else {**worker_identity(), "started": "1"}   # "1": not this process
        trial.set_user_attr(WORKER_ATTR, who)
        trial.set_user_attr("heartbeat", time.time())
        return trial

    first, second = running(0.5, alive=True), running(0.5, alive=True)
    timer = threading.Timer(1.0, lambda: study.tell(first, 0.7))
    t0 = time.monotonic()
    timer.start()
    assert replay_repeat(study, second) == 0.7
    assert time.monotonic() - t0 >= 0.9
    assert study.trials[second.number].user_attrs["repeat_of"] == first.number
    orphan, again = running(0.3, alive=False), running(0.3, alive=True)
    t0 = time.monotonic()
    assert replay_repeat(study, again) is None       # a dead process's trial is not waited for
    assert time.monotonic() - t0 < 0.5 and orphan.number < again.number


def test_workers_are_refused_on_sqlite_with_the_journal_alternative(store: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_main(tune_main, ["--store", str(store), *CHEAP, "--study", "nope", "--workers", "2",
                             "--storage", f"sqlite:///{store}/optuna.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --workers 2 cannot share SQLite") and f"journal:{store}/optuna.journal" in err[0]
    assert resolve_storage(store, None, 2).url == f"journal:{store.resolve()}/optuna.journal"
    assert resolve_storage(store).kind == "sqlite"
    with pytest.raises(Exception, match="unknown tuning storage"):
        resolve_storage(store, "redis://x")
    assert resolve_storage(store, "postgresql://u:secret@h/db").shown == "postgresql://u:***@h/db"
