"""``python -m pipelines.report``: the data memo - one self-contained HTML page about a feature store.

Sections: key numbers, inventory, class imbalance, classes with no training data, clip durations,
site x hour, label co-occurrence, metadata, audio QA outliers, leakage (exact and near duplicates,
sessions and soundscape files across folds), the fold audit and a short risk list. The memo builds at
any stage: sections whose input table is missing (no folds yet, no embeddings yet) say which command
makes it. Most numbers come from the SQL files in sql/eda and sql/leakage, so every table in the memo
can be re-run in the DuckDB CLI (the library: reports/data_memo.py).
"""

from __future__ import annotations

from pipelines._cli import add_store, parser, run_main
from reports.data_memo import write_memo

EPILOG = """
Example:
  python -m pipelines.folds --store work/store
  python -m pipelines.report --store work/store --out memo.html
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("report", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--out", default="memo.html", help="HTML file to write, in an existing folder (default memo.html)")
    args = ap.parse_args(argv)
    path = write_memo(args.store, args.out)
    print(f"data memo written to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (--out is replaced only by a complete memo)")
