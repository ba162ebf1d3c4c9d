"""Ctrl-C during ``pipelines.tune``, ``--trials 0`` and progress inside a trial (issue 28 items 3, 4, 11).

* Ctrl-C mid-trial (a real SIGINT to a real ``python -m pipelines.tune``): exit 130 within seconds, one stderr line
  and no traceback; the trial is FAIL and its parameters are queued (WAITING), so the resumed study runs them first
  - a new study interrupted in its defaults trial still starts from the defaults.
* ``--trials 0`` on a study that does not exist is refused before anything is made; on an existing one it runs.
* A trial's folds are reported as they finish (``progress``); an error in the objective fails the trial and comes
  out as itself (no Optuna traceback); a trial of a killed process is queued again a bounded number of times.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from featurestore.errors import StoreError, UserInputError
from models.frame import FrameSpec
from models.tuning import (
    ATTEMPT_ATTR,
    INTERRUPTED,
    KILLED_ATTEMPTS,
    RETRY_ATTR,
    WORKER_ATTR,
    Slots,
    TuneSpec,
    fail_stale,
    resolve_storage,
    run_trials,
    run_tune,
    storage_url,
    worker_identity,
)
from pipelines._cli import LineProgress, run_main
from pipelines.tune import INTERRUPTED as TUNE_INTERRUPTED
from pipelines.tune import main as tune_main
from stack.tuning import StackTuneSpec, tune_stack

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = {"C": 0.1, "pca_components": 256, "balanced": True}   # LinearParams' defaults, enqueued first
S = optuna.trial.TrialState


@pytest.fixture(scope="module")
def store(demo_embedded_store, store_copy) -> Path:
    """A writable copy of the embedded demo (features and folds; the tuner trains its own heads)."""
    return store_copy(demo_embedded_store, "tune_interrupt")


def _study(store: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(store))


def _training(store: Path, name: str, timeout: float = 120.0) -> None:
    """Wait until trial 0 of study ``name`` has its parameters and starts its folds (so a signal lands mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (store / "optuna.db").exists():
            try:
                trials = _study(store, name).get_trials(deepcopy=False)
            except KeyError:            # the study is not made yet
                trials = []
            if trials and trials[0].state == S.RUNNING and "n_eval_windows" in trials[0].user_attrs:
                return
        time.sleep(0.05)
    raise AssertionError(f"trial 0 of {name} never started its folds")


def test_ctrl_c_mid_trial_exits_130_and_the_resumed_study_runs_that_trial_first(store: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.tune", "--store", str(store), "--head-kind", "linear",
                             "--study", "ctrlc", "--trials", "3"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _training(store, "ctrlc")     # its 5 folds of the defaults (pca 256) take a few seconds
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == [TUNE_INTERRUPTED], err     # one line, no traceback, no progress line
    assert "re-run the same command" in TUNE_INTERRUPTED and "queued to run first" in TUNE_INTERRUPTED
    assert seconds < 10, seconds       # the fold in progress (~0.5 s) + cleanup + interpreter exit (~1 s)
    trials = _study(store, "ctrlc").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [S.FAIL, S.WAITING], trials
    assert trials[0].params == DEFAULTS and trials[0].user_attrs["failed_because"] == INTERRUPTED
    assert trials[1].system_attrs["fixed_params"] == DEFAULTS
    assert (trials[1].user_attrs[RETRY_ATTR], trials[1].user_attrs[ATTEMPT_ATTR]) == (0, 2)

    # resumed (as the CLI does, in-process): the queued defaults run first, their folds reported as they finish
    lines = io.StringIO()
    out = run_tune(store, TuneSpec("linear", FrameSpec("birdnet")), 1, "ctrlc", record_best=False,
                   say=lambda _: None, progress=lambda total, desc: LineProgress(total, desc, "fold", every=0.0,
                                                                                  stream=lines))
    first = _study(store, "ctrlc").trials[1]
    assert first.state == S.COMPLETE and first.params == DEFAULTS and first.user_attrs[RETRY_ATTR] == 0
    assert (out.trials, out.completed, out.failed, out.waiting) == (2, 1, 1, 0)
    shown = lines.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in shown] == [f"trial 1: {k}/5 fold ({20 * k}%)" for k in range(1, 6)] + \
        ["trial 1: done: 5/5 fold (100%)"], shown

    # --trials 0 on this existing study still runs (it records the best other commands found)
    again = run_tune(store, TuneSpec("linear", FrameSpec("birdnet")), 0, "ctrlc", record_best=False,
                     say=lambda _: None)
    assert (again.trials, again.best_trial) == (2, 1)


def test_trials_0_on_a_new_study_is_refused_before_anything_is_made(store: Path, tmp_path: Path, capsys) -> None:
    journal = tmp_path / "tune.journal"
    with pytest.raises(SystemExit) as exit_:
        run_main(tune_main, ["--store", str(store), "--head-kind", "linear", "--study", "fresh", "--trials", "0",
                             "--storage", f"journal:{journal}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --trials 0 adds no trial and study 'fresh' does not exist") and \
        "give --trials 1 or more" in err[0], err
    assert not journal.exists()
    db = store / "optuna.db"
    studies = optuna.get_all_study_names(storage_url(store)) if db.exists() else []
    with pytest.raises(UserInputError, match="does not exist"):       # the store's own SQLite file
        run_tune(store, TuneSpec("linear", FrameSpec("birdnet")), 0, "fresh", say=lambda _: None)
    assert (optuna.get_all_study_names(storage_url(store)) if db.exists() else []) == studies
    # the stacker tuner shares the rule (checked before its inputs are read: an empty folder will do)
    with pytest.raises(UserInputError, match="does not exist"):
        tune_stack(tmp_path / "nostore", StackTuneSpec(("linear-x",), "ridge"), 0, "fresh")
    assert not (tmp_path / "nostore").exists()


def _journal_study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="s", direction="maximize",
                               storage=resolve_storage(tmp_path, f"journal:{tmp_path}/j").open())


def test_an_interrupted_or_failing_objective_fails_its_trial_without_an_optuna_traceback(tmp_path: Path,
                                                                                        capfd) -> None:
    study = _journal_study(tmp_path)
    where = resolve_storage(tmp_path, f"journal:{tmp_path}/j")

    def interrupted(trial) -> float:
        trial.suggest_float("C", 0.01, 1.0)
        raise KeyboardInterrupt

    def broken(trial) -> float:
        trial.suggest_float("C", 0.01, 1.0)
        raise StoreError("no held-out fold was scorable")

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, interrupted, Slots(3), where, [], say=print)
    with pytest.raises(StoreError, match="no held-out fold"):
        run_trials(study, broken, Slots(3), where, [], say=print)   # runs the queued copy first, then fails
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [S.FAIL, S.FAIL]
    assert trials[0].user_attrs["failed_because"] == INTERRUPTED
    assert trials[1].params == trials[0].params and trials[1].user_attrs[RETRY_ATTR] == 0
    assert trials[1].user_attrs["failed_because"] == "StoreError: no held-out fold was scorable"
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out and "failed with" not in captured.err


def test_a_killed_process_trial_is_queued_again_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A trial whose process died measured nothing: its parameters run again, but a parameter set that killed
    its process KILLED_ATTEMPTS times is left failed (it may be what kills it)."""
    study = _journal_study(tmp_path)
    dead = {**worker_identity(), "started": "1"}        # this pid, another start time: a dead process
    study.enqueue_trial({"C": 0.5})
    for attempt in range(1, KILLED_ATTEMPTS + 1):
        trial = study.ask()                              # the queued copy (the first: the enqueued trial)
        assert trial.suggest_float("C", 0.01, 1.0) == 0.5
        trial.set_user_attr(WORKER_ATTR, dead)
        assert fail_stale(study) == 1
        assert study.trials[trial.number].state == S.FAIL
        waiting = study.get_trials(deepcopy=False, states=(S.WAITING,))
        if attempt < KILLED_ATTEMPTS:
            assert len(waiting) == 1 and waiting[0].user_attrs[RETRY_ATTR] == trial.number
            assert waiting[0].user_attrs[ATTEMPT_ATTR] == attempt + 1
            assert waiting[0].system_attrs["fixed_params"] == {"C": 0.5}
        else:
            assert waiting == []
    assert fail_stale(study) == 0
