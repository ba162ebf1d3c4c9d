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

import duckdb
import pyarrow as pa

from featurestore.sqlfiles import split_statements, sql_text
from featurestore.store import FeatureStore, StoreError, query_arrow
from pipelines._cli import add_store, parser, run_main

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


def read_sql(file: str) -> tuple[str, str]:
    """(label, text) of a SQL file given as a path, or as the name of a shipped file."""
    path = Path(file).expanduser()
    if path.is_file():
        return str(path), path.read_text()
    name = file.removesuffix(".sql")
    name = name.split("sql/", 1)[1] if name.startswith(("sql/", "./sql/")) else name
    return name, sql_text(name)


def run_sql(store: FeatureStore, text: str, label: str) -> pa.Table:
    """Run every statement of ``text``; the last one's result as Arrow (errors name the file)."""
    statements = split_statements(text)
    if not statements:
        raise StoreError(f"{label} has no SQL statement")
    try:
        for statement in statements[:-1]:
            store.con.execute(statement)
        return query_arrow(store.con, statements[-1])
    except duckdb.Error as exc:
        raise StoreError(f"{label}: {' '.join(str(exc).split())}") from exc


def render(table: pa.Table, max_rows: int, max_width: int = 40) -> str:
    """A plain aligned text table of the first ``max_rows`` rows, with a row-count footer."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(value) -> str:
        text = "NULL" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        text = " ".join(text.split())
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    shown = f"; first {len(rows)} shown, raise --max-rows for more" if table.num_rows > len(rows) else ""
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{shown})")
    return "\n".join(lines)


def write_out(table: pa.Table, out: Path) -> None:
    if out.suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, out)
    elif out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out, compression="zstd")
    else:
        raise ValueError(f"--out must end in .csv or .parquet, got {out.name!r}")


def main(argv: list[str] | None = None) -> int:
    ap = parser("sql", __doc__, EPILOG)
    add_store(ap)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", help="a .sql file, or a shipped name such as eda/class_counts")
    what.add_argument("-c", "--command", metavar="SQL", help="run this SQL text instead of a file")
    ap.add_argument("--max-rows", type=int, default=50, help="rows printed (default 50; --out writes all)")
    ap.add_argument("--out", type=Path, default=None, help="write the whole result to a .csv or .parquet file")
    args = ap.parse_args(argv)
    label, text = ("--command", args.command) if args.command else read_sql(args.file)
    with FeatureStore.open(args.store, create=False, read_only=True) as store:
        table = run_sql(store, text, label)
    if args.out is not None:
        write_out(table, args.out)
        print(f"{table.num_rows} row(s) written to {args.out}", file=sys.stderr)
    else:
        print(render(table, max(0, args.max_rows)))
    return 0


if __name__ == "__main__":
    run_main(main)
