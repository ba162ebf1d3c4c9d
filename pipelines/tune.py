"""``python -m pipelines.tune``: Optuna search over a head's parameters against the frozen folds.

The study lives in the store (``optuna.db``, SQLite), so it survives restarts, can be resumed with
more trials and opened in optuna-dashboard. The objective is the OOF macro AUC on the replay subset
(``--full`` for full CV), reported after each fold so hopeless trials are pruned early. The best
parameters are then trained once more through ``pipelines.train`` and recorded as a ``tuned``
experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featurestore.store import FeatureStore
from models.frame import SOUNDSCAPE, FrameSpec, build_frame
from models.heads import make_head
from models.metrics import macro_auc_defined
from models.training import fold_assignment, replay_window_ids, train_head
from pipelines._cli import parser, run_main

STUDY_FILE = "optuna.db"


def storage_url(store_dir: str | Path) -> str:
    return f"sqlite:///{Path(store_dir).expanduser().resolve() / STUDY_FILE}"


def suggest(kind: str, trial) -> dict:
    """The search space of each tunable head."""
    if kind == "lgbm":
        return {"learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
                "num_leaves": trial.suggest_int("num_leaves", 4, 63, log=True),
                "min_child_samples": trial.suggest_int("min_child_samples", 2, 50, log=True),
                "feature_fraction": trial.suggest_float("feature_fraction", 0.1, 0.9),
                "neg_per_pos": trial.suggest_float("neg_per_pos", 5.0, 100.0, log=True),
                "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True)}
    if kind == "linear":
        return {"C": trial.suggest_float("C", 1e-3, 10.0, log=True),
                "pca_components": trial.suggest_categorical("pca_components", [0, 32, 128, 256])}
    raise ValueError(f"head {kind!r} has nothing to tune; use lgbm or linear")


def make_objective(kind: str, frame, folds: np.ndarray, eval_mask: np.ndarray, base: dict):
    """Objective: OOF macro AUC over ``eval_mask`` rows, reported (and prunable) after every fold."""
    import optuna

    fold_ids = sorted(set(folds.tolist()) - {-1})

    def objective(trial) -> float:
        overrides = {**base, **suggest(kind, trial)}
        oof = np.zeros(frame.Y.shape, dtype=np.float32)
        done = np.zeros(len(folds), bool)
        value = float("nan")
        for step, f in enumerate(fold_ids):
            held, train = folds == f, (folds != f) & (folds != -1)
            head = make_head(kind, frame.class_names, frame.feature_names, overrides)
            head.fit(frame.X[train], frame.Y[train], frame.weight[train], groups=frame.groups[train])
            oof[held] = head.predict_proba(frame.X[held])
            done |= held
            rows = done & eval_mask
            value, _ = macro_auc_defined(frame.Y[rows], oof[rows]) if rows.any() else (float("nan"), 0)
            if not np.isnan(value):
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value

    return objective


def run_tune(store_dir: str | Path, kind: str, trials: int, study_name: str, spec: FrameSpec, *,
             full: bool = False, seed: int = 0, fold_version: str | None = None, record_best: bool = True) -> dict:
    import optuna

    with FeatureStore.open(store_dir) as store:
        ids = None if full else sorted(replay_window_ids(store))
        frame = build_frame(store, spec, window_ids=ids)
        folds, fold_version = fold_assignment(store, frame.window_ids, fold_version)
    is_scape = (frame.source == SOUNDSCAPE) & (folds != -1)
    eval_mask = is_scape if is_scape.any() else folds != -1
    base = {"seed": seed} if kind == "lgbm" else {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage_url(store_dir), load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    study.set_user_attr("head", kind)
    study.set_user_attr("features", spec.features)
    study.optimize(make_objective(kind, frame, folds, eval_mask, base), n_trials=trials, show_progress_bar=True)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = {"study": study_name, "trials": len(study.trials), "completed": len(completed),
           "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}
    if completed:
        out.update(best_value=study.best_value, best_params=study.best_params)
        if record_best:
            result = train_head(store_dir, kind, spec, overrides={**base, **study.best_params},
                                fold_version=fold_version, replay=not full, seed=seed, tag="tuned")
            out["best_head_id"] = result.head_id
            out["best_oof_auc"] = result.oof_auc
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser("tune", __doc__)
    ap.add_argument("--store", required=True, help="feature store folder")
    ap.add_argument("--head", required=True, choices=["lgbm", "linear"])
    ap.add_argument("--trials", type=int, default=20, help="trials to add to the study (default 20)")
    ap.add_argument("--study", required=True, help="study name (re-use it to resume and add trials)")
    ap.add_argument("--features", default="birdnet")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--full", action="store_true", help="objective on full CV instead of the replay subset")
    ap.add_argument("--folds", default=None, help="fold version (default: current)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = run_tune(args.store, args.head, args.trials, args.study, FrameSpec(args.features, args.pooling),
                   full=args.full, seed=args.seed, fold_version=args.folds)
    print(json.dumps(out, indent=1, default=str))
    print(f"dashboard: pip install -e '.[dashboard]' && optuna-dashboard {storage_url(args.store)}")
    return 0


if __name__ == "__main__":
    run_main(main)
