"""``python -m pipelines.stack``: a stacked head over trained heads, scored on the frozen folds like a head.

A level-2 model (``ridge`` over the heads' logits, their neighbours and file statistics, or a
weighted ``blend``) is cross-validated on the labelled soundscape windows: the model scoring fold k
never saw a fold-k window. Post-processing steps run after it, in the order given. Writes the stacked
head ``heads/stack-<hash>/`` (what ``pipelines.predict --head-id`` uses), ``oof/<id>.parquet`` and an
``experiments`` row (head ``stack``), so ``pipelines.leaderboard`` ranks it with the base heads.
With ``--trials`` an Optuna study (in the store's ``optuna.db``, or on ``--storage`` with ``--workers``
processes, as in ``pipelines.tune``) searches the stacker's and the post steps' parameters; the best
is recorded as a ``tuned`` stacked head.
"""

from __future__ import annotations

from pipelines._cli import (
    add_question,
    add_seed,
    add_storage,
    add_store,
    json_list,
    json_object,
    non_negative_int,
    parser,
    run_main,
    store_question,
)
from stack.post import POST_OPS
from stack.stackers import PARAMS_BY_KIND

EPILOG = f"""
Stackers: {', '.join(PARAMS_BY_KIND)} (parameters: see stack/stackers.py; e.g. ridge {{"alpha": 3,
"site_prior": true}}, blend {{"method": "rank", "weights": [1, 2]}}).
Post ops: {', '.join(POST_OPS)}; --post names them with default parameters (searched with --trials),
--post-json gives a full chain, e.g. '[["smooth", {{"kernel": [1, 2, 1]}}], ["filescale", {{"a": 0.3}}]]'.

Examples:
  python -m pipelines.stack --store work/store --heads linear-0a1b2c3d4e5f,lgbm-5f4e3d2c1b0a --method ridge \\
      --post smooth,filescale
  python -m pipelines.stack --store work/store --heads linear-0a1b2c3d4e5f,lgbm-5f4e3d2c1b0a --method blend \\
      --post filescale --trials 40 --study blend-2heads
  python -m pipelines.predict --store work/store --head-id stack-<hash> --audio data/test_soundscapes --out sub.csv
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("stack", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--heads", required=True, help="base head ids, comma-joined (from pipelines.leaderboard)")
    ap.add_argument("--method", required=True, choices=sorted(PARAMS_BY_KIND), help="level-2 model")
    ap.add_argument("--params", type=json_object, default="{}",
                    help="JSON object of stacker parameters (held fixed with --trials)")
    ap.add_argument("--post", default="", help=f"post ops with default parameters, comma-joined: {', '.join(POST_OPS)}")
    ap.add_argument("--post-json", type=json_list, default=None,
                    help="post chain as JSON [[op, {params}], ...] (not searched)")
    ap.add_argument("--zero-shot", default="", help="stored zero-shot logit views to add as sources, e.g. birdnet_logits")
    ap.add_argument("--zero-shot-pooling", default="mean", help="frame->window pooling of those views (default mean)")
    ap.add_argument("--trials", type=non_negative_int, default=0, help="Optuna trials to add to --study (default 0: one run)")
    ap.add_argument("--study", default=None, help="study name in <store>/optuna.db or --storage (with --trials)")
    add_storage(ap)
    ap.add_argument("--tag", default=None, help="leaderboard tag (default full; tuned for a study's best)")
    add_seed(ap)
    add_question(ap)
    args = ap.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    zero_shot = tuple(v.strip() for v in args.zero_shot.split(",") if v.strip())
    params, post_json = args.params, args.post_json
    if args.post and post_json is not None:
        ap.error("give --post or --post-json, not both")
    if args.trials:
        from stack.tuning import StackTuneSpec, post_names, tune_stack

        if not args.study:
            ap.error("--trials needs --study NAME")
        if post_json is not None:
            ap.error("--trials searches the ops named by --post; --post-json is a fixed chain (use it without --trials)")
        spec = StackTuneSpec(tuple(heads), args.method, post_names(args.post), params, zero_shot, args.seed)
        tuned = tune_stack(args.store, spec, args.trials, args.study, zero_shot_pooling=args.zero_shot_pooling,
                           storage=args.storage, workers=args.workers)
        print(tuned.render())
        store_question(args.store, [tuned.best_head_id], args.question)
        return 0
    from stack.run import run_stack

    post = post_json if post_json is not None else [n.strip() for n in args.post.split(",") if n.strip()]
    result = run_stack(args.store, heads, args.method, params, post, zero_shot=zero_shot,
                       zero_shot_pooling=args.zero_shot_pooling, tag=args.tag)
    print(result.render())
    store_question(args.store, [result.head_id], args.question)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; a stacked head is written only at its end (nothing of it kept); with --trials, "
        "finished trials stay in the study, the running one is queued to run first, and --trials N on the "
        "same --study adds N more"
    ))
