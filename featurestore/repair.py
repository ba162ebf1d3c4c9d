"""Mend a feature store after a disk fault (the library behind ``python -m pipelines.repair``).

What lives where, and so what a damaged catalog can cost:

* ``parts/<table>/*.parquet`` - the rows of the part tables (embeddings, classical features, the audio
  inventory, pseudo-labels, ...) - are outside the catalog and are the source of truth: their views are
  re-made from the folders (key columns from the old catalog's ``_part_tables`` when readable, else from
  ``parts/<table>.json``).
* ``heads/``, ``oof/``, ``cnn_cache/`` and ``optuna.db`` are files outside the catalog: never touched.
* Only the catalog holds the snapshot tables (taxonomy, recordings, soundscapes, windows, labels,
  ingest_problems, folds, shadow_folds, replay_windows, birdnet_class_map, pseudo_runs, ...) with their
  version records (``_versions``: parameters such as the fold parameters), the append-only tables
  (``ingest_runs``, ``experiments``) and the other views (``window_labels``, ``oof_predictions``). DuckDB
  checksums every block, so a damaged block usually costs one table: everything still readable is copied
  as it is; what is not is listed with the command that re-creates it (ingest, folds, embed, ...), in the
  order to run them. Fold versions are ids of their inputs and parameters, so re-made folds get the ids
  the heads recorded; head ids likewise.

Guarantees (:func:`repair_store`):

* it runs under the store's writer lock, so no other writer runs meanwhile;
* it deletes nothing: a part that is not whole Parquet moves to ``quarantine/`` (same relative path); a
  catalog DuckDB cannot read in full is kept as ``catalog.duckdb.corrupt-<UTC time>`` (its WAL beside it)
  and the rebuilt catalog, verified by reading every table in full, replaces it in one rename;
* a healthy store is left as it is (it only refreshes the part views), so running it twice is harmless;
* the report (:meth:`RepairReport.render`) says exactly what was moved, copied, re-made and lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.errors import StoreError
from featurestore.folds import REPLAY_TABLE, FoldParams
from featurestore.ingest import SNAPSHOT_TABLES as INGEST_TABLES
from featurestore.store import (
    CATALOG_FILE,
    PARTS_DIR,
    DamagedPart,
    FeatureStore,
    StoreLock,
    _connect,
    content_hash,
    is_catalog_damage,
    part_table_names,
    quarantine_parts,
    query_arrow,
    read_table_file,
    recreate_command,
    sql_str,
    utc_now,
)

_PHYSICAL = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)__(?P<version>[0-9a-f]{12})$")
_SNAPSHOT_VIEW = re.compile(r'^CREATE VIEW "?(?P<name>[a-z][a-z0-9_]*)"? AS SELECT \* FROM "?(?P<physical>[a-z0-9_]+)"?;?$')
_FOLD_TABLES = ("folds", "shadow_folds", REPLAY_TABLE)
_VERSION_COLUMNS = ("fold_version", "replay_version")      # the version id a fold table's rows carry
_STAGES = ("ingest", "folds", "embed", "pseudo", "train", "other")


@dataclass(frozen=True)
class Lost:
    """Catalog content that could not be read, and the command that re-creates it (or, when no one command
    does, ``how``)."""

    what: str
    command: str | None
    stage: str = "other"      # one of _STAGES: the order to run the commands in
    how: str = ""

    def line(self) -> str:
        if self.command is None:
            return f"{self.what}: {self.how}"
        return f"{self.what}: re-made by {self.command}{f' ({self.how})' if self.how else ''}"


@dataclass
class RepairReport:
    store: Path
    quarantined: list[tuple[DamagedPart, Path, str]] = field(default_factory=list)   # part, new place, command
    catalog_problem: str | None = None      # None: the catalog read in full
    kept_as: Path | None = None             # the damaged catalog, kept
    copied: list[str] = field(default_factory=list)
    part_views: list[str] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def commands(self) -> list[str]:
        """The commands that re-create what was lost or quarantined, once each, in stage order."""
        todo = [(lost.stage, lost.command) for lost in self.lost if lost.command]
        todo += [(_stage_of_command(cmd), cmd) for _, _, cmd in self.quarantined]
        ordered = sorted(dict.fromkeys(todo), key=lambda sc: _STAGES.index(sc[0]))
        return list(dict.fromkeys(cmd for _, cmd in ordered))

    def render(self) -> str:
        lines = [f"repair: store {self.store}"]
        if self.quarantined:
            lines.append(f"  {len(self.quarantined)} damaged part(s) moved to quarantine/:")
            lines += [f"    {part.path.relative_to(self.store)} ({part.reason})" for part, _, _ in self.quarantined]
        else:
            lines.append("  parts: every part is whole Parquet")
        if self.catalog_problem is None:
            lines.append(f"  catalog: {CATALOG_FILE} reads in full; nothing to rebuild")
        else:
            lines.append(f"  catalog: damaged ({self.catalog_problem}); rebuilt, the damaged file kept as "
                         f"{self.kept_as.name}" if self.kept_as else f"  catalog: {CATALOG_FILE} was missing; rebuilt")
            lines.append(f"    copied as they were: {', '.join(self.copied) or 'nothing'}")
            lines.append(f"    part-table views re-made from parts/: {', '.join(self.part_views) or 'none'}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.lost:
            lines.append("  lost (not readable from the damaged catalog):")
            lines += [f"    {lost.line()}" for lost in self.lost]
        elif self.catalog_problem is not None:
            lines.append("  nothing was lost")
        commands = self.commands()
        if commands:
            lines.append("  to finish, run in this order:")
            lines += [f"    {c}" for c in commands]
        return "\n".join(lines)


def check_catalog(catalog: str | os.PathLike) -> str | None:
    """None when DuckDB opens ``catalog`` and reads every table of it in full; else DuckDB's words for the
    damage. Any other failure (another process holds the catalog, no permission) raises :class:`StoreError`:
    that is no reason to rebuild it."""
    catalog = Path(catalog)
    if not catalog.exists():
        return f"{catalog.name} is missing"
    try:
        with duckdb.connect(str(catalog), read_only=True) as con:
            tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                 "WHERE database_name = current_database()").fetchall()
            for schema, table in tables:
                query_arrow(con, f'SELECT * FROM "{schema}"."{table}"')
    except duckdb.Error as exc:
        if is_catalog_damage(exc):
            return _one_line(exc)
        raise StoreError(f"cannot check {catalog}: {_one_line(exc)}; nothing was changed") from exc
    return None


def repair_store(store_dir: str | os.PathLike) -> RepairReport:
    """Move damaged parts to quarantine/ and rebuild a catalog DuckDB cannot read; see the module docstring."""
    root = Path(store_dir).expanduser().resolve()
    catalog = root / CATALOG_FILE
    if not catalog.exists() and not (root / PARTS_DIR).is_dir():
        raise StoreError(f"no feature store at {root} (neither {CATALOG_FILE} nor {PARTS_DIR}/); "
                         "nothing to repair - run pipelines.ingest to make one")
    lock = StoreLock(root).acquire()
    try:
        report = RepairReport(root)
        moved = quarantine_parts(root)
        report.catalog_problem = check_catalog(catalog)
        data_dir = _rebuild(root, report) if report.catalog_problem is not None else None
        with FeatureStore.open(root, create=False) as store:   # opens read-write; views follow the parts
            if data_dir is None and store.has_table("ingest_runs"):
                row = store.first("SELECT data_dir FROM ingest_runs ORDER BY run_at DESC LIMIT 1")
                data_dir = row[0] if row else None
        report.quarantined = [(part, target, _recreate(root, part.table, data_dir)) for part, target in moved]
        return report
    finally:
        lock.release()


# ---------------------------------------------------------------------------- the rebuild
def _rebuild(root: Path, report: RepairReport) -> str | None:
    """Rebuild the catalog (see the module docstring); the audio folder of the last ingest run, if known."""
    catalog = root / CATALOG_FILE
    tmp = root / f".{CATALOG_FILE}.repair-{uuid.uuid4().hex[:8]}"
    try:
        con = _connect(tmp, read_only=False)
        try:
            store = FeatureStore(root, con, read_only=False)     # file_search_path: the store folder
            old = _salvage(store, catalog, report)
            store._init_meta()
            _reconcile_versions(store, old, report)
            _register_part_tables(store, old, report)
            store.refresh_part_views()
            report.part_views = [n for n in part_table_names(root) if store.has_table(n)]
            _replay_views(store, old, report)
            _report_lost_tables(store, old, report)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        problem = check_catalog(tmp)
        if problem is not None:
            raise StoreError(f"the rebuilt catalog {tmp} does not read back ({problem}); {catalog} is unchanged")
        report.kept_as = _keep_damaged(catalog)
        os.replace(tmp, catalog)
        return old.data_dir
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)


@dataclass
class _Old:
    """What the damaged catalog still told: readable tables, view definitions, lost table names."""

    attached: bool = False
    tables: list[str] = field(default_factory=list)
    lost_tables: list[str] = field(default_factory=list)
    views: dict[str, str] = field(default_factory=dict)          # name -> CREATE VIEW sql
    part_keys: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    fold_params: dict | None = None
    data_dir: str | None = None
    versions_lost: bool = False


def _salvage(store: FeatureStore, catalog: Path, report: RepairReport) -> _Old:
    """Copy every table of the damaged catalog that DuckDB reads in full (same DDL, same rows)."""
    old = _Old()
    con = store.con
    if not catalog.exists():
        return old
    try:
        con.execute(f"ATTACH {sql_str(str(catalog))} AS damaged (READ_ONLY)")
        old.attached = True
        tables = con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE database_name = 'damaged' "
                             "AND schema_name = 'main' ORDER BY table_name").fetchall()
        views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE database_name = 'damaged' "
                            "AND schema_name = 'main' AND NOT internal ORDER BY view_name").fetchall()
    except duckdb.Error as exc:
        report.notes.append(f"the catalog's list of tables and views is unreadable ({_one_line(exc)}): "
                            "nothing could be copied")
        if old.attached:
            con.execute("DETACH damaged")
        old.attached = False
        return old
    old.views = dict(views)
    for name, ddl in tables:
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(ddl)
            con.execute(f'INSERT INTO "{name}" SELECT * FROM damaged.main."{name}"')
            con.execute("COMMIT")
            old.tables.append(name)
        except duckdb.Error:
            con.execute("ROLLBACK")
            old.lost_tables.append(name)
    report.copied = [t for t in old.tables if not t.startswith("_")]
    con.execute("DETACH damaged")
    if "_part_tables" in old.tables:
        old.part_keys = {n: (list(k), o) for n, k, o in store.rows("SELECT * FROM _part_tables")}
    if "_versions" in old.tables:
        for params, in store.rows("SELECT params FROM _versions WHERE table_name = 'folds' AND is_current"):
            old.fold_params = json.loads(params or "{}").get("fold_params")
    if "ingest_runs" in old.tables:
        row = store.first("SELECT data_dir FROM ingest_runs ORDER BY run_at DESC LIMIT 1")
        old.data_dir = row[0] if row else None
    return old


def _reconcile_versions(store: FeatureStore, old: _Old, report: RepairReport) -> None:
    """Make ``_versions`` match the copied ``<name>__<version>`` tables and point each view at its current one."""
    physical = {t: _PHYSICAL.match(t) for t in old.tables}
    physical = {t: (m["name"], m["version"]) for t, m in physical.items() if m}
    if "_versions" in old.tables:
        for name, version, current in store.rows("SELECT table_name, version, is_current FROM _versions"):
            if f"{name}__{version}" in physical:
                continue
            store.con.execute("DELETE FROM _versions WHERE table_name = ? AND version = ?", [name, version])
            what = f"table {name}" if current else f"table {name}, stored older version {version}"
            report.lost.append(_lost_table(store.root, name, what, old))
        known = {(n, v) for n, v in store.rows("SELECT table_name, version FROM _versions")}
    else:
        old.versions_lost = bool(old.attached)
        known = set()
    missing = [(t, n, v) for t, (n, v) in sorted(physical.items()) if (n, v) not in known]
    if missing and old.attached:
        current = {m["name"]: m["physical"] for sql in old.views.values() if (m := _SNAPSHOT_VIEW.match(sql.strip()))}
        for table, name, version in missing:
            data = store.sql(f'SELECT * FROM "{table}"')
            params = {"recovered_by": "pipelines.repair"}
            for column in _VERSION_COLUMNS:
                if column in data.column_names and len(set(data.column(column).to_pylist())) == 1:
                    params["version"] = data.column(column)[0].as_py()
            is_current = current.get(name) == table if name in current else \
                sum(n == name for n, _ in physical.values()) == 1
            store.con.execute("INSERT INTO _versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [name, version, content_hash(data), data.num_rows, utc_now(),
                               json.dumps(params, sort_keys=True), is_current])
        report.notes.append(f"table versions (_versions) rebuilt from {len(missing)} stored table(s): their "
                            "creation times and parameters are gone (fold tables keep their version id)")
    for name, version in store.rows("SELECT table_name, version FROM _versions WHERE is_current ORDER BY 1"):
        store.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{name}__{version}"')


def _register_part_tables(store: FeatureStore, old: _Old, report: RepairReport) -> None:
    """Key every folder under parts/ (the old catalog's record, else parts/<name>.json); a folder with parts
    whose key is recorded nowhere (a store written before parts/<name>.json) waits for the job that writes it."""
    unkeyed: dict[str, list[str]] = {}
    for name in part_table_names(store.root):
        keys = old.part_keys.get(name)
        if keys is None:
            spec = read_table_file(store.root, name) or {}
            if spec.get("key_columns"):
                keys = (list(spec["key_columns"]), spec.get("order_column") or "written_at")
        if keys is not None:
            store.con.execute("INSERT OR REPLACE INTO _part_tables VALUES (?, ?, ?)", [name, keys[0], keys[1]])
        elif store.part_files(name):
            unkeyed.setdefault(_stage_of(name), []).append(name)
    for stage, names in unkeyed.items():
        views = ", ".join(names)
        command = _recreate(store.root, names[0], old.data_dir) if stage != "embed" else _embed_command(store.root)
        report.lost.append(Lost(f"the view(s) {views} over parts/ (their keys were recorded only in the catalog; "
                                "every row is still in parts/)", command, stage,
                                "it registers them again; nothing is embedded twice" if stage == "embed" else ""))


def _replay_views(store: FeatureStore, old: _Old, report: RepairReport) -> None:
    """Re-create the other views of the damaged catalog (window_labels, oof_predictions, your own)."""
    parts = set(part_table_names(store.root)) | set(old.part_keys)
    for name, sql in sorted(old.views.items()):
        if name in parts or _SNAPSHOT_VIEW.match(sql.strip()):
            continue                      # re-made from parts/ and _versions above
        try:
            store.con.execute(sql)
            report.copied.append(f"view {name}")
        except duckdb.Error:
            report.lost.append(_lost_table(store.root, name, f"view {name}", old))
    if not old.attached:
        report.lost.append(Lost("the other views (window_labels, oof_predictions, your own)", None, "other",
                                "window_labels is re-made by pipelines.ingest, oof_predictions by the next "
                                "pipelines.train; re-create your own"))


def _report_lost_tables(store: FeatureStore, old: _Old, report: RepairReport) -> None:
    """Tables of the damaged catalog that are neither copied nor versioned snapshots (reported above)."""
    for name in old.lost_tables:
        if _PHYSICAL.match(name) and not old.versions_lost and "_versions" in old.tables:
            continue                      # reported through _versions
        if name == "_versions":
            continue                      # rebuilt from the tables
        if name == "_part_tables":
            report.notes.append("part-table keys (_part_tables) re-read from parts/*.json")
            continue
        match = _PHYSICAL.match(name)
        table = match["name"] if match else name
        report.lost.append(_lost_table(store.root, table, f"table {name}", old))
    if not old.attached:              # the catalog's table list is gone: what the store's other files imply
        held = [("every snapshot table (taxonomy, recordings, soundscapes, windows, soundscape_labels, "
                 "ingest_problems) and ingest_runs", "windows", True),
                ("folds, shadow_folds, replay_windows", "folds", True),
                ("birdnet_class_map", "birdnet_class_map", bool(store.part_files("birdnet_frames"))),
                ("pseudo_runs", "pseudo_runs", bool(store.part_files("pseudo_labels"))),
                ("experiments", "experiments", bool(_head_ids(store.root)))]
        report.lost += [_lost_table(store.root, name, what, old) for what, name, was_there in held if was_there]


def _lost_table(root: Path, name: str, what: str, old: _Old) -> Lost:
    """What was lost of table or view ``name``, with the command (and stage) that re-creates it."""
    if name in INGEST_TABLES or name in ("ingest_runs", "window_labels"):
        data = old.data_dir or "DATA_DIR"
        how = "" if old.data_dir else "DATA_DIR: the competition folder ingested before"
        return Lost(what, f"python -m pipelines.ingest --data {data} --store {root}", "ingest", how)
    if name in _FOLD_TABLES:
        how = "" if old.fold_params is not None else \
            "add the options the folds were made with, if not the defaults: the fold version must match the heads'"
        return Lost(what, folds_command(root, old.fold_params), "folds", how)
    if name == "birdnet_class_map":
        command = _embed_command(root)
        birdnet = "birdnet" in command.rsplit("--extractor ", 1)[-1].split(",")
        return Lost(what, command if birdnet else f"python -m pipelines.embed --store {root} --extractor birdnet",
                    "embed")
    if name == "pseudo_runs":
        return Lost(what, None, "pseudo", f"re-run python -m pipelines.pseudo --store {root} --teacher ID with the "
                                          "options of each pseudo-label version (teachers: the teacher_id column "
                                          "of parts/pseudo_labels/)")
    if name in ("experiments", "oof_predictions"):
        heads = _head_ids(root)
        return Lost(f"{what} (the rows of {len(heads)} head(s): {', '.join(heads) or 'none'})"
                    if name == "experiments" else what, None, "train",
                    "re-run the pipelines.train / stack / tune command of each head (its settings are in "
                    "heads/<id>/config.json, which is intact; the same settings give the same head id)")
    return Lost(what, None, "other", f"re-run the job that wrote {name}")


def folds_command(root: Path, fold_params: dict | None) -> str:
    """``python -m pipelines.folds`` with the options that made folds with ``fold_params`` (None: unknown)."""
    command = f"python -m pipelines.folds --store {root}"
    if fold_params is None:
        return command
    defaults = asdict(FoldParams())
    for name, value in sorted(fold_params.items()):
        if name not in defaults or value == defaults[name]:
            continue
        if name == "merge_duplicates":
            command += " --no-merge-duplicates"
        else:
            command += f" --{name.replace('_', '-')} {value}"
    return command


def _recreate(root: Path, table: str, data_dir: str | None) -> str:
    """The command that re-creates a part table's rows: its parts/<name>.json's, else by the stage that writes it
    (``data_dir``: the audio folder of the last ingest run, if known)."""
    recorded = recreate_command(root, table)
    if recorded:
        return recorded
    if table == "audio_inventory":
        return f"python -m pipelines.ingest --data {data_dir or 'DATA_DIR'} --store {root}"
    if table == "pseudo_labels":
        return f"python -m pipelines.pseudo --store {root} --teacher ID"
    return _embed_command(root)


def _embed_command(root: Path) -> str:
    """``pipelines.embed`` with the (model-free) extractors the store already holds: it registers every embed
    table and embeds only what is missing."""
    names: set[str] = set()
    for path in sorted((root / PARTS_DIR / "extractor_versions").glob("*.parquet")):
        with contextlib.suppress(OSError, pa.ArrowException, KeyError):
            names |= set(pq.read_table(path, columns=["extractor"]).column("extractor").to_pylist())
    plain = sorted(n for n in names if n and ":" not in n and n not in ("custom", "cnn")) or ["birdnet"]
    return f"python -m pipelines.embed --store {root} --extractor {','.join(plain)}"


def _stage_of(table: str) -> str:
    return {"audio_inventory": "ingest", "pseudo_labels": "pseudo"}.get(table, "embed")


def _stage_of_command(command: str) -> str:
    for stage in _STAGES:
        if f"pipelines.{stage} " in command:
            return stage
    return "other"


def _head_ids(root: Path) -> list[str]:
    heads = root / "heads"
    return sorted(p.name for p in heads.iterdir() if (p / "config.json").is_file()) if heads.is_dir() else []


def _keep_damaged(catalog: Path) -> Path | None:
    """Keep the damaged catalog (and its WAL) as ``catalog.duckdb.corrupt-<UTC time>``: a hard link (or a
    copy), so the rebuilt catalog can then replace ``catalog.duckdb`` in one rename."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = catalog.with_name(f"{catalog.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        kept = catalog.with_name(f"{catalog.name}.corrupt-{stamp}.{n}")
        n += 1
    if catalog.exists():
        try:
            os.link(catalog, kept)
        except OSError:
            shutil.copy2(catalog, kept)
    wal = Path(f"{catalog}.wal")
    if wal.exists():                      # never replayed into the rebuilt catalog
        os.rename(wal, Path(f"{kept}.wal"))
    return kept if catalog.exists() else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
