"""``python -m pipelines.folds``: make the frozen cross-validation folds of a feature store (once).

Writes three versioned tables: ``folds`` (every window -> fold 0..K-1; test soundscapes -> -1),
``shadow_folds`` (leave-one-site-out over the labelled soundscapes: a harder stress split) and
``replay_windows`` (a fixed, seeded, multilabel-stratified subset of files for fast triage).
"""

from __future__ import annotations

from featurestore.folds import FoldParams, make_folds
from pipelines._cli import parser, run_main

EPILOG = """
Grouping (nothing near-identical straddles folds):
  soundscapes   by site, or site + date block (--soundscape-group site_date --date-block-days 7)
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
    ap.add_argument("--store", required=True, help="feature store folder (after pipelines.ingest)")
    ap.add_argument("-k", "--folds", type=int, default=d.k, help=f"number of folds (default {d.k})")
    ap.add_argument("--seed", type=int, default=d.seed, help=f"tie-break and replay seed (default {d.seed})")
    ap.add_argument("--soundscape-group", choices=("site", "site_date"), default=d.soundscape_group,
                    help=f"group soundscapes by site or by site + date block (default {d.soundscape_group})")
    ap.add_argument("--date-block-days", type=int, default=d.date_block_days,
                    help=f"days per date block for site_date grouping (default {d.date_block_days})")
    ap.add_argument("--cell-deg", type=float, default=d.cell_deg,
                    help=f"lat/lon cell size in degrees for focal-clip groups (default {d.cell_deg})")
    ap.add_argument("--replay-fraction", type=float, default=d.replay_fraction,
                    help=f"share of files in the replay subset (default {d.replay_fraction})")
    ap.add_argument("--no-merge-duplicates", action="store_true",
                    help="do not merge groups that share byte-identical decoded audio")
    ap.add_argument("--new-version", action="store_true",
                    help="store a new fold version when inputs or parameters changed (otherwise refuse)")
    args = ap.parse_args(argv)
    summary = make_folds(args.store, k=args.folds, seed=args.seed, soundscape_group=args.soundscape_group,
                         date_block_days=args.date_block_days, cell_deg=args.cell_deg,
                         replay_fraction=args.replay_fraction, merge_duplicates=not args.no_merge_duplicates,
                         new_version=args.new_version)
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main)
