"""Named SQL files from the project's ``sql/`` folder, runnable against a store's catalog."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

from featurestore.errors import StoreError
from featurestore.store import FeatureStore, query_arrow


def sql_dir() -> Path:
    """The ``sql/`` folder: beside the packages in a checkout, under ``share/`` in a wheel install."""
    for candidate in (Path(__file__).resolve().parent.parent / "sql", Path(sys.prefix) / "share" / "birdclef-stack" / "sql"):
        if candidate.is_dir():
            return candidate
    raise StoreError("cannot find the sql/ folder of birdclef-stack")


def list_sql_files() -> list[str]:
    """Names like ``class_counts`` or ``leakage/duplicate_audio`` of every shipped SQL file."""
    root = sql_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.sql"))


def sql_text(name: str) -> str:
    path = sql_dir() / f"{name.removesuffix('.sql')}.sql"
    if not path.exists():
        raise StoreError(f"no SQL file {name!r}; available: {', '.join(list_sql_files())}")
    return path.read_text()


def run_sql_file(store: FeatureStore, name: str) -> pa.Table:
    """Run a named SQL file (its last statement's result is returned)."""
    statements = [s for s in split_statements(sql_text(name)) if s]
    if not statements:
        raise StoreError(f"SQL file {name!r} has no statement")
    with store.reading():               # a damaged part or catalog is named, as for every other read
        for statement in statements[:-1]:
            store.con.execute(statement)
        return query_arrow(store.con, statements[-1])


def split_statements(text: str) -> list[str]:
    """Split on ``;`` at line ends, dropping comment-only chunks (our SQL files keep one statement a chunk)."""
    chunks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            chunks.append("\n".join(current))
            current = []
    chunks.append("\n".join(current))
    out = []
    for chunk in chunks:
        body = "\n".join(ln for ln in chunk.splitlines() if not ln.strip().startswith("--")).strip().rstrip(";").strip()
        if body:
            out.append(body)
    return out
