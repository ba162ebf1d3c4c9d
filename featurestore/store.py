"""The feature store: one directory with ``catalog.duckdb`` plus zstd Parquet part files.

Two kinds of tables live here:

* **Snapshot tables** (taxonomy, recordings, windows, folds, ...) are written whole with
  :meth:`FeatureStore.write_table`. Each write is content-hashed (volatile provenance columns
  such as ``ingested_at`` excluded); an unchanged table re-uses its current version, a changed
  one becomes a new version. Every version is kept as a physical DuckDB table
  ``<name>__<version>`` and the plain name ``<name>`` is a view on the current one, so SQL
  users simply ``SELECT * FROM taxonomy``.
* **Part tables** (audio_inventory, embeddings, OOF predictions, ...) grow by atomic Parquet
  part files under ``parts/<name>/`` written with :meth:`FeatureStore.append_part`. Parts can
  be written by several processes or machines; the view ``<name>`` unions them and keeps the
  latest row per key, so a re-written key never shows twice.

Stages talk only through this store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

CATALOG_FILE = "catalog.duckdb"
PARTS_DIR = "parts"
VOLATILE_COLUMNS = frozenset({"ingested_at", "written_at", "created_at"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class StoreError(RuntimeError):
    """A feature-store operation failed; the message names the table or file."""


@dataclass(frozen=True)
class TableVersion:
    """One stored version of a snapshot table."""

    table: str
    version: str
    content_hash: str
    n_rows: int
    created_at: datetime
    params: dict
    is_current: bool


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def content_hash(table: pa.Table, exclude: Iterable[str] = VOLATILE_COLUMNS) -> str:
    """sha256 of a table's schema and values, ignoring volatile provenance columns."""
    keep = [c for c in table.column_names if c not in set(exclude)]
    table = table.select(keep).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def query_arrow(con: duckdb.DuckDBPyConnection, query: str, params: list | dict | None = None) -> pa.Table:
    """Run a query and fetch it as Arrow without the extra copy of a DB-API result."""
    relation = con.sql(query, params=params or None)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow  # DuckDB 2 / DuckDB 1.x
    return fetch()


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise StoreError(f"invalid table name {name!r}: use lower-case letters, digits and _")
    return name


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class FeatureStore:
    """Handle on a feature-store directory. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path, con: duckdb.DuckDBPyConnection, read_only: bool):
        self.root = root
        self.con = con
        self.read_only = read_only

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True, read_only: bool = False) -> FeatureStore:
        """Open (and by default create) the store at ``path``."""
        root = Path(path).expanduser().resolve()
        catalog = root / CATALOG_FILE
        if not catalog.exists():
            if not create or read_only:
                raise StoreError(f"no feature store at {root} (missing {CATALOG_FILE}); run pipelines.ingest first")
            root.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(catalog), read_only=read_only)
        except duckdb.IOException as exc:
            raise StoreError(f"cannot open {catalog}: {exc}") from exc
        store = cls(root, con, read_only)
        if not read_only:
            store._init_meta()
            store.refresh_part_views()
        return store

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _init_meta(self) -> None:
        self.con.execute(
            """
            CREATE TABLE IF NOT EXISTS _versions (
                table_name VARCHAR, version VARCHAR, content_hash VARCHAR, n_rows BIGINT,
                created_at TIMESTAMP, params JSON, is_current BOOLEAN,
                PRIMARY KEY (table_name, version))
            """
        )
        self.con.execute(
            """
            CREATE TABLE IF NOT EXISTS _part_tables (
                table_name VARCHAR PRIMARY KEY, key_columns VARCHAR[], order_column VARCHAR)
            """
        )

    # ------------------------------------------------------------------ snapshot tables
    def write_table(self, name: str, table: pa.Table, *, params: dict | None = None) -> TableVersion:
        """Store ``table`` as the current version of ``name``; unchanged content re-uses its version."""
        _check_name(name)
        if self.read_only:
            raise StoreError(f"store {self.root} is open read-only; cannot write {name}")
        digest = content_hash(table)
        version = digest[:12]
        params = params or {}
        existing = self.first(
            "SELECT version FROM _versions WHERE table_name = ? AND content_hash = ?", [name, digest]
        )
        physical = f"{name}__{version}"
        self.con.execute("BEGIN TRANSACTION")
        try:
            if existing is None:
                self.con.register("_incoming", table)
                self.con.execute(f'CREATE TABLE "{physical}" AS SELECT * FROM _incoming')
                self.con.unregister("_incoming")
                self.con.execute(
                    "INSERT INTO _versions VALUES (?, ?, ?, ?, ?, ?, false)",
                    [name, version, digest, table.num_rows, utc_now(), json.dumps(params, sort_keys=True)],
                )
            self.con.execute("UPDATE _versions SET is_current = (version = ?) WHERE table_name = ?", [version, name])
            self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{physical}"')
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise
        return self.version_info(name, version)

    def read_table(self, name: str, version: str | None = None) -> pa.Table:
        """Read the current (or a given) version of a snapshot table, or the deduplicated part table."""
        _check_name(name)
        if version is None:
            if not self.has_table(name):
                raise StoreError(f"table {name!r} is not in the store {self.root}; run the stage that writes it")
            return query_arrow(self.con, f'SELECT * FROM "{name}"')
        info = self.version_info(name, version)
        return query_arrow(self.con, f'SELECT * FROM "{name}__{info.version}"')

    def has_table(self, name: str) -> bool:
        row = self.first(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal", [name]
        )
        return bool(row and row[0])

    def has_plain_table(self, name: str) -> bool:
        """True if ``name`` is an ordinary DuckDB table (e.g. the append-only ``experiments``)."""
        return bool(self.rows("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [name]))

    def versions(self, name: str) -> list[TableVersion]:
        """Every stored version of a snapshot table, oldest first."""
        rows = self.con.execute(
            "SELECT version FROM _versions WHERE table_name = ? ORDER BY created_at, version", [name]
        ).fetchall()
        return [self.version_info(name, r[0]) for r in rows]

    def current_version(self, name: str) -> str:
        row = self.first(
            "SELECT version FROM _versions WHERE table_name = ? AND is_current", [name]
        )
        if row is None:
            raise StoreError(f"table {name!r} has no version in {self.root}")
        return row[0]

    def version_info(self, name: str, version: str) -> TableVersion:
        row = self.first(
            "SELECT table_name, version, content_hash, n_rows, created_at, params, is_current "
            "FROM _versions WHERE table_name = ? AND (version = ? OR content_hash = ?)",
            [name, version, version],
        )
        if row is None:
            raise StoreError(f"table {name!r} has no version {version!r} in {self.root}")
        return TableVersion(row[0], row[1], row[2], row[3], row[4], json.loads(row[5] or "{}"), bool(row[6]))

    def set_current(self, name: str, version: str) -> None:
        """Point the ``name`` view back at an older stored version."""
        info = self.version_info(name, version)
        self.con.execute("UPDATE _versions SET is_current = (version = ?) WHERE table_name = ?", [info.version, name])
        self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{name}__{info.version}"')

    # ------------------------------------------------------------------ part tables
    def parts_dir(self, name: str) -> Path:
        return self.root / PARTS_DIR / _check_name(name)

    def register_part_table(self, name: str, key_columns: list[str], order_column: str = "written_at") -> None:
        """Declare a part table's key: the view keeps the latest row (by ``order_column``) per key."""
        self.con.execute(
            "INSERT OR REPLACE INTO _part_tables VALUES (?, ?, ?)", [_check_name(name), key_columns, order_column]
        )
        self.parts_dir(name).mkdir(parents=True, exist_ok=True)
        self.refresh_part_views()

    def append_part(self, name: str, table: pa.Table, *, prefix: str = "part") -> Path | None:
        """Atomically write ``table`` as a new zstd Parquet part of ``name`` (tmp file + rename)."""
        if table.num_rows == 0:
            return None
        directory = self.parts_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{prefix}-{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}.parquet"
        write_parquet_atomic(table, final)
        return final

    def part_files(self, name: str) -> list[Path]:
        directory = self.parts_dir(name)
        return sorted(directory.glob("*.parquet")) if directory.exists() else []

    def part_glob(self, name: str) -> str:
        return str(self.parts_dir(name) / "*.parquet")

    def refresh_part_views(self) -> None:
        """(Re)create the deduplicating view of every registered part table that has parts."""
        if self.read_only:
            return
        for name, keys, order in self.con.execute("SELECT * FROM _part_tables").fetchall():
            if not self.part_files(name):
                self.con.execute(f'DROP VIEW IF EXISTS "{name}"')
                continue
            key_sql = ", ".join(f'"{k}"' for k in keys)
            self.con.execute(
                f'CREATE OR REPLACE VIEW "{name}" AS SELECT * EXCLUDE (_rank) FROM ('
                f"SELECT *, row_number() OVER (PARTITION BY {key_sql} ORDER BY \"{order}\" DESC) AS _rank "
                f"FROM read_parquet({_sql_str(self.part_glob(name))}, union_by_name = true)) WHERE _rank = 1"
            )

    def compact_parts(self, name: str, keep: Callable[[pa.Table], pa.Table] | None = None) -> int:
        """Rewrite a part table as one deduplicated part (optionally filtered by ``keep``).

        The new part is written before the old ones are removed, so a crash in between only
        leaves duplicates that the view already hides. Returns the row count kept.
        """
        old = self.part_files(name)
        if not old:
            return 0
        self.refresh_part_views()
        merged = query_arrow(self.con, f'SELECT * FROM "{name}"')
        kept = keep(merged) if keep else merged
        if len(old) == 1 and kept.num_rows == merged.num_rows:
            return kept.num_rows
        self.append_part(name, kept, prefix="compact")
        for path in old:
            path.unlink(missing_ok=True)
        self.refresh_part_views()
        return kept.num_rows

    # ------------------------------------------------------------------ queries
    def rows(self, query: str, params: list | None = None) -> list[tuple]:
        """All rows of a query as tuples (fully fetched, so the connection is free afterwards)."""
        return self.con.execute(query, params or []).fetchall()

    def first(self, query: str, params: list | None = None) -> tuple | None:
        rows = self.rows(query, params)
        return rows[0] if rows else None

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run a query against the catalog and return an Arrow table."""
        return query_arrow(self.con, query, params)

    def count(self, name: str) -> int:
        if not self.has_table(name):
            return 0
        return int(self.first(f'SELECT count(*) FROM "{_check_name(name)}"')[0])

    def table_names(self) -> list[str]:
        rows = self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write zstd Parquet to ``path`` so that readers see the whole file or nothing."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
