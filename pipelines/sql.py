"""``python -m pipelines.sql``: run a SQL file against a feature store, from any folder.

FILE is a path to a ``.sql`` file or the name of a shipped one (``eda/class_counts``,
``leakage/duplicate_audio``; an unknown name lists them all). The store is opened read-only (no lock,
nothing written) with its part views resolved in the store's own folder, so this works on a
copied, moved or read-only store (a Kaggle dataset), from any working directory and whatever DuckDB
CLI is or is not installed. Statements run in order; the last one's result is printed as a table,
or written whole to ``--out`` (``.csv`` or ``.parquet``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from featurestore.query import query, read_sql, render, write_out
from pipelines._cli import add_store, non_negative_int, parser, run_main

EPILOG = """
Examples:
  python -m pipelines.sql --store work/store sql/eda/class_counts.sql
  python -m pipelines.sql --store work/store leakage/duplicate_audio --out dups.csv
  python -m pipelines.sql --store work/store -c "SELECT fold, count(*) FROM folds GROUP BY 1 ORDER BY 1"

The same files run in the DuckDB CLI (pip install duckdb-cli) from inside the store folder:
  cd work/store && duckdb -readonly catalog.duckdb < ../../sql/eda/class_counts.sql
or from anywhere, telling DuckDB where the part files are:
  duckdb -readonly -cmd "SET file_search_path='work/store'" work/store/catalog.duckdb < sql/eda/class_counts.sql
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("sql", __doc__, EPILOG)
    add_store(ap)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", help="a .sql file, or a shipped name such as eda/class_counts")
    what.add_argument("-c", "--command", metavar="SQL", help="run this SQL text instead of a file")
    ap.add_argument("--max-rows", type=non_negative_int, default=50, help="rows printed (default 50; --out writes all)")
    ap.add_argument("--out", type=Path, default=None, help="write the whole result to a .csv or .parquet file")
    args = ap.parse_args(argv)
    label, text = ("--command", args.command) if args.command else read_sql(args.file)
    table = query(args.store, text, label)
    if args.out is not None:
        write_out(table, args.out)
        print(f"{table.num_rows} row(s) written to {args.out}", file=sys.stderr)
    else:
        print(render(table, max(0, args.max_rows)))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; nothing written (the store is opened read-only; --out is written whole or not at "
        "all)"
    ))
