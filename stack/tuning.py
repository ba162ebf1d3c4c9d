"""Optuna search over a stacker's parameters and its post-processing steps' parameters.

Same rules as the head tuner (:mod:`models.tuning`), whose helpers it uses:

* **Objective** = the fold mean of :func:`stack.stackers.cross_validate_stack` (``fold_mean_auc``),
  exactly what :func:`stack.run.run_stack` records; the inputs are loaded once per call.
* **Intermediate values**: each fold's AUC at step = fold id (level-2 CV scores every fold after the
  post steps, so they are reported when the trial's CV is done; no pruning: a trial takes seconds).
* **Defaults first**: a new study's first trial is the stacker's defaults and each post op's
  defaults, so a study can only match or beat them. **Resumable** in ``<store>/optuna.db`` (or
  ``storage``): trial n samples from ``seed + n``, an exact repeat is answered from the earlier
  trial, trials left RUNNING by a killed process are marked FAIL, and re-using a study name for
  other heads, method, post ops, fixed parameters or fold version is refused.
* **Many processes, many machines**: ``storage`` and ``workers`` as for the head tuner
  (:func:`models.tuning.resolve_storage`): ``trials`` in all, shared by the workers; cooperating
  processes never train a parameter set twice; the best is recorded once.
* **Recorded**: the best trial is re-run with :func:`~stack.run.run_stack` (tag ``tuned``): a
  stacked head, its OOF table and experiments row.

Search spaces are data: :data:`STACKER_SPACES` (a blend adds one weight ``w<i>`` per source) and
:data:`POST_SPACES` (trial parameter ``post<i>.<name>`` for step ``i``; ``smooth``'s ``centre`` is
the middle weight of a 3-tap kernel ``[(1-c)/2, c, (1-c)/2]``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from featurestore.errors import StoreError, UserInputError
from models.tuning import (
    METRIC_NAME,
    Active,
    Dim,
    Slots,
    Storage,
    TuneResult,
    check_trials,
    helper_say,
    join_helpers,
    open_study,
    record_best_once,
    replay_repeat,
    resolve_storage,
    run_trials,
    start_helpers,
    summarize,
    trial_reporter,
)
from stack.inputs import load_inputs
from stack.post import POST_OPS, parse_post
from stack.stackers import BLEND_METHODS, SHARING, cross_validate_stack, make_stack_params

STACKER_SPACES: dict[str, dict[str, Dim]] = {
    "ridge": {
        "alpha": Dim("float", 1e-3, 100.0, log=True),
        "alpha_shared": Dim("float", 1e-4, 1.0, log=True),
        "min_positives": Dim("int", 2, 20, log=True),
        "sharing": Dim("cat", choices=SHARING),
        "neighbours": Dim("cat", choices=(True, False)),
        "site_prior": Dim("cat", choices=(False, True)),
        "hour_prior": Dim("cat", choices=(False, True)),
    },
    "blend": {"method": Dim("cat", choices=BLEND_METHODS)},
}
BLEND_WEIGHT = Dim("float", 0.0, 1.0)
POST_SPACES: dict[str, dict[str, Dim]] = {
    "smooth": {"centre": Dim("float", 0.2, 1.0), "space": Dim("cat", choices=("prob", "logit"))},
    "filescale": {"a": Dim("float", 0.0, 1.0), "top_k": Dim("int", 1, 6), "form": Dim("cat", choices=("prob", "logit"))},
    "power": {"gamma": Dim("float", 0.25, 4.0, log=True)},
    "temperature": {"temperature": Dim("float", 0.25, 4.0, log=True)},
}
POST_DEFAULTS = {"smooth": {"centre": 0.5, "space": "prob"}, "filescale": {"a": 0.5, "top_k": 2, "form": "prob"},
                 "power": {"gamma": 1.0}, "temperature": {"temperature": 1.0}}


@dataclass(frozen=True)
class StackTuneSpec:
    """What a stack study is about; stored as study attributes and checked on resume."""

    heads: tuple[str, ...]
    method: str
    post_ops: tuple[str, ...] = ()        # ops whose parameters are searched, in chain order
    fixed: dict | None = None             # stacker parameters held fixed (leave the space)
    zero_shot: tuple[str, ...] = ()
    seed: int = 0

    def check(self) -> StackTuneSpec:
        if self.method not in STACKER_SPACES:
            raise UserInputError(f"unknown stacker {self.method!r}; choose from {sorted(STACKER_SPACES)}")
        unknown = [op for op in self.post_ops if op not in POST_SPACES]
        if unknown:
            raise UserInputError(f"unknown post-processing op(s) {unknown}; choose from {', '.join(POST_OPS)}")
        make_stack_params(self.method, self.fixed)     # unknown fixed key -> UserInputError naming the known ones
        return self

    def space(self) -> dict[str, Dim]:
        fixed = self.fixed or {}
        out = {k: v for k, v in STACKER_SPACES[self.method].items() if k not in fixed}
        if self.method == "blend" and "weights" not in fixed:
            out.update({f"w{i}": BLEND_WEIGHT for i in range(len(self.heads) + len(self.zero_shot))})
        for i, op in enumerate(self.post_ops):
            out.update({f"post{i}.{k}": v for k, v in POST_SPACES[op].items()})
        return out

    def defaults(self) -> dict:
        base = asdict(make_stack_params(self.method, self.fixed))
        start = {k: base[k] for k in STACKER_SPACES[self.method] if k not in (self.fixed or {})}
        if self.method == "blend" and "weights" not in (self.fixed or {}):
            start.update({f"w{i}": 1.0 for i in range(len(self.heads) + len(self.zero_shot))})
        for i, op in enumerate(self.post_ops):
            start.update({f"post{i}.{k}": v for k, v in POST_DEFAULTS[op].items()})
        return start

    def decode(self, values: dict) -> tuple[dict, list]:
        """Trial values -> (stacker overrides, post chain)."""
        params = dict(self.fixed or {})
        params.update({k: v for k, v in values.items() if k in STACKER_SPACES[self.method]})
        weights = [values[k] for k in sorted((k for k in values if k.startswith("w") and k[1:].isdigit()),
                                             key=lambda k: int(k[1:]))]
        if weights:
            params["weights"] = weights if sum(weights) > 0 else [1.0] * len(weights)
        chain = []
        for i, op in enumerate(self.post_ops):
            raw = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"post{i}.")}
            if op == "smooth" and "centre" in raw:
                c = float(raw.pop("centre"))
                raw["kernel"] = [(1.0 - c) / 2.0, c, (1.0 - c) / 2.0]
            chain.append((op, raw))
        return params, chain

    def attributes(self, fold_version: str) -> dict:
        return {"kind": "stack", "heads": list(self.heads), "zero_shot": list(self.zero_shot), "method": self.method,
                "post_ops": list(self.post_ops), "fixed": dict(sorted((self.fixed or {}).items())),
                "fold_version": fold_version, "seed": self.seed, "objective": METRIC_NAME}


def _stack_objective(spec: StackTuneSpec, data, study) -> Callable:
    space = spec.space()

    def objective(trial) -> float:
        values = {name: dim.suggest(trial, name) for name, dim in space.items()}
        params, chain = spec.decode(values)
        trial.set_user_attr("stacker_params", json.loads(json.dumps(params)))
        trial.set_user_attr("post", [s.to_json() for s in parse_post(chain)])
        repeated = replay_repeat(study, trial)
        if repeated is not None:
            return repeated
        t0 = time.perf_counter()
        cv = cross_validate_stack(data, spec.method, params, chain)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        for k, v in sorted(cv.score.fold_scores.items()):
            trial.set_user_attr(f"fold_{k}_auc", None if math.isnan(v) else float(v))
            if not math.isnan(v):
                trial.report(float(v), step=int(k))
        trial.set_user_attr("fold_std", None if math.isnan(cv.score.fold_std) else float(cv.score.fold_std))
        if math.isnan(cv.fold_mean):
            raise StoreError("no held-out fold was scorable")
        return float(cv.fold_mean)

    return objective


def _inputs(store_dir: str | Path, spec: StackTuneSpec, zero_shot_pooling: str):
    from stack.run import base_configs, base_fold_version

    fold_version = base_fold_version(base_configs(store_dir, spec.heads))
    focal = bool((spec.fixed or {}).get("use_focal", False))
    data = load_inputs(store_dir, list(spec.heads), zero_shot=spec.zero_shot, zero_shot_pooling=zero_shot_pooling,
                       focal=focal)
    return fold_version, data


def _stack_study(store_dir: str | Path, spec: StackTuneSpec, study_name: str, storage: Storage,
                 zero_shot_pooling: str, say: Callable[[str], None]):
    """Load the inputs, then open the study; the process that makes it enqueues the defaults first.
    Returns ``(fold_version, data, study, n_before)``."""
    fold_version, data = _inputs(store_dir, spec, zero_shot_pooling)
    attrs = json.loads(json.dumps(spec.attributes(fold_version)))
    study, n_before, created = open_study(store_dir, study_name, attrs, spec.seed, say, storage=storage)
    space = spec.space()
    if created and space:
        start = {k: v for k, v in spec.defaults().items() if k in space and space[k].contains(v)}
        if start:
            study.enqueue_trial(start)
    return fold_version, data, study, n_before


def _stack_worker(index: int, store_dir: str | Path, spec: StackTuneSpec, study_name: str, storage: Storage,
                  zero_shot_pooling: str, slots: Slots) -> None:
    """A helper process of :func:`tune_stack` (``workers``): its own inputs, the shared study and trial count."""
    say = helper_say(index)
    _, data, study, _ = _stack_study(store_dir, spec, study_name, storage, zero_shot_pooling, say)
    with Active(study):
        slots.ready()
        run_trials(study, _stack_objective(spec, data, study), slots, storage, [trial_reporter(say, ".2f")], say)


def tune_stack(store_dir: str | Path, spec: StackTuneSpec, trials: int, study_name: str, *,
               zero_shot_pooling: str = "mean", storage: str | None = None, workers: int = 1,
               record_best: bool = True, say: Callable[[str], None] = print) -> TuneResult:
    """Add ``trials`` trials to the study (made or resumed) on ``storage``, run by ``workers`` processes sharing
    the count, then record the best as a stacked head (once for every process working on the study)."""
    from stack.run import run_stack

    spec.check()
    where = resolve_storage(store_dir, storage, workers)
    check_trials(trials, where, study_name)    # 0: only on an existing study (records its best)
    slots = Slots(trials, shared=workers > 1)
    helpers = start_helpers(workers - 1, _stack_worker, (store_dir, spec, study_name, where, zero_shot_pooling, slots))
    try:
        fold_version, data, study, n_before = _stack_study(store_dir, spec, study_name, where, zero_shot_pooling, say)
    except BaseException:
        join_helpers(helpers, stop=True)
        raise
    with Active(study) as me:
        try:
            say(f"study {study_name}: {spec.method} over {len(data.heads)} sources, post "
                f"{list(spec.post_ops) or 'none'}, fold version {fold_version}, {n_before} earlier trial(s), "
                f"storage {where.shown}{f', {workers} processes' if workers > 1 else ''}")
            slots.wait_ready(helpers, say)   # stack trials take hundredths of a second
            run_trials(study, _stack_objective(spec, data, study), slots, where, [trial_reporter(say, ".2f")], say)
        except BaseException:
            join_helpers(helpers, stop=True)
            raise
        join_helpers(helpers)
        # level-2 CV scores all folds at once: no pruning
        out = summarize(study, study_name, recorded_as="recorded as stacked head")
        if out.completed and record_best:
            def record(best) -> tuple[str, float, float]:
                params, chain = spec.decode(best.params)
                say(f"recording the best trial ({best.number}) as a stacked head ...")
                result = run_stack(store_dir, spec.heads, spec.method, params, chain, zero_shot=spec.zero_shot,
                                   zero_shot_pooling=zero_shot_pooling, tag="tuned", data=data)
                return result.head_id, result.fold_mean, result.cv.score.fold_std

            record_best_once(store_dir, study, where, out, record, say, me)
    return out


def post_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"smooth,filescale"`` -> ``("smooth", "filescale")`` (checked against the known ops)."""
    names = tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip())
    unknown = [n for n in names if n not in POST_OPS]
    if unknown:
        raise UserInputError(f"unknown post-processing op(s) {unknown}; choose from {', '.join(POST_OPS)}")
    return names
