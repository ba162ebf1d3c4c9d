"""``python -m pipelines.selftrain``: self-training rounds - the teacher pseudo-labels every unlabelled
train soundscape window (fold by fold), a student with the teacher's configuration re-trains on them,
and the student becomes the next teacher; one experiment row per round (tag ``selftrain-r<N>``),
stopping early when the fold mean stops improving. A stacked teacher gives a stacked student (every
base head re-trained, then re-stacked). No re-embedding. The library: students/selftrain.py.
"""

from __future__ import annotations

from models.pseudo_labels import PseudoParams, make_params
from pipelines._cli import (
    add_pseudo_params,
    add_question,
    add_store,
    parser,
    positive_int,
    pseudo_overrides,
    run_main,
    say,
    store_question,
)
from students.selftrain import run_selftrain

EPILOG = """
Example:
  python -m pipelines.selftrain --store work/store --teacher stack-1a2b3c4d5e6f --rounds 3 --power 1.5 --cap 0.75
  python -m pipelines.leaderboard --store work/store --tag selftrain-r1
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("selftrain", __doc__, EPILOG)
    add_store(ap)
    d = PseudoParams()
    ap.add_argument("--teacher", required=True, help="trained or stacked head id of round 0")
    ap.add_argument("--rounds", type=positive_int, default=3, help="maximum number of rounds (default 3)")
    ap.add_argument("--min-gain", type=float, default=0.0,
                    help="stop when a round's fold mean does not beat the best by more than this (default 0)")
    add_pseudo_params(ap, d)
    add_question(ap)
    args = ap.parse_args(argv)
    params = make_params(pseudo_overrides(args))
    result = run_selftrain(args.store, args.teacher, args.rounds, params, min_gain=args.min_gain,
                           say=say)
    print(result.render())
    # each round's student and, for a stacked student, the base heads the round re-trained (new rows too)
    store_question(args.store, [r.student_id for r in result.rounds], args.question, with_bases=True)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; finished rounds, stored pseudo-labels and the finished folds of the student being "
        "trained are kept: re-run the same command to resume"
    ))
