"""``python -m pipelines.leaderboard``: experiments ranked by their fold-mean AUC.

Full cross-validation runs are ranked first; fast (tuner subsample) and replay runs in sections
of their own, since they were trained on less. Each row shows the fold mean +/- std (the
headline), the pooled OOF score with its file-bootstrap CI (an interval for the pooled score, not
for the fold mean) and the calibration gap between them, the rare-class AUC, classes scored and
dropped as degenerate, and which windows were scored. Columns empty in every row of a section are
left out; a legend under the board explains the base/ tag, the CI and the rare column.
"""

from __future__ import annotations

from models.experiments import MODES, BoardFilter, leaderboard
from pipelines._cli import add_store, parser, run_main

EPILOG = """
Example:
  python -m pipelines.leaderboard --store work/store
  python -m pipelines.leaderboard --store work/store --mode full --head-kind lgbm
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("leaderboard", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--tag", default=None, help="only experiments with this tag (full, replay, tuned, ...)")
    ap.add_argument("--mode", choices=MODES, default=None, help="only this mode (default: all, full first)")
    ap.add_argument("--head-kind", default=None, help="only this head kind (prior, zeroshot, linear, lgbm)")
    args = ap.parse_args(argv)
    print(leaderboard(args.store, BoardFilter(tag=args.tag, mode=args.mode, head=args.head_kind)))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (the leaderboard only reads the store)")
