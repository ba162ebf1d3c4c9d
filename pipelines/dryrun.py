"""``python -m pipelines.dryrun``: run an exported bundle's notebook exactly as Kaggle would, offline -
a fresh venv into which the notebook installs the bundle's wheels with ``--no-index``, the audio laid
out under a fake ``/kaggle/input``, the notebook executed headless (nbclient) inside a network
namespace (``unshare -n``) - then compare its submission with ``pipelines.predict`` on the same files.
Prints the one-time cost and the steady per-file rate of the notebook's run (with a warning when too few
files were given to trust the rate), then ``projected Kaggle minutes: X (budget B)`` last, and exits 1
above budget, or when the notebook's probabilities differ from pipelines.predict's by more than 1e-4
(one ``error:`` line naming the row; a good bundle differs by ~1e-7, float32 rounding). The work folder
must be new, empty or one a dry run made: a re-run clears only what a dry run writes there. The library:
submit/dryrun.py.
"""

from __future__ import annotations

import sys

from pipelines._cli import parser, positive_int, run_main
from submit.dryrun import TOLERANCE, WORK_MARKER, dry_run

EPILOG = f"""
Exit status: 0 when the notebook ran, agrees with pipelines.predict within {TOLERANCE:g} (max |difference| of
the unrounded probabilities) and fits the budget; 1 above the budget or the tolerance; 2 on an error.

Example:
  python -m pipelines.dryrun --bundle bundle --audio data/test_soundscapes
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("dryrun", __doc__, EPILOG)
    ap.add_argument("--bundle", required=True, help="bundle folder written by pipelines.export")
    ap.add_argument("--audio", required=True,
                    help="soundscapes to predict (laid out as test_soundscapes): the folder's own files, as "
                         "pipelines.predict lists them (sub-folders are not searched); give at least 2 x the "
                         "workers' count of files for a steady per-file rate")
    ap.add_argument("--work", default=None,
                    help=f"work folder: new, empty, or one a dry run made (it holds {WORK_MARKER}); a non-empty "
                         "folder without it is refused (default: .<bundle>-dryrun beside the bundle)")
    ap.add_argument("--sample", default=None, help="sample_submission.csv (default: header from the bundle)")
    ap.add_argument("--files", type=positive_int, default=600, help="test files to project for (default 600)")
    ap.add_argument("--cpus", type=positive_int, default=4, help="Kaggle CPUs (default 4)")
    ap.add_argument("--budget-min", type=float, default=None, help="budget in minutes (default: the bundle's, 90)")
    ap.add_argument("--allow-network", action="store_true",
                    help="run with network when this machine cannot cut it (unshare -n not permitted)")
    args = ap.parse_args(argv)
    result = dry_run(args.bundle, args.audio, work=args.work, budget_min=args.budget_min, n_files=args.files,
                     cpus=args.cpus, sample=args.sample, allow_network=args.allow_network)
    print(result.render())
    if not result.agrees:                     # above TOLERANCE: the notebook is not predicting what was checked
        print(f"error: {result.disagreement()}", file=sys.stderr)
        return 1
    return 0 if result.within_budget else 1



if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; nothing is reused: a re-run clears the dry run's work folder and starts over"
    ))
