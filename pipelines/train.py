"""``python -m pipelines.train``: cross-validate one head on stored features against the frozen folds."""

from __future__ import annotations

import json

from models.frame import FrameSpec
from models.heads import PARAMS_BY_KIND
from models.training import train_head
from pipelines._cli import parser, run_main

EPILOG = """
Heads: prior (class base rate), zeroshot (BirdNET's own logits; use --features birdnet_logits),
linear (per-class logistic regression), lgbm (per-class LightGBM).
Features: a stored view or comma-joined views: birdnet, birdnet_logits, classical, custom:<name>.

Writes heads/<head_id>/fold_<k>/ (loadable from the folder), oof/<head_id>.parquet (one row per window,
one column per class) and a row in the `experiments` table; see pipelines.leaderboard.

Example:
  python -m pipelines.train --store work/store --head lgbm --features birdnet,classical
  python -m pipelines.train --store work/store --head linear --params '{"C": 0.05, "pca_components": 256}'
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("train", __doc__)
    ap.epilog = EPILOG
    ap.add_argument("--store", required=True, help="feature store folder")
    ap.add_argument("--head", required=True, choices=sorted(PARAMS_BY_KIND), help="head kind")
    ap.add_argument("--features", default="birdnet", help="feature view(s), comma-joined (default birdnet)")
    ap.add_argument("--pooling", default="mean", help="frame→window pooling of frame-level features (default mean)")
    ap.add_argument("--context", action="store_true", help="add neighbour-window mean and file max features")
    ap.add_argument("--params", default="{}", help="JSON object of head parameters to override")
    ap.add_argument("--folds", default=None, help="fold version to use (default: the current folds table)")
    ap.add_argument("--replay", action="store_true", help="train and score on the replay subset only (fast triage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--soundscape-weight", type=float, default=2.0, help="sample weight of labelled soundscape windows")
    ap.add_argument("--tag", default=None, help="leaderboard tag (default: full or replay)")
    args = ap.parse_args(argv)
    try:
        overrides = json.loads(args.params)
    except json.JSONDecodeError as exc:
        ap.error(f"--params is not valid JSON: {exc}")
    spec = FrameSpec(features=args.features, pooling=args.pooling, context=args.context,
                     soundscape_weight=args.soundscape_weight)
    result = train_head(args.store, args.head, spec, overrides=overrides, fold_version=args.folds,
                        replay=args.replay, seed=args.seed, tag=args.tag,
                        progress=lambda f: print(f"  fold {f} done", flush=True))
    print(result.render())
    return 0


if __name__ == "__main__":
    run_main(main)
