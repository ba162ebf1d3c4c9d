"""Ad-hoc SQL against a store (the library behind ``python -m pipelines.sql``): a ``.sql`` file or a
shipped one by name, run statement by statement; the last result rendered as a plain text table
or written whole to CSV / Parquet. Errors name the file (:class:`StoreError`) or the bad output
path (:class:`UserInputError`); a damaged part or catalog is named with the command that mends it
(:meth:`featurestore.store.FeatureStore.reading`).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from featurestore.errors import StoreError, UserInputError
from featurestore.sqlfiles import split_statements, sql_text
from featurestore.store import DiskFullGuard, FeatureStore, query_arrow, write_parquet_atomic


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
        with store.reading():            # a damaged part or catalog: named, with the command that mends it
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


def csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with every nested column (list, struct, map) as JSON text, which CSV can hold (pyarrow's CSV
    writer refuses nested types); NULL stays empty."""
    import json

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str, ensure_ascii=False)
                    for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(text, pa.string()))
    return table


def write_out(table: pa.Table, out: Path) -> None:
    """The whole result to ``out`` (.csv: nested columns as JSON text; .parquet: as is), written under a temporary
    name and renamed, so a failure leaves no partial file; a missing folder is refused, not created."""
    import os
    import uuid

    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise UserInputError(f"--out must end in .csv or .parquet, got {out.name!r}")
    if not out.parent.is_dir():
        raise UserInputError(f"--out {out}: the folder {out.parent} does not exist")
    if out.suffix == ".parquet":
        write_parquet_atomic(table, out)
        return
    import pyarrow.csv as pacsv

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with DiskFullGuard(out, out.parent):
            pacsv.write_csv(csv_ready(table), tmp)
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def query(store_dir: str | Path, text: str, label: str) -> pa.Table:
    """:func:`run_sql` on the store at ``store_dir``, opened read-only (no lock, nothing written)."""
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        return run_sql(store, text, label)
