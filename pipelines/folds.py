"""``python -m pipelines.folds``: make the frozen cross-validation folds of a feature store (once).

Writes three versioned tables: ``folds`` (every window -> fold 0..K-1; test soundscapes -> -1),
``shadow_folds`` (leave-one-site-out over the labelled soundscapes: a harder stress split) and
``replay_windows`` (a fixed, seeded, multilabel-stratified subset of files for fast triage).
"""

from __future__ import annotations

from featurestore.folds import SOUNDSCAPE_GROUPINGS, FoldParams, make_folds
from pipelines._cli import add_store, at_least, parser, positive_int, run_main

EPILOG = """
Grouping (nothing near-identical straddles folds):
  soundscapes   site_split (default): whole sites; a site with > 1/k of the labelled windows in 7-day blocks
                (real labels: 139-156 windows/fold vs 36-477 with site); site_date: every site in date blocks
  focal clips   by recordist (author) + a coarse lat/lon cell (--cell-deg); train.csv has no date
  duplicates    files with identical decoded audio are put in one group
Within each family, groups are dealt to folds by greedy group-level multilabel stratification so a
rare class reaches as many folds as its group count allows; classes that cannot reach >= 2 folds
are listed.

The folds are frozen: re-running with the same store and parameters changes nothing. If the inputs
(re-ingested data) or the parameters change, the job stops and says so; pass --new-version to
store the new version on purpose (old versions stay in the store).

Example:
  python -m pipelines.folds --store work/store
  duckdb work/store/catalog.duckdb "SELECT fold, count(*) FROM folds GROUP BY 1 ORDER BY 1"
"""


def main(argv: list[str] | None = None) -> int:
    d = FoldParams()
    ap = parser("folds", __doc__)
    ap.epilog = EPILOG
    add_store(ap)
    ap.add_argument("-k", "--k", "--n-folds", dest="k", type=at_least(2), default=d.k,
                    help=f"number of folds (default {d.k}); --fold-version elsewhere names a stored fold version")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"tie-break and replay seed (default {d.seed})")
    ap.add_argument("--soundscape-group", choices=SOUNDSCAPE_GROUPINGS, default=d.soundscape_group,
                    help=f"how soundscapes are grouped, see below (default {d.soundscape_group})")
    ap.add_argument("--date-block-days", type=positive_int, default=d.date_block_days,
                    help=f"days per date block for site_date / site_split (default {d.date_block_days})")
    ap.add_argument("--split-fraction", type=float, default=d.split_fraction,
                    help="site_split: cut a site holding more than this x 1/k of the labelled windows "
                         f"(default {d.split_fraction})")
    ap.add_argument("--day-start-hour", type=int, default=d.day_start_hour,
                    help="site_split: a recording day runs from this hour of the file-name clock to the next, "
                         f"so a night across midnight stays whole (default {d.day_start_hour})")
    ap.add_argument("--cell-deg", type=float, default=d.cell_deg,
                    help=f"lat/lon cell size in degrees for focal-clip groups (default {d.cell_deg})")
    ap.add_argument("--replay-fraction", type=float, default=d.replay_fraction,
                    help=f"share of files in the replay subset (default {d.replay_fraction})")
    ap.add_argument("--no-merge-duplicates", action="store_true",
                    help="do not merge groups that share byte-identical decoded audio")
    ap.add_argument("--new-version", action="store_true",
                    help="store a new fold version when inputs or parameters changed (otherwise refuse)")
    args = ap.parse_args(argv)
    summary = make_folds(args.store, k=args.k, seed=args.seed, soundscape_group=args.soundscape_group,
                         date_block_days=args.date_block_days, cell_deg=args.cell_deg,
                         replay_fraction=args.replay_fraction, merge_duplicates=not args.no_merge_duplicates,
                         split_fraction=args.split_fraction, day_start_hour=args.day_start_hour,
                         new_version=args.new_version)
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; each fold table is written whole or not at all: re-run the same command to write "
        "the rest (the same folds)"
    ))
