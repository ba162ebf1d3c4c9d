"""``python -m pipelines.demo``: the whole birdclef-stack flow on a bundled synthetic dataset.

Generates a small BirdCLEF-shaped dataset (14 real classes, focal clips and 60-s soundscapes with
exact 5-s labels) and runs every stage on it: ingest → folds → embed (BirdNET + classical) → data memo
→ the baseline ladder of heads → leaderboard → predict the test soundscapes → validated submission,
scored against the demo's hidden test labels. Re-running re-uses everything already computed.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.demo_data import default_out
from pipelines._cli import PlannedProgress, parser, positive_int, run_main
from pipelines._demo import run_demo

EPILOG = """
Examples:
  python -m pipelines.demo                                    # ~11 min on 2 cores the first time
  python -m pipelines.demo --small --out /tmp/demo --workers 2   # the tests' smaller dataset
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("demo", __doc__, EPILOG)
    ap.add_argument("--out", type=Path, default=default_out(),
                    help=f"work folder for the demo data and store (default {default_out()})")
    ap.add_argument("--small", action="store_true", help="a smaller dataset (used by the tests)")
    ap.add_argument("--seed", type=int, default=2026, help="generator seed (default 2026)")
    ap.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: all cores)")
    args = ap.parse_args(argv)
    # each long stage's bar: a bar on a terminal, a line every 30 s in a log ($BIRDCLEF_STACK_STATUS_S)
    run_demo(args.out, small=args.small, seed=args.seed, workers=args.workers,
             progress=None if args.quiet else PlannedProgress)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; the generated data, ingested audio, embeddings and the finished folds of the head "
        "being trained are kept (finished heads, the stack and the pages are made again): re-run the same "
        "command to continue"
    ))
