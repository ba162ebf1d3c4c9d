"""``python -m pipelines.tune``: Optuna search over a head's parameters, scored as the leaderboard scores.

The objective is the fold mean of the competition metric on every labelled evaluation window
(the experiments table's headline); each fold's AUC is reported as it finishes, so hopeless
trials are pruned early. The study lives in the store (``optuna.db``) or on ``--storage``: re-run with
the same ``--study`` to add trials (new parameter sets, not repeats), open it in optuna-dashboard. The
best parameters are re-trained with full cross-validation and recorded as a ``tuned`` experiment.
``--workers N`` runs N tuning processes here; commands on other machines with the same ``--study`` and a
shared ``--storage`` (PostgreSQL, MySQL) cooperate: no parameter set trained twice, the defaults tried
once, the best re-trained once, by the last process to finish.
"""

from __future__ import annotations

from functools import partial

from models.frame import FrameSpec
from models.training import Subsample
from models.tuning import (
    DEFAULT_FAST,
    JOURNAL_FILE,
    MODES,
    SEARCH_SPACES,
    TuneSpec,
    resolve_storage,
    run_tune,
)
from pipelines._cli import (
    add_question,
    add_seed,
    add_storage,
    add_store,
    json_object,
    non_negative_int,
    parser,
    positive_int,
    progress,
    run_main,
    say,
    store_question,
)

EPILOG = f"""
Modes:
  full   train every fold on all its training windows (what pipelines.train does)
  fast   keep the full evaluation, but train on at most --focal-per-class focal windows per class
         (default {DEFAULT_FAST.focal_per_class}; soundscape windows always kept) and/or only --tune-folds
Search spaces: {'; '.join(f"{k}: {', '.join(v)}" for k, v in SEARCH_SPACES.items())}.
Fix any head parameter with --params (it then leaves the search space).
Storage (--storage): the store's optuna.db (SQLite, the default: one process only), journal:PATH (a file:
  many processes on one machine; the default with --workers > 1 is journal:<store>/{JOURNAL_FILE}), or
  postgresql://USER@HOST:PORT/DB / mysql://... (many machines; pip install -e '.[postgres]' for PostgreSQL).
  --trials T with --workers N is T trials in all, shared by the N processes.
--trials 0 records the best of an existing study (e.g. one other commands filled); a new study is refused.
Ctrl-C: finished trials are kept; the running trial is marked failed and its parameters queued, so re-running
  the same command runs it first. Progress: a bar of each trial's folds on a terminal, a line every 30 s in a log.

Examples:
  python -m pipelines.tune --store work/store --head-kind linear --trials 30 --study linear-birdnet
  python -m pipelines.tune --store work/store --head-kind lgbm --features birdnet,classical --mode fast \\
      --focal-per-class 40 --tune-folds 0,1,2 --trials 50 --study lgbm-fast
  python -m pipelines.tune --store work/store --head-kind linear --trials 40 --study linear-4 --workers 4
  python -m pipelines.tune --store /shared/store --head-kind lgbm --trials 100 --study lgbm-cluster \\
      --storage postgresql://tune@db-host:5432/optuna        # the same command on every machine
  optuna-dashboard sqlite:///work/store/optuna.db      # pip install -e '.[dashboard]'
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("tune", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--head-kind", required=True, help=f"head kind to tune: {', '.join(SEARCH_SPACES)}")
    ap.add_argument("--study", required=True, help="study name (re-use it to resume and add trials)")
    ap.add_argument("--trials", type=non_negative_int, default=20,
                    help="trials to add to the study by this command, in all its --workers (default 20)")
    add_storage(ap)
    ap.add_argument("--features", default="birdnet", help="feature view(s), comma-joined (default birdnet)")
    ap.add_argument("--pooling", default="mean", help="frame->window pooling: mean, max, meanmax (default mean)")
    ap.add_argument("--context", action="store_true", help="add neighbour-window mean and file max features")
    ap.add_argument("--soundscape-weight", type=float, default=2.0,
                    help="sample weight of labelled soundscape windows (default 2.0)")
    ap.add_argument("--params", type=json_object, default="{}", help="JSON object of head parameters to hold fixed")
    ap.add_argument("--fold-version", default=None, help="fold version (default: the current folds table)")
    ap.add_argument("--mode", choices=MODES, default="full", help="full or fast (see below; default full)")
    ap.add_argument("--focal-per-class", type=positive_int, default=DEFAULT_FAST.focal_per_class,
                    help="fast mode: focal training windows kept per class, at least 1 (default "
                         f"{DEFAULT_FAST.focal_per_class}; for all of them use --mode full, or --tune-folds alone)")
    ap.add_argument("--tune-folds", default="", help="fast mode: only these held-out folds, e.g. 0,1,2")
    add_seed(ap)
    add_question(ap)
    args = ap.parse_args(argv)
    try:
        folds = tuple(int(f) for f in args.tune_folds.split(",") if f.strip())
    except ValueError as exc:
        ap.error(f"--tune-folds must be comma-joined numbers: {exc}")
    spec = TuneSpec(args.head_kind, FrameSpec(args.features, args.pooling, soundscape_weight=args.soundscape_weight,
                                              context=args.context),
                    fixed=args.params, fold_version=args.fold_version, mode=args.mode,
                    subsample=Subsample(args.focal_per_class, folds), seed=args.seed)
    where = resolve_storage(args.store, args.storage, args.workers)   # a bad URL: refused before any planning
    result = run_tune(args.store, spec, args.trials, args.study, storage=args.storage, workers=args.workers,
                      say=say, progress=partial(progress, unit="fold"))   # each trial's folds: a bar or a line / 30 s
    print(result.render())
    store_question(args.store, [result.best_head_id], args.question)
    print(f"dashboard: pip install -e '.[dashboard]' && optuna-dashboard {where.dashboard()}")
    return 0


INTERRUPTED = ("interrupted: finished trials are kept in the study; the running trial was marked failed and its "
               "parameters queued to run first: re-run the same command to resume (or with --trials 0 to only "
               "record the best)")

if __name__ == "__main__":
    run_main(main, interrupted=INTERRUPTED)
