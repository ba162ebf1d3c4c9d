"""Optuna search over a head's parameters that measures what the leaderboard measures.

* **Objective** = the fold mean of the competition metric on the full labelled evaluation rows
  (each held-out fold scored by the one model that did not see it) - the experiments table's
  headline, computed by the same code: the set-up of :func:`models.training.plan_cv` and the one
  cross-validation loop :func:`models.training.cross_validate`, scored by ``fold_score``.
  A trial in ``full`` mode with the default parameters scores exactly the fold mean that
  ``pipelines.train`` records.
* **Intermediate values** are the per-fold AUCs, reported at step = fold id, so the median pruner
  compares a trial's fold 2 with other trials' fold 2; each fold also advances the caller's ``progress`` bar.
* **Fast mode** (named, fixed) keeps full evaluation but trains on at most ``focal_per_class``
  focal windows per class and/or only the ``folds`` listed; it never trains on the evaluation
  subset alone.
* **Resumable**: the study lives in ``<store>/optuna.db`` (or the ``--storage`` given: :func:`resolve_storage`);
  trial n's sampler is seeded with ``seed + n`` (trial numbers are unique across processes, so a resumed
  study and cooperating processes draw new parameter sets), an exact repeat of a finished parameter set is
  answered from the earlier trial without training (a repeat of one still running elsewhere waits for it),
  and trials left RUNNING by a killed process are marked FAIL (:func:`fail_stale`). A trial stopped before its
  end (Ctrl-C: at once, :func:`fail_interrupted`; a killed process: when the next command finds it) is marked
  FAIL and its parameters queued (:func:`requeue`): queued trials run first, so a new study interrupted in its
  defaults trial still starts from the defaults. ``trials`` 0 records the best of an existing study and is
  refused for a new one (:func:`check_trials`). Re-using a study name with another head, features, fold
  version or mode is refused.
* **Many processes, many machines** (:func:`resolve_storage`): ``journal:PATH`` (Optuna's JournalStorage on
  a file: many processes on one machine; the default of ``workers > 1``), ``postgresql://`` / ``mysql://``
  (RDBStorage: many machines), SQLite (one process only: refused with ``workers > 1``). Processes sharing a
  study cooperate: the study's creator alone enqueues the defaults, a command's ``trials`` are shared by its
  ``workers`` (a shared count: exactly ``trials`` in all), a live process's RUNNING trial is never failed
  (heartbeats), and the best is re-trained once, by the last process to finish (:func:`record_best_once`).
* **Recorded**: the objective is named ``fold_mean_auc``; the study carries head, features,
  pooling, context, weights, fixed parameters, fold version, mode and seed; every trial carries
  per-fold AUCs, fold std, window counts, seconds, the head id a full run would get and the process that
  ran it (``worker``, ``heartbeat``). The best parameters are re-trained with full cross-validation and
  recorded as a ``tuned`` experiment (study attribute ``best_recorded``).

Search spaces are data (:data:`SEARCH_SPACES`); ``fixed`` parameters leave the space.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featurestore.errors import StackError, StoreError, UserInputError
from featurestore.folds import folds_to_run
from featurestore.store import FeatureStore
from models.frame import FrameSpec
from models.heads import PARAMS_BY_KIND, make_params
from models.training import Subsample, fold_score, head_params, plan_cv, train_head

STUDY_FILE = "optuna.db"
JOURNAL_FILE = "optuna.journal"
RECORD_LOCK = "tune-record.lock"   # in the store: one process at a time decides and records a study's best
HEARTBEAT_S = 10.0   # a running trial writes its ``heartbeat`` attribute this often ...
GRACE_S = 60.0       # ... and is taken for dead after this long without one (when its process cannot be asked)
REPEAT_POLL_S = 0.5  # how often a repeat of a trial running elsewhere looks for its result
WORKER_ATTR, BEAT_ATTR = "worker", "heartbeat"
METRIC_NAME = "fold_mean_auc"
MODES = ("full", "fast")
DEFAULT_FAST = Subsample(focal_per_class=50)


@dataclass(frozen=True)
class Dim:
    """One searched parameter: ``float``/``int`` in [low, high] (log scale if ``log``) or ``cat`` over choices."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial, name: str):
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value) -> bool:
        if self.kind == "cat":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high


SEARCH_SPACES: dict[str, dict[str, Dim]] = {
    "linear": {
        "C": Dim("float", 1e-3, 10.0, log=True),
        "pca_components": Dim("cat", choices=(0, 32, 128, 256)),
        "balanced": Dim("cat", choices=(True, False)),
    },
    "lgbm": {
        "learning_rate": Dim("float", 0.02, 0.3, log=True),
        "num_leaves": Dim("int", 4, 63, log=True),
        "min_child_samples": Dim("int", 2, 50, log=True),
        "feature_fraction": Dim("float", 0.03, 0.9, log=True),  # holds the 0.05 default (enqueued first)
        "neg_per_pos": Dim("float", 5.0, 100.0, log=True),
        "lambda_l2": Dim("float", 1e-3, 10.0, log=True),
        "max_bin": Dim("cat", choices=(15, 31, 63)),
    },
}


def storage_url(store_dir: str | Path) -> str:
    """The store's own study file (SQLite: one process at a time)."""
    return f"sqlite:///{Path(store_dir).expanduser().resolve() / STUDY_FILE}"


STORAGE_FORMS = ("journal:PATH (many processes, one machine), postgresql://USER@HOST:PORT/DB or mysql://... "
                 "(many machines), sqlite:///PATH (one process)")


@dataclass(frozen=True)
class Storage:
    """Where a study lives: ``kind`` is ``journal`` (a JournalStorage file), ``sqlite`` or ``rdb`` (PostgreSQL,
    MySQL); ``url`` is absolute (``journal:/abs/path``), so spawned workers and other machines agree on it."""

    url: str
    kind: str

    @property
    def one_process(self) -> bool:
        return self.kind == "sqlite"

    @property
    def shown(self) -> str:
        """The URL with any password hidden (for messages and logs)."""
        if self.kind != "rdb":
            return self.url
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def file(self) -> Path | None:
        """The file a journal or SQLite study lives in (None for a database server or an in-memory SQLite)."""
        if self.kind == "journal":
            return Path(self.url.removeprefix("journal:"))
        if self.kind == "sqlite":
            from sqlalchemy.engine import make_url

            database = make_url(self.url).database
            return Path(database).expanduser() if database and database != ":memory:" else None
        return None

    def has_study(self, name: str) -> bool:
        """Whether study ``name`` exists here. A missing journal or SQLite file means no, and is not created."""
        import optuna

        path = self.file
        if path is not None and not path.exists():
            return False
        return name in optuna.get_all_study_names(self.open())

    def dashboard(self) -> str:
        """What to give ``optuna-dashboard`` (a journal file is given as its path)."""
        return self.url.removeprefix("journal:") if self.kind == "journal" else self.shown

    def open(self):
        """The Optuna storage object (a journal file's folder is made if missing)."""
        import optuna

        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            path = Path(self.url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        url = self.url
        if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None and \
                importlib.util.find_spec("psycopg2") is not None:
            url = url.replace("postgresql://", "postgresql+psycopg2://", 1)   # SQLAlchemy 2.1 defaults to psycopg 3
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(url)
            except ImportError as exc:   # the database driver
                raise UserInputError(f"cannot open tuning storage {self.shown}: {exc}; install its database driver "
                                     "(PostgreSQL: pip install -e '.[postgres]')") from exc
            except Exception as exc:     # sqlalchemy's OperationalError (server down, bad password, no database)
                text = str(exc).strip()
                if attempt < 2 and ("already exists" in text or "duplicate" in text.lower()):
                    time.sleep(1.0)      # processes on a new database made Optuna's tables at once: the other won
                    continue
                first = text.splitlines()[0] if text else type(exc).__name__
                raise StoreError(f"cannot open tuning storage {self.shown}: {first}; check that the server runs "
                                 "and the database exists (e.g. createdb optuna), then re-run") from exc
        raise AssertionError("unreachable")


def resolve_storage(store_dir: str | Path, storage: str | None = None, workers: int = 1) -> Storage:
    """The one reading of ``--storage`` / ``--workers``: ``None`` is the store's ``optuna.db`` (SQLite) for one
    process and ``journal:<store>/optuna.journal`` for ``workers > 1``; ``journal:PATH`` (relative to the
    current folder), ``postgresql://...``, ``mysql://...``, ``sqlite:///PATH``. SQLite with ``workers > 1`` is
    refused (UserInputError): it takes one writer at a time and Optuna documents it for one process."""
    if workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {workers}")
    store = Path(store_dir).expanduser().resolve()
    if storage is None or not storage.strip():
        if workers == 1:
            return Storage(storage_url(store), "sqlite")
        storage = f"journal:{store / JOURNAL_FILE}"
    storage = storage.strip()
    if storage.startswith("journal:"):
        path = storage.removeprefix("journal:")
        if not path:
            raise UserInputError(f"--storage journal: needs a file path, e.g. journal:{store / JOURNAL_FILE}")
        return Storage(f"journal:{Path(path).expanduser().resolve()}", "journal")
    scheme = storage.split(":", 1)[0].split("+", 1)[0].lower() if "://" in storage else ""
    if scheme == "sqlite":
        if workers > 1:
            raise UserInputError(f"--workers {workers} cannot share SQLite storage {storage}: SQLite lets one "
                                 "process write at a time and Optuna supports it for one process only; use "
                                 f"--storage journal:{store / JOURNAL_FILE} (many processes on this machine, the "
                                 "default with --workers > 1) or postgresql://... (many machines)")
        return Storage(storage, "sqlite")
    if scheme in ("postgresql", "postgres", "mysql"):
        return Storage(storage.replace("postgres://", "postgresql://", 1), "rdb")
    raise UserInputError(f"unknown tuning storage {storage!r}; use one of: {STORAGE_FORMS}")


def check_trials(trials: int, where: Storage, study_name: str) -> None:
    """Refuse (UserInputError) a negative ``trials``, and ``0`` for a study that does not exist yet: a command adding
    no trial only records the best of a study other commands filled (:func:`record_best_once`); on a new one it
    would make an empty study with the defaults left waiting. Checked before anything is made (not even the
    SQLite or journal file)."""
    if trials < 0:
        raise UserInputError(f"--trials must be >= 0, got {trials}")
    if trials == 0 and not where.has_study(study_name):
        raise UserInputError(f"--trials 0 adds no trial and study {study_name!r} does not exist in {where.shown}: "
                             "nothing to record; give --trials 1 or more to start it (--trials 0 records the best "
                             "of an existing study)")


@dataclass(frozen=True)
class TuneSpec:
    """Everything a study is about; stored as study attributes and checked on resume."""

    kind: str
    frame: FrameSpec = field(default_factory=FrameSpec)
    fixed: dict = field(default_factory=dict)      # parameters held fixed (removed from the space)
    fold_version: str | None = None
    mode: str = "full"
    subsample: Subsample = DEFAULT_FAST            # used in fast mode only
    seed: int = 0

    def check(self) -> TuneSpec:
        if self.kind not in SEARCH_SPACES:
            tunable = ", ".join(sorted(SEARCH_SPACES))
            if self.kind in PARAMS_BY_KIND:
                raise UserInputError(f"head {self.kind!r} has nothing to tune (its ranking does not depend on its "
                                 f"parameters); tunable heads: {tunable}")
            raise UserInputError(f"unknown head kind {self.kind!r}; tunable heads: {tunable}")
        if self.mode not in MODES:
            raise UserInputError(f"unknown tuning mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "fast" and not self.subsample.active:
            raise UserInputError("fast mode needs a focal cap per class > 0 and/or a subset of folds")
        make_params(self.kind, self.fixed)  # unknown fixed parameter -> HeadError naming the known ones
        self.frame.check()
        return self

    def space(self) -> dict[str, Dim]:
        return {k: v for k, v in SEARCH_SPACES[self.kind].items() if k not in self.fixed}

    def attributes(self, fold_version: str) -> dict:
        return {"head": self.kind, "features": self.frame.features, "pooling": self.frame.pooling,
                "context": self.frame.context, "soundscape_weight": self.frame.soundscape_weight,
                "focal_weight": self.frame.focal_weight, "fixed": dict(sorted(self.fixed.items())),
                "fold_version": fold_version, "mode": self.mode, "seed": self.seed,
                "subsample": asdict(self.subsample) if self.mode == "fast" else None, "objective": METRIC_NAME}


@dataclass
class TuneResult:
    study: str
    trials: int
    completed: int
    pruned: int
    failed: int
    best_value: float | None = None
    best_params: dict | None = None
    best_trial: int | None = None
    best_head_id: str | None = None
    best_fold_mean: float | None = None
    best_fold_std: float | None = None
    recorded_as: str = "re-trained with full cross-validation as"   # how the best trial was kept
    waiting: int = 0        # queued (an interrupted or killed trial's parameters): they run first on resume

    def render(self) -> str:
        waiting = f", {self.waiting} queued to run first on resume" if self.waiting else ""
        lines = [f"study {self.study}: {self.trials} trials ({self.completed} complete, {self.pruned} pruned, "
                 f"{self.failed} failed{waiting})"]
        if self.best_value is not None:
            lines.append(f"best trial {self.best_trial}: {METRIC_NAME} {self.best_value:.4f} with {self.best_params}")
        if self.best_head_id:
            lines.append(f"{self.recorded_as} {self.best_head_id}: fold mean "
                         f"{self.best_fold_mean:.4f} +/- {self.best_fold_std:.4f} (tag 'tuned')")
        return "\n".join(lines)


def trial_reporter(say: Callable[[str], None], seconds_format: str = ".1f") -> Callable:
    """An Optuna callback printing one line per finished trial: value, per-fold AUCs (the trial's
    ``fold_<k>_auc`` attributes), seconds and the best so far."""
    import optuna

    def report(study, trial) -> None:
        folds_txt = " ".join(f"{k[5:-4]}:{v:.3f}" for k, v in sorted(trial.user_attrs.items())
                             if k.startswith("fold_") and k.endswith("_auc") and v is not None)
        value = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        best = ""
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        say(f"trial {trial.number}: {METRIC_NAME} {value} [{folds_txt}] "
            f"{trial.user_attrs.get('seconds', 0.0):{seconds_format}} s{best}")

    return report


def _check_resume(study, attrs: dict) -> None:
    old = study.user_attrs
    if not old:
        return
    differ = {k: (old.get(k), v) for k, v in attrs.items() if k in old and old.get(k) != v}
    if differ:
        what = "; ".join(f"{k}: study has {a!r}, now {b!r}" for k, (a, b) in sorted(differ.items()))
        raise StoreError(f"study {study.study_name!r} was made for another set-up ({what}); "
                         "pick a new --study name or repeat the original options")


# ---------------------------------------------------------------- which process runs a trial, and does it live
def _machine() -> str | None:
    """This process's pid space (boot id + pid namespace): pids of processes in the same one can be asked
    about. None where ``/proc`` cannot tell (then heartbeats alone judge)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """When live process ``pid`` started (clock ticks since boot); None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    return None if not fields or fields[0] in ("Z", "X") else fields[19]


_IDENTITY: dict = {}


def worker_identity() -> dict:
    """What a trial records about the process running it (attribute ``worker``)."""
    if _IDENTITY.get("pid") != os.getpid():
        pid = os.getpid()
        _IDENTITY.clear()
        _IDENTITY.update(host=socket.gethostname(), pid=pid, machine=_machine(), started=_start_ticks(pid))
    return dict(_IDENTITY)


def stale_reason(trial, now: float, machine: str | None, one_process: bool) -> str | None:
    """Why RUNNING ``trial``'s process is dead, or None while it may live (:func:`_dead`; before its first
    heartbeat a trial's start counts: its maker's local clock, so machines sharing a study keep their
    clocks in step, NTP)."""
    beat = trial.user_attrs.get(BEAT_ATTR)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return _dead(trial.user_attrs.get(WORKER_ATTR) or {}, beat, now, machine, one_process)


def _dead(who: dict, beat: float | None, now: float, machine: str | None, one_process: bool) -> str | None:
    """Why the process ``who`` (a :func:`worker_identity`) is dead, or None while it may live:

    * it ran in this process's pid space: dead when that pid is gone, a zombie, or another process
      (another start time); alive otherwise, whatever the storage;
    * else on one-process storage (SQLite): dead (no other process may use the study);
    * else when its last heartbeat (unix time) is over :data:`GRACE_S` old."""
    if machine is not None and who.get("machine") == machine:
        if who.get("started") is not None and _start_ticks(int(who["pid"])) == who["started"]:
            return None
        return "left running by a killed process"
    if one_process:
        return "left running by a killed process"
    beat = now if beat is None else beat
    if now - beat > GRACE_S:
        return f"left running by a killed process (no heartbeat for {now - beat:.0f} s)"
    return None


RETRY_ATTR, ATTEMPT_ATTR = "retry_of", "attempt"
KILLED_ATTEMPTS = 3   # a parameter set whose process died this many times is not queued again (it may kill it)


def requeue(study, trial, *, interrupted: bool) -> bool:
    """Queue ``trial``'s parameters again (a WAITING trial, attributes ``retry_of`` = its number and ``attempt``):
    a trial stopped before it measured anything (Ctrl-C, its process killed) says nothing about them, and
    WAITING trials run first, so a study interrupted in its defaults trial still starts from the defaults.
    Not queued: a trial without parameters, one already queued again, and (unless ``interrupted``: the
    user's act, not the trial's) a parameter set whose process died :data:`KILLED_ATTEMPTS` times.
    ``trial`` is a FrozenTrial; returns whether a copy was queued. (Several processes stopped at once queue their
    copies in the order they stop, so a resumed many-process study runs them side by side, not defaults first.)"""
    import optuna

    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1))
    if not trial.params or (not interrupted and attempt >= KILLED_ATTEMPTS):
        return False
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if any(t.user_attrs.get(RETRY_ATTR) == trial.number for t in waiting):
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number, ATTEMPT_ATTR: attempt + 1})
    return True


def fail_stale(study, one_process: bool = False) -> int:
    """Mark FAIL (attribute ``failed_because``) the RUNNING trials whose process is dead (:func:`stale_reason`)
    and queue their parameters again (:func:`requeue`): a live process's trial, on this machine or another, is
    left alone. Returns how many were failed."""
    import optuna

    S = optuna.trial.TrialState
    now, machine, failed = time.time(), _machine(), 0
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        why = stale_reason(t, now, machine, one_process)
        if why is None:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "failed_because", why)
            study._storage.set_trial_state_values(t._trial_id, state=S.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue    # it finished meanwhile
        failed += 1
        requeue(study, t, interrupted=False)
    return failed


INTERRUPTED = "interrupted (Ctrl-C)"


def fail_interrupted(study, trial) -> None:
    """The trial this process was running when Ctrl-C came: its parameters queued again first (so a second
    Ctrl-C in between leaves at worst a RUNNING trial for :func:`fail_stale` and a harmless repeat), then
    marked FAIL with ``failed_because`` = :data:`INTERRUPTED`; a trial already finished is left as it is."""
    import optuna

    S = optuna.trial.TrialState
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != S.RUNNING:
        return
    requeue(study, frozen, interrupted=True)
    try:
        study._storage.set_trial_user_attr(frozen._trial_id, "failed_because", INTERRUPTED)
        study._storage.set_trial_state_values(frozen._trial_id, state=S.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass    # another process took it for dead meanwhile


class _Beating:
    """While the block runs, ``write(time.time())`` now and every :data:`HEARTBEAT_S` on a thread (a write that
    fails ends the beating: the trial finished, or another process took it for dead)."""

    def __init__(self, write: Callable[[float], None]):
        self._write, self._stop = write, threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuning-heartbeat", daemon=True)

    def __enter__(self):
        self._write(time.time())
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write(time.time())
            except Exception:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Alive(_Beating):
    """While a trial runs: its ``worker`` attribute names this process and its ``heartbeat`` is refreshed, so
    other processes can tell it lives."""

    def __init__(self, trial):
        super().__init__(lambda t: trial.set_user_attr(BEAT_ATTR, t))
        self.trial = trial

    def __enter__(self) -> _Alive:
        self.trial.set_user_attr(WORKER_ATTR, worker_identity())
        return super().__enter__()


ACTIVE_PREFIX = "tuning_process:"


class Active(_Beating):
    """While a process works on a study (planned, running trials, recording): its entry in the study's system
    attribute ``tuning_process:<id>`` (:func:`worker_identity` + heartbeat), cleared at the end. The process
    finishing last sees no other live entry and records the best (:func:`record_best_once`)."""

    def __init__(self, study):
        self.key = f"{ACTIVE_PREFIX}{uuid.uuid4().hex[:12]}"
        who = worker_identity()
        super().__init__(lambda t: study._storage.set_study_system_attr(study._study_id, self.key,
                                                                         {**who, "heartbeat": t}))
        self.study = study

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        with contextlib.suppress(Exception):
            self.study._storage.set_study_system_attr(self.study._study_id, self.key, None)

    def others(self, one_process: bool) -> list[dict]:
        """The other live processes working on the study."""
        now, machine = time.time(), _machine()
        return [v for k, v in self.study._storage.get_study_system_attrs(self.study._study_id).items()
                if k.startswith(ACTIVE_PREFIX) and k != self.key and v
                and _dead(v, v.get("heartbeat"), now, machine, one_process) is None]


def trial_seeded_sampler(seed: int):
    """TPE whose random draws for trial n start from ``seed + n``. Trial numbers are unique across every
    process sharing a study, so cooperating processes (and a resumed study) never replay one random stream,
    which one seed per process would do (the same parameter sets, proposed in each process)."""
    import optuna

    def make(s: int):
        return optuna.samplers.TPESampler(seed=s, n_startup_trials=5)

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._inner = make(seed)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._inner = make(seed + trial.number)
            self._inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._inner.after_trial(study, trial, state, values)

    return TrialSeededTPE()


# ---------------------------------------------------------------- many processes on one study
class Slots:
    """The trials a command has left, shared by its processes: each takes one before every trial, so the
    command runs exactly ``n`` trials however they fall to its processes (``shared`` for spawned workers).
    Helpers say when they are :meth:`ready` (planned, study open), so all start their trials together."""

    def __init__(self, n: int, shared: bool = False):
        self._n = n
        ctx = mp.get_context("spawn")
        self._value = ctx.Value("i", n) if shared else None
        self._ready = ctx.Value("i", 0) if shared else None

    def take(self) -> bool:
        if self._value is None:
            self._n -= 1
            return self._n >= 0
        with self._value.get_lock():
            if self._value.value <= 0:
                return False
            self._value.value -= 1
            return True

    def ready(self) -> None:
        with self._ready.get_lock():
            self._ready.value += 1

    def wait_ready(self, helpers: list, say: Callable[[str], None]) -> None:
        """Wait until every helper is ready or has ended (a helper that failed is reported at the join)."""
        if not helpers:
            return
        t0 = last = time.monotonic()
        while self._ready.value < len(helpers) and all(proc.exitcode is None for _, proc, _ in helpers):
            if time.monotonic() - last > 30:
                say(f"waiting for {len(helpers) - self._ready.value} worker process(es) to plan "
                    f"({time.monotonic() - t0:.0f} s) ...")
                last = time.monotonic()
            time.sleep(0.1)


STALE_TEXT = (f"trial(s) left running by a killed process as failed; their parameters are queued to run first (at "
              f"most {KILLED_ATTEMPTS} attempts each)")


def run_trials(study, objective: Callable, slots: Slots, storage: Storage, callbacks: list,
               say: Callable[[str], None]) -> None:
    """Run trials while ``slots`` gives one (Optuna's ask and tell; queued trials first): dead processes' trials
    failed before each, the objective under a heartbeat (:class:`_Alive`), ``callbacks(study, frozen_trial)``
    after each. A trial another process failed meanwhile (it took this one for dead) is dropped, not fatal.
    An error in the objective marks the trial FAIL (``failed_because``) and is raised as it is (no Optuna
    traceback on the way). Ctrl-C (KeyboardInterrupt) marks the running trial FAIL and queues its parameters
    again (:func:`fail_interrupted`), then propagates: a resumed study runs it first."""
    while slots.take():
        stale = fail_stale(study, storage.one_process)
        if stale:
            say(f"marked {stale} {STALE_TEXT}")
        trial = study.ask()
        try:
            frozen = _run_one(study, trial, objective, say)
        except KeyboardInterrupt:
            fail_interrupted(study, trial)
            raise
        if frozen is not None:
            for callback in callbacks:
                callback(study, frozen)


def _run_one(study, trial, objective: Callable, say: Callable[[str], None]):
    """One asked trial: the objective, then its tell. Returns the finished FrozenTrial, or None when another
    process finished it meanwhile."""
    import optuna

    S, finished = optuna.trial.TrialState, optuna.exceptions.UpdateFinishedTrialError
    state, value = S.COMPLETE, None
    try:
        with _Alive(trial):
            value = objective(trial)
    except optuna.TrialPruned:
        state = S.PRUNED
    except finished:
        say(f"trial {trial.number} was marked failed by another process (taken for dead); dropped")
        return None
    except Exception as exc:
        with contextlib.suppress(Exception):     # the objective's error is the one to raise, not a storage one
            trial.set_user_attr("failed_because", f"{type(exc).__name__}: {exc}"[:500])
            study.tell(trial, state=S.FAIL, skip_if_finished=True)
        raise
    try:
        frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    except finished:
        frozen = None
    if frozen is None or frozen.state != state:
        say(f"trial {trial.number} was marked failed by another process (taken for dead); dropped")
        return None
    return frozen


def start_helpers(n: int, target: Callable, args: tuple) -> list:
    """Start ``n`` helper processes (spawned: no inherited locks or threads) running ``target(index, *args)``,
    index 2.. (the calling process is worker 1). Give the result to :func:`join_helpers`."""
    ctx = mp.get_context("spawn")
    helpers = []
    for index in range(2, n + 2):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_helper_main, args=(target, index, args, send), name=f"tune-worker-{index}",
                           daemon=True)
        proc.start()
        send.close()
        helpers.append((index, proc, recv))
    return helpers


def _interrupt_once(signum, frame) -> None:
    """A helper's SIGINT handler: the first raises KeyboardInterrupt (its trial is put back), later ones (the
    terminal's Ctrl-C reaches the whole process group, and the parent passes it on too) are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _helper_main(target: Callable, index: int, args: tuple, conn) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        target(index, *args)
    except BaseException as exc:    # the parent re-raises it
        try:
            conn.send(exc)
        except Exception:
            conn.send(StoreError(f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    conn.send(None)


HELPER_STOP_S = 2.0   # stopped helpers get this long to put their running trial back before they are terminated


def join_helpers(helpers: list, *, stop: bool = False) -> None:
    """Wait for the helpers; re-raise the first one's error. ``stop`` (the parent failed or was interrupted):
    interrupt them (SIGINT: each puts its running trial back, :func:`fail_interrupted`), wait up to
    :data:`HELPER_STOP_S`, then terminate the rest (a trial left running is failed and queued again by the
    next command, :func:`fail_stale`)."""
    errors = []
    if stop:
        for _, proc, _ in helpers:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + HELPER_STOP_S
        for _, proc, _ in helpers:
            proc.join(max(0.0, deadline - time.monotonic()))
    for index, proc, conn in helpers:
        if stop and proc.exitcode is None:
            proc.terminate()
        proc.join()
        try:
            exc = conn.recv() if conn.poll() else None
        except EOFError:    # it died before saying anything
            exc = None
        if exc is None and proc.exitcode and not stop:
            exc = StoreError(f"exit status {proc.exitcode}")
        if exc is not None and not stop:
            errors.append((index, exc))
    if errors:
        index, exc = errors[0]
        if isinstance(exc, StackError):
            raise exc
        raise StoreError(f"tuning worker {index} failed: {type(exc).__name__}: {exc}") from exc


def helper_say(index: int) -> Callable[[str], None]:
    return lambda text: print(f"[worker {index}] {text}", flush=True)


@contextlib.contextmanager
def _record_lock(store_dir: str | Path, say: Callable[[str], None]):
    path = Path(store_dir).expanduser().resolve() / RECORD_LOCK
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another process that is recording a study's best ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tuned_row(store_dir: str | Path, head_id: str | None) -> bool:
    if not head_id:
        return False
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        return store.has_table("experiments") and store.first(
            "SELECT count(*) FROM experiments WHERE head_id = ? AND tag = 'tuned'", [head_id])[0] > 0


def record_best_once(store_dir: str | Path, study, storage: Storage, out: TuneResult,
                     record: Callable, say: Callable[[str], None], active: Active) -> None:
    """Record the study's best trial once for every process sharing the study: under the store's
    :data:`RECORD_LOCK`, after failing dead processes' trials, only when no other live process works on the
    study (``active``: :class:`Active`) and no trial still runs (so the process finishing last records, and
    sees every result), and unless that trial is already recorded in this store (study attribute
    ``best_recorded``). ``record(best_trial)`` re-trains it and returns
    ``(head_id, fold_mean, fold_std)``. Fills ``out``'s best fields (left empty when others still run)."""
    import optuna

    with _record_lock(store_dir, say):
        fail_stale(study, storage.one_process)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        others = active.others(storage.one_process)
        if running or others:
            hosts = sorted({f"{o.get('host')}:{o.get('pid')}" for o in others})
            say(f"{len(others)} other process(es) ({', '.join(hosts) or 'unknown'}) and {len(running)} trial(s) still "
                "work on this study: the last process to finish records the best (or re-run with --trials 0 later)")
            return
        best = study.best_trial
        out.best_value, out.best_params, out.best_trial = best.value, best.params, best.number
        done = study.user_attrs.get("best_recorded") or {}
        if done.get("trial") == best.number and _tuned_row(store_dir, done.get("head_id")):
            out.recorded_as = "already recorded as"
        else:
            head_id, fold_mean, fold_std = record(best)
            done = {"trial": best.number, "head_id": head_id, "fold_mean": fold_mean, "fold_std": fold_std}
            study.set_user_attr("best_recorded", done)
            study.set_user_attr("best_head_id", head_id)
        out.best_head_id, out.best_fold_mean, out.best_fold_std = done["head_id"], done["fold_mean"], done["fold_std"]


def summarize(study, study_name: str, recorded_as: str | None = None) -> TuneResult:
    """Trial counts and the best trial of ``study`` as it stands."""
    import optuna

    S = optuna.trial.TrialState
    states = [t.state for t in study.get_trials(deepcopy=False)]
    out = TuneResult(study_name, len(states), states.count(S.COMPLETE), states.count(S.PRUNED), states.count(S.FAIL),
                     waiting=states.count(S.WAITING))
    if recorded_as:
        out.recorded_as = recorded_as
    if out.completed:
        best = study.best_trial
        out.best_value, out.best_params, out.best_trial = best.value, best.params, best.number
    return out


# ---------------------------------------------------------------- the head tuner
def _pruner():
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def _plan(store_dir: str | Path, spec: TuneSpec):
    """The CV plan of a study's trials (a read-only open: cooperating processes plan side by side)."""
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        plan = plan_cv(store, spec.frame, fold_version=spec.fold_version,
                       subsample=spec.subsample if spec.mode == "fast" else None, seed=spec.seed)
    if plan.scored_on == "none":
        raise StoreError("no labelled window is scorable in any fold (no class with both a positive and a "
                         "negative); tuning would optimise nothing")
    return plan


def _head_objective(spec: TuneSpec, plan, study, progress: Callable | None = None) -> Callable:
    """The objective (module docstring). ``progress(total, desc)`` (optional) makes a trial's bar of its folds:
    advanced after each fold and closed when the trial is done or pruned (not on an error or Ctrl-C, so a
    log gets no "done" line for them)."""
    import optuna

    frame, folds, eval_mask, space = plan.frame, plan.folds, plan.eval_mask, spec.space()
    n_folds = len(folds_to_run(folds, plan.run_folds or None))

    def objective(trial) -> float:
        params = {**spec.fixed, **{name: dim.suggest(trial, name) for name, dim in space.items()}}
        chosen = head_params(spec.kind, params, spec.seed)
        trial.set_user_attr("head_id", plan.config(spec.kind, chosen, spec.frame, seed=spec.seed).head_id)
        trial.set_user_attr("n_train_windows", plan.n_train_windows)
        trial.set_user_attr("n_eval_windows", int(eval_mask.sum()))
        repeated = replay_repeat(study, trial)
        if repeated is not None:
            return repeated
        per_fold: dict[int, float] = {}
        t0 = time.perf_counter()
        bar = progress(n_folds, f"trial {trial.number}") if progress is not None else None

        def on_fold(f: int, oof: np.ndarray) -> None:
            value = fold_score(frame, oof, folds, eval_mask, f)
            per_fold[f] = value
            trial.set_user_attr(f"fold_{f}_auc", None if math.isnan(value) else value)
            if bar is not None:
                bar.update(1)
            if not math.isnan(value):
                trial.report(value, step=f)
                if trial.should_prune():
                    trial.set_user_attr("seconds", time.perf_counter() - t0)
                    if bar is not None:
                        bar.close()
                    raise optuna.TrialPruned(f"fold {f} AUC {value:.4f} below the median of earlier trials")

        plan.run(spec.kind, chosen, None, on_fold)
        if bar is not None:
            bar.close()
        values = np.array([v for v in per_fold.values() if not math.isnan(v)])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("fold_std", float(values.std()) if values.size else None)
        trial.set_user_attr("n_folds_scored", int(values.size))
        if not values.size:
            raise StoreError("no held-out fold was scorable")
        return float(values.mean())

    return objective


def _head_study(store_dir: str | Path, spec: TuneSpec, study_name: str, storage: Storage,
                say: Callable[[str], None]):
    """Plan, then open the study; the process that makes it enqueues the defaults first (a study can only match
    or beat them). Returns ``(plan, study, n_before)``."""
    plan = _plan(store_dir, spec)
    attrs = json.loads(json.dumps(spec.attributes(plan.fold_version)))  # as stored: tuples become lists
    study, n_before, created = open_study(store_dir, study_name, attrs, spec.seed, say, storage=storage,
                                          pruner=_pruner())
    study.set_user_attr("scored_on", plan.scored_on)
    if created:
        space = spec.space()
        defaults = asdict(make_params(spec.kind, spec.fixed))
        start = {k: defaults[k] for k, dim in space.items() if dim.contains(defaults[k])}
        if start:
            study.enqueue_trial(start)
    return plan, study, n_before


def _head_worker(index: int, store_dir: str | Path, spec: TuneSpec, study_name: str, storage: Storage,
                 slots: Slots) -> None:
    """A helper process of :func:`run_tune` (``--workers``): its own plan, the shared study and trial count."""
    say = helper_say(index)
    plan, study, _ = _head_study(store_dir, spec, study_name, storage, say)
    with Active(study):
        slots.ready()
        run_trials(study, _head_objective(spec, plan, study), slots, storage, [trial_reporter(say)], say)


def run_tune(store_dir: str | Path, spec: TuneSpec, trials: int, study_name: str, *, storage: str | None = None,
             workers: int = 1, record_best: bool = True, say: Callable[[str], None] = print,
             progress: Callable | None = None) -> TuneResult:
    """Add ``trials`` trials to the study (made or resumed) on ``storage`` (:func:`resolve_storage`; default the
    store's ``optuna.db``), run by ``workers`` processes on this machine that share the count (``trials`` in
    all), then re-train the best with full CV as a ``tuned`` experiment, once for every process and machine
    working on the study (:func:`record_best_once`).

    ``trials`` 0 records the best of an existing study and is refused for a new one (:func:`check_trials`).
    ``progress(total, desc)`` (optional; this process's trials and the re-training) returns a bar of folds
    with ``update(n)`` and ``close()``, e.g. ``pipelines._cli.progress``. Ctrl-C (KeyboardInterrupt) propagates
    after the running trials are marked FAIL and their parameters queued to run first (:func:`run_trials`);
    finished trials stay in the study."""
    spec.check()
    where = resolve_storage(store_dir, storage, workers)
    check_trials(trials, where, study_name)
    slots = Slots(trials, shared=workers > 1)
    # the helpers plan while this process does: all start their trials at about the same time
    helpers = start_helpers(workers - 1, _head_worker, (store_dir, spec, study_name, where, slots))
    try:
        plan, study, n_before = _head_study(store_dir, spec, study_name, where, say)
    except BaseException:
        join_helpers(helpers, stop=True)
        raise
    with Active(study) as me:
        try:
            fast = spec.mode == "fast"
            say(f"study {study_name}: {spec.kind} on {spec.frame.features}, mode {spec.mode}"
                f"{' ' + spec.subsample.name() if fast else ''}, fold version {plan.fold_version}, scored on "
                f"{plan.scored_on} ({int(plan.eval_mask.sum())} windows), {n_before} earlier trial(s), storage "
                f"{where.shown}{f', {workers} processes' if workers > 1 else ''}")
            slots.wait_ready(helpers, say)
            run_trials(study, _head_objective(spec, plan, study, progress), slots, where, [trial_reporter(say)], say)
        except BaseException:
            join_helpers(helpers, stop=True)
            raise
        join_helpers(helpers)
        out = summarize(study, study_name)
        if out.completed and record_best:
            def retrain(best) -> tuple[str, float, float]:
                say(f"re-training the best parameters (trial {best.number}) with full cross-validation ...")
                bar = progress(len(folds_to_run(plan.folds)), "re-training") if progress is not None else None
                result = train_head(store_dir, spec.kind, spec.frame, overrides={**spec.fixed, **best.params},
                                    fold_version=plan.fold_version, seed=spec.seed, tag="tuned",
                                    progress=None if bar is None else (lambda _fold: bar.update(1)))
                if bar is not None:
                    bar.close()
                return result.head_id, result.fold_mean, result.fold_std

            record_best_once(store_dir, study, where, out, retrain, say, me)
    return out


def open_study(store_dir: str | Path, study_name: str, attrs: dict, seed: int, say: Callable[[str], None], *,
               storage: Storage | None = None, pruner=None):
    """The study ``study_name`` on ``storage`` (default: the store's ``optuna.db``), made or resumed: a resumed
    study must have been made for the same set-up (``attrs``, else StoreError); trials of dead processes
    are marked failed (:func:`fail_stale`); trial n samples from ``seed + n`` (:func:`trial_seeded_sampler`).
    Returns ``(study, n_before, created)``: ``created`` is True in the one process that made the study (the
    storage decides, atomically), which alone enqueues the defaults."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    where = storage or resolve_storage(store_dir)
    backend = where.open()
    sampler = trial_seeded_sampler(seed)
    try:
        study = optuna.create_study(study_name=study_name, storage=backend, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=backend, sampler=sampler, pruner=pruner)
        created = False
        _check_resume(study, attrs)
    n_before = len(study.get_trials(deepcopy=False))
    stale = fail_stale(study, where.one_process)
    if stale:
        say(f"marked {stale} {STALE_TEXT}")
    study.set_metric_names([METRIC_NAME])
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return study, n_before, created


def replay_repeat(study, trial) -> float | None:
    """When an earlier COMPLETE trial had exactly these parameters: copy its per-fold scores and
    seconds onto ``trial``, mark it ``repeat_of`` and return its value (a repeat costs nothing). An earlier
    trial with these parameters still running in a live process (another worker's) is waited for first."""
    while True:
        # "running?" is asked BEFORE "finished?": a trial that completes between the two questions is then seen
        # finished (asked the other way round it was seen neither, and its result was trained again)
        running = _running_repeat(study, trial)
        repeat = _finished_repeat(study, trial)
        if repeat is not None or not running:
            break
        time.sleep(REPEAT_POLL_S)
    if repeat is None:
        return None
    trial.set_user_attr("repeat_of", repeat.number)
    for k, v in repeat.user_attrs.items():
        if k.startswith("fold_") or k == "seconds":
            trial.set_user_attr(k, v)
    return repeat.value


def _finished_repeat(study, trial):
    """An earlier COMPLETE trial with exactly these parameters (a repeat costs nothing)."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None


def _running_repeat(study, trial) -> bool:
    """True while an earlier trial with exactly these parameters runs in a live process."""
    import optuna

    now, machine = time.time(), _machine()
    return any(t.number < trial.number and t.params == trial.params and stale_reason(t, now, machine, False) is None
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
