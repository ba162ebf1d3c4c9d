"""``python -m pipelines.selftrain``: self-training rounds - the teacher pseudo-labels every unlabelled
train soundscape window (fold by fold), a student with the teacher's configuration re-trains on them,
and the student becomes the next teacher; one experiment row per round (tag ``selftrain-r<N>``),
stopping early when the fold mean stops improving. A stacked teacher gives a stacked student (every
base head re-trained, then re-stacked). No re-embedding. The library: stack/selftrain.py.
"""

from __future__ import annotations

from pipelines._cli import add_store, parser, run_main
from stack.pseudo import PseudoParams, make_params
from stack.selftrain import run_selftrain

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
    ap.add_argument("--rounds", type=int, default=3, help="maximum number of rounds (default 3)")
    ap.add_argument("--min-gain", type=float, default=0.0,
                    help="stop when a round's fold mean does not beat the best by more than this (default 0)")
    ap.add_argument("--power", type=float, default=d.power, help=f"sharpen: p ** power (default {d.power:g})")
    ap.add_argument("--min-prob", type=float, default=d.min_prob,
                    help=f"labels whose teacher probability is below this become 0 (default {d.min_prob:g})")
    ap.add_argument("--cap", type=float, default=d.cap, help="cap each window's label sum (default: no cap)")
    ap.add_argument("--weight", type=float, default=d.weight,
                    help=f"sample weight of the pseudo-labelled windows (default {d.weight:g})")
    args = ap.parse_args(argv)
    params = make_params({"power": args.power, "min_prob": args.min_prob, "cap": args.cap, "weight": args.weight})
    result = run_selftrain(args.store, args.teacher, args.rounds, params, min_gain=args.min_gain,
                           say=lambda m: print(m, flush=True))
    print(result.render())
    return 0


if __name__ == "__main__":
    run_main(main)
