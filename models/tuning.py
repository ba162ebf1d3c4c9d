"""Optuna search over a head's parameters that measures what the leaderboard measures.

* **Objective** = the fold mean of the competition metric on the full labelled evaluation rows
  (each held-out fold scored by the one model that did not see it) - the experiments table's
  headline, computed by the same code: the set-up of :func:`models.training.plan_cv` and the one
  cross-validation loop :func:`models.training.cross_validate`, scored by ``fold_score``.
  A trial in ``full`` mode with the default parameters scores exactly the fold mean that
  ``pipelines.train`` records.
* **Intermediate values** are the per-fold AUCs, reported at step = fold id, so the median pruner
  compares a trial's fold 2 with other trials' fold 2.
* **Fast mode** (named, fixed) keeps full evaluation but trains on at most ``focal_per_class``
  focal windows per class and/or only the ``folds`` listed; it never trains on the evaluation
  subset alone.
* **Resumable**: the study lives in ``<store>/optuna.db``; the sampler's seed is offset by the
  number of trials already in the study (a resumed study draws new parameter sets), an exact
  repeat of a finished parameter set is answered from the earlier trial without training, and
  trials left RUNNING by a killed process are marked FAIL. Re-using a study name with another
  head, features, fold version or mode is refused.
* **Recorded**: the objective is named ``fold_mean_auc``; the study carries head, features,
  pooling, context, weights, fixed parameters, fold version, mode and seed; every trial carries
  per-fold AUCs, fold std, window counts, seconds and the head id a full run would get. The best
  parameters are re-trained with full cross-validation and recorded as a ``tuned`` experiment.

Search spaces are data (:data:`SEARCH_SPACES`); ``fixed`` parameters leave the space.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featurestore.errors import StoreError, UserInputError
from featurestore.store import FeatureStore
from models.frame import FrameSpec
from models.heads import PARAMS_BY_KIND, make_params
from models.training import Subsample, fold_score, head_params, plan_cv, train_head

STUDY_FILE = "optuna.db"
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
    return f"sqlite:///{Path(store_dir).expanduser().resolve() / STUDY_FILE}"


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

    def render(self) -> str:
        lines = [f"study {self.study}: {self.trials} trials ({self.completed} complete, {self.pruned} pruned, "
                 f"{self.failed} failed)"]
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


def _fail_stale(study) -> int:
    """Trials left RUNNING by a killed process would count forever: mark them FAIL."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "failed_because", "left running by a killed process")
        study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def run_tune(store_dir: str | Path, spec: TuneSpec, trials: int, study_name: str, *, record_best: bool = True,
             say: Callable[[str], None] = print) -> TuneResult:
    """Add ``trials`` trials to the study (made or resumed) and re-train the best with full CV."""
    import optuna

    spec.check()
    if trials < 0:
        raise UserInputError("--trials must be >= 0")
    fast = spec.mode == "fast"
    with FeatureStore.open(store_dir, create=False) as store:
        plan = plan_cv(store, spec.frame, fold_version=spec.fold_version,
                       subsample=spec.subsample if fast else None, seed=spec.seed)
    frame, folds, fold_version = plan.frame, plan.folds, plan.fold_version
    eval_mask, scored_on = plan.eval_mask, plan.scored_on
    if scored_on == "none":
        raise StoreError("no labelled window is scorable in any fold (no class with both a positive and a "
                         "negative); tuning would optimise nothing")
    attrs = json.loads(json.dumps(spec.attributes(fold_version)))  # as stored: tuples become lists

    study, n_before = open_study(store_dir, study_name, attrs, spec.seed, say,
                                 pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    study.set_user_attr("scored_on", scored_on)
    space = spec.space()
    if n_before == 0:  # the defaults first: a study can only match or beat them
        defaults = asdict(make_params(spec.kind, spec.fixed))
        start = {k: defaults[k] for k, dim in space.items() if dim.contains(defaults[k])}
        if start:
            study.enqueue_trial(start)

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

        def on_fold(f: int, oof: np.ndarray) -> None:
            value = fold_score(frame, oof, folds, eval_mask, f)
            per_fold[f] = value
            trial.set_user_attr(f"fold_{f}_auc", None if math.isnan(value) else value)
            if not math.isnan(value):
                trial.report(value, step=f)
                if trial.should_prune():
                    trial.set_user_attr("seconds", time.perf_counter() - t0)
                    raise optuna.TrialPruned(f"fold {f} AUC {value:.4f} below the median of earlier trials")

        plan.run(spec.kind, chosen, None, on_fold)
        values = np.array([v for v in per_fold.values() if not math.isnan(v)])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("fold_std", float(values.std()) if values.size else None)
        trial.set_user_attr("n_folds_scored", int(values.size))
        if not values.size:
            raise StoreError("no held-out fold was scorable")
        return float(values.mean())

    report = trial_reporter(say)
    say(f"study {study_name}: {spec.kind} on {spec.frame.features}, mode {spec.mode}"
        f"{' ' + spec.subsample.name() if fast else ''}, fold version {fold_version}, scored on {scored_on} "
        f"({int(eval_mask.sum())} windows), {n_before} earlier trial(s)")
    study.optimize(objective, n_trials=trials, callbacks=[report], catch=())
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    out = TuneResult(study_name, len(states), states.count(S.COMPLETE), states.count(S.PRUNED), states.count(S.FAIL))
    if out.completed:
        out.best_value, out.best_params, out.best_trial = study.best_value, study.best_params, study.best_trial.number
        if record_best:
            say(f"re-training the best parameters (trial {out.best_trial}) with full cross-validation ...")
            result = train_head(store_dir, spec.kind, spec.frame, overrides={**spec.fixed, **study.best_params},
                                fold_version=fold_version, seed=spec.seed, tag="tuned")
            out.best_head_id, out.best_fold_mean, out.best_fold_std = result.head_id, result.fold_mean, result.fold_std
            study.set_user_attr("best_head_id", result.head_id)
    return out


def open_study(store_dir: str | Path, study_name: str, attrs: dict, seed: int, say: Callable[[str], None], *,
               pruner=None):
    """The study ``study_name`` in the store's Optuna storage, made or resumed: a resumed study must have
    been made for the same set-up (``attrs``, else UserInputError), trials a killed process left running
    are marked failed, the sampler is reseeded past the earlier trials. Returns ``(study, n_before)``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = storage_url(store_dir)
    study = optuna.load_study(study_name=study_name, storage=storage) if _exists(storage, study_name) else None
    n_before = len(study.trials) if study is not None else 0
    if study is not None:
        _check_resume(study, attrs)
    sampler = optuna.samplers.TPESampler(seed=seed + n_before, n_startup_trials=5)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=pruner)
    stale = _fail_stale(study)
    if stale:
        say(f"marked {stale} trial(s) left running by a killed process as failed")
    study.set_metric_names([METRIC_NAME])
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return study, n_before


def replay_repeat(study, trial) -> float | None:
    """When an earlier COMPLETE trial had exactly these parameters: copy its per-fold scores and
    seconds onto ``trial``, mark it ``repeat_of`` and return its value (a repeat costs nothing)."""
    repeat = _finished_repeat(study, trial)
    if repeat is None:
        return None
    trial.set_user_attr("repeat_of", repeat.number)
    for k, v in repeat.user_attrs.items():
        if k.startswith("fold_") or k == "seconds":
            trial.set_user_attr(k, v)
    return repeat.value


def _exists(storage: str, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage=storage))


def _finished_repeat(study, trial):
    """An earlier COMPLETE trial with exactly these parameters (a repeat costs nothing)."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None
