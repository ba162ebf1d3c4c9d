"""``python -m pipelines.repair``: mend a feature store after a disk fault - damaged Parquet parts are moved
aside and a catalog DuckDB cannot read is rebuilt from what is still readable plus the parts. The library:
featurestore/repair.py.
"""

from __future__ import annotations

from featurestore.repair import repair_store
from pipelines._cli import add_store, parser, run_main

EPILOG = """
What it does, under the store's writer lock (it deletes nothing):
  1. a part that is not whole Parquet (truncated, overwritten) moves to STORE/quarantine/, same relative path;
  2. a catalog.duckdb that DuckDB cannot read in full is rebuilt: every table it can still read is copied as it
     is, part-table views are re-made from parts/, and the damaged file is kept as catalog.duckdb.corrupt-<time>;
  3. it lists what was lost and the commands that re-create it (e.g. pipelines.ingest, pipelines.folds,
     pipelines.embed), in the order to run them. heads/, oof/ and optuna.db are never touched.
A healthy store is left as it is, so running it twice is harmless. pipelines.embed moves damaged parts of its
own tables by itself and re-embeds their windows.

Example:
  python -m pipelines.repair --store work/store
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("repair", __doc__, EPILOG)
    add_store(ap)
    args = ap.parse_args(argv)
    print(repair_store(args.store).render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; parts already moved stay in quarantine/ and the catalog is replaced only by a whole "
        "rebuild: re-run pipelines.repair to finish (it deletes nothing)"
    ))
