"""``python -m pipelines.train``: cross-validate one head on stored features against the frozen folds."""

from __future__ import annotations

import argparse

from models.frame import FrameSpec
from models.heads import PARAMS_BY_KIND
from models.pseudo_labels import PseudoSpec
from models.training import train_head
from pipelines._cli import (
    add_question,
    add_seed,
    add_store,
    json_object,
    parser,
    run_main,
    say,
    store_question,
)

EPILOG = """
Heads: prior (class base rate), zeroshot (BirdNET's own logits; use --features birdnet_logits),
linear (per-class logistic regression), lgbm (per-class LightGBM).
Features: a stored view or comma-joined views: birdnet, birdnet_logits, classical, custom:<name>.

The headline is the fold mean of the competition metric on the labelled soundscape windows (each
fold scored by the model that held it out); the pooled OOF score and their difference (the
calibration gap) are shown beside it. Classes positive in every window of a fold are dropped
there and counted; with no scorable soundscape window the focal windows are scored instead.

User labels (pipelines.label; the user_labels table) train by default once any exist: a user positive sets
its class to 1, a negative to 0; a window only users labelled becomes a training row (other classes 0) in its
file's fold and is never scored; labels on expert-labelled soundscape windows are not applied. The label
set's digest is part of the head id and the experiment row counts the windows, positives and negatives.

Writes heads/<head_id>/fold_<k>/ (loadable from the folder), oof/<head_id>.parquet (one row per window,
one column per class) and a row in the `experiments` table; see pipelines.leaderboard.

Example:
  python -m pipelines.train --store work/store --head-kind lgbm --features birdnet,classical
  python -m pipelines.train --store work/store --head-kind linear --params '{"C": 0.05, "pca_components": 256}'
  python -m pipelines.train --store work/store --head-kind lgbm --pseudo pseudo-0123456789ab --pseudo-weight 0.5
  python -m pipelines.train --store work/store --head-kind linear --no-user-labels
  python -m pipelines.train --store work/store --head-kind linear --pooling max --question 'does max pooling help?'
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("train", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--head-kind", required=True, help=f"head kind: {', '.join(PARAMS_BY_KIND)}")
    ap.add_argument("--features", default="birdnet", help="feature view(s), comma-joined (default birdnet)")
    ap.add_argument("--pooling", default="mean", help="frame->window pooling: mean, max, meanmax (default mean)")
    ap.add_argument("--context", action="store_true", help="add neighbour-window mean and file max features")
    ap.add_argument("--params", type=json_object, default="{}", help="JSON object of head parameters to override")
    ap.add_argument("--fold-version", default=None, help="fold version to use (default: the current folds table)")
    ap.add_argument("--replay", action="store_true",
                    help="train and score on the replay subset only (fast triage; ranked apart from full runs)")
    add_seed(ap)
    ap.add_argument("--soundscape-weight", type=float, default=2.0,
                    help="sample weight of labelled soundscape windows (default 2.0)")
    ap.add_argument("--tag", default=None, help="leaderboard tag (default: the mode, full or replay)")
    ap.add_argument("--pseudo", default=None, metavar="VERSION",
                    help="also train on these stored pseudo-labels (pipelines.pseudo; fold k's model gets the "
                         "labels of the teacher's fold-k model)")
    ap.add_argument("--pseudo-weight", type=float, default=None,
                    help="sample weight of the pseudo-labelled windows (default: the weight stored with them)")
    ap.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                    help="with pseudo-labels made with --pool all: labelled windows train on "
                         "(1 - ALPHA) * label + ALPHA * teacher (default 0: their own labels)")
    ap.add_argument("--user-labels", action=argparse.BooleanOptionalAction, default=None,
                    help="train with the store's user labels (featurestore.user_labels; default: yes once any "
                         "exist); --no-user-labels leaves them out. They count in the head id and the experiment")
    ap.add_argument("--allow-partial", action="store_true",
                    help="train even if some labelled windows have no features yet (recorded in the experiment)")
    add_question(ap)
    args = ap.parse_args(argv)
    spec = FrameSpec(features=args.features, pooling=args.pooling, context=args.context,
                     soundscape_weight=args.soundscape_weight)
    if args.pseudo is None and (args.pseudo_weight is not None or args.distill):
        ap.error("--pseudo-weight and --distill need --pseudo VERSION")
    pseudo = PseudoSpec(args.pseudo, args.pseudo_weight, args.distill) if args.pseudo else None
    result = train_head(args.store, args.head_kind, spec, overrides=args.params, fold_version=args.fold_version,
                        replay=args.replay, seed=args.seed, tag=args.tag, allow_partial=args.allow_partial,
                        pseudo=pseudo, user_labels=args.user_labels, progress=lambda f: say(f"  fold {f} done"))
    print(result.render())
    store_question(args.store, [result.head_id], args.question)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; the finished folds of this head are kept: re-run the same command to resume at the "
        "next fold"
    ))
