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

Stages talk only through this store. Guarantees:

* **Relocatable.** Part views name their files relative to the store folder
  (``parts/<name>/*.parquet``) and every connection the store opens sets DuckDB's
  ``file_search_path`` to its own folder, so a copied, moved or read-only (``chmod -R a-w``,
  a Kaggle dataset) store reads its own parts, never another copy's, whatever the working
  directory. Relative *globs* in your own SQL therefore resolve against the store folder too,
  and other views over store files name them with :meth:`FeatureStore.view_glob`. A part view that is missing or out of date (a store written by an older version, a first
  embed killed before it made its view) is shadowed by a TEMP view in a read-only connection
  and rewritten by the next read-write open.
* **Readable by the DuckDB 1.x CLI.** A new catalog is written in storage format
  :data:`STORAGE_VERSION` (the oldest DuckDB this project supports), so ``cd STORE && duckdb
  catalog.duckdb < query.sql`` works with the ``duckdb-cli`` package (from elsewhere:
  ``duckdb -cmd "SET file_search_path='STORE'" STORE/catalog.duckdb``), as does ``python -m
  pipelines.sql --store STORE query.sql`` anywhere. A catalog an older version of this module
  wrote in DuckDB 2's format is converted (verified, then swapped in atomically) by its next
  read-write open.
* **One writer at a time.** Every read-write open takes ``writer.lock`` in the store (an
  OS-level lock on the file, which records pid, host, command and start time). A second writer
  fails at once with a :class:`StoreError` naming the holder (or waits ``wait_s`` seconds,
  saying so on stderr); the lock is released on close, at normal exit and by the OS when the
  process dies, so a ``kill -9`` leaves a stale record that the next open takes over with a
  warning. A ``writer.lock`` deleted while its writer runs does not let a second writer in (DuckDB's
  own lock on the catalog refuses it) nor hide the first: the error names the process DuckDB says
  holds the catalog, and says its lock file was deleted. Read-only opens take no lock and write
  nothing. Worker processes (embed, ingest) write Parquet parts without opening the catalog, so
  shards and workers still fill one store.
* **Readers wait seconds, never a job's length.** DuckDB lets no other process open a catalog that
  one process has open read-write (read-only included), so a long job keeps ``writer.lock`` for its
  whole run but has the catalog open only while it reads its inputs and records its results
  (:meth:`FeatureStore.release_catalog` before the long work; the next use of the store re-opens it,
  waiting for readers that have it open, up to :data:`REOPEN_WAIT_SECONDS`): training releases it
  while its folds train, a pseudo-label teacher while it predicts; tuning and stacking open the store
  read-write only to plan and to record; an embed closes the store (lock included, so other shards
  register their parts) while its workers run. A read-only open meanwhile waits up to
  :data:`READ_WAIT_SECONDS` by default (said on stderr, naming the writer) instead of failing at once.
* **Opening writes nothing when nothing changed**: views are rewritten only when their
  definition differs and an unchanged snapshot table or part-table key is not re-written, so a
  store on a full disk still opens and reads.
* **Disk full is one error.** ENOSPC while writing a part or a table becomes a
  :class:`DiskFullError` (a :class:`StoreError`) naming the file and the folder to free;
  finished parts are kept and a re-run resumes.
* **A damaged part is named, never read around.** A read (:meth:`FeatureStore.rows`,
  :meth:`~FeatureStore.sql`, ...) that DuckDB fails on a part which is not whole Parquet
  (:func:`parquet_damage`: truncated, overwritten, unreadable footer) raises one
  :class:`StoreError` naming the part and the command that re-creates its rows. Readers move
  nothing; the job that writes a table (embed for its tables) or ``python -m pipelines.repair``
  moves damaged parts to ``quarantine/`` inside the store, under the writer lock, keeping their
  relative path (:meth:`FeatureStore.quarantine_parts`; never deleted), and the writer re-creates
  their rows.
* **Part tables describe themselves.** :meth:`FeatureStore.register_part_table` also writes
  ``parts/<name>.json`` beside its folder (key columns, order column, the command that re-creates
  the rows), so a part table's view can be rebuilt without the catalog.
* **A damaged catalog is one error** naming ``catalog.duckdb`` and ``python -m pipelines.repair``,
  which rebuilds it from what is readable plus the parts (:mod:`featurestore.repair`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.errors import DiskFullError, StoreBusyError, StoreError
from featurestore.files import pid_alive

CATALOG_FILE = "catalog.duckdb"
PARTS_DIR = "parts"
QUARANTINE_DIR = "quarantine"   # damaged parts, moved here with their relative path (never deleted)
REPAIR_COMMAND = "python -m pipelines.repair --store {store}"
LOCK_FILE = "writer.lock"
READ_WAIT_SECONDS = 60.0         # a reader's default wait for a writer that has the catalog open for a moment
REOPEN_WAIT_SECONDS = 1800.0     # a writer re-opening its released catalog waits this long for readers to finish
STORAGE_VERSION = "v1.1.0"  # DuckDB storage format of new catalogs: pyproject's oldest duckdb (>=1.1) reads it
VOLATILE_COLUMNS = frozenset({"ingested_at", "written_at", "created_at"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VIEW_TAG = "birdclef-stack part view "
PART_FILE_COLUMN = "_part_file"  # part views: each row's file (read_parquet's filename option), for the tie rule


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


def sql_str(value: str) -> str:
    """``value`` as an SQL string literal (quotes doubled): for paths and globs DuckDB takes only as literals."""
    return "'" + value.replace("'", "''") + "'"


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT, whether raised by the OS, pyarrow or DuckDB."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left on device" in text or "disk quota exceeded" in text or "[errno 28]" in text


# ---------------------------------------------------------------------------- the writer lock
@dataclass
class _Held:
    pid: int
    fd: int
    count: int


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()
_LOCK_RECORD_BYTES = 1024


def _command_line() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        words = ["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    else:
        words = ["python", *sys.argv]
    return shlex.join(words)[:400]


def _read_record(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 8192, 0).decode("utf-8", "replace").strip()
        record = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(fd: int, record: dict) -> None:
    """Overwrite the record in place at a fixed size, so a full disk needs no new block for it."""
    data = json.dumps(record).encode()[: _LOCK_RECORD_BYTES - 1]
    os.pwrite(fd, data.ljust(_LOCK_RECORD_BYTES - 1) + b"\n", 0)
    os.ftruncate(fd, _LOCK_RECORD_BYTES)


def describe_holder(record: dict | None) -> str:
    if not record:
        return "another process (it has not recorded itself yet)"
    waiting = f" (not writing yet: {record['waiting_for']})" if record.get("waiting_for") else ""
    return (f"pid {record.get('pid')} on host {record.get('host')} ({record.get('command', '?')}) "
            f"since {record.get('started_at', '?')}{waiting}")


_DUCKDB_HOLDER_RE = re.compile(r"\(PID (\d+)\)")   # DuckDB names the process holding a catalog's file lock


def _process_command(pid: int) -> str:
    """A local process's command line (from ``/proc``; ``?`` where unreadable), the interpreter shortened."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").rstrip("\0").split("\0")
    except OSError:
        return "?"
    if words and Path(words[0]).name.startswith("python"):
        words[0] = "python"
    return shlex.join(words)[:400] if words != [""] else "?"


def _removed_lock_record(pid: int, lock_path: Path) -> dict | None:
    """The record of a deleted ``lock_path`` that local process ``pid`` still has open (``{}`` if it cannot be
    read); None when it has none open or ``/proc`` does not say (another user's process, not Linux)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for name in names:
        link = f"/proc/{pid}/fd/{name}"
        try:
            if os.readlink(link) != f"{lock_path} (deleted)":
                continue
            fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            return _read_record(fd) or {}
        finally:
            os.close(fd)
    return None


def catalog_holder(root: Path, duckdb_message: str) -> str:
    """Who has ``root``'s catalog open, for the error when DuckDB refuses to open it (never this process).

    The writer ``writer.lock`` names, when that is the process DuckDB names. Otherwise (the lock file
    was deleted while a writer ran, so a later open made a new one; or a program opened the catalog
    without the lock) the process DuckDB names, with the record of its deleted lock file if it
    still has one open.
    """
    lock = StoreLock(root)
    record = lock.holder()
    match = _DUCKDB_HOLDER_RE.search(duckdb_message)
    pid = int(match.group(1)) if match else None
    host = socket.gethostname()
    mine = bool(record) and record.get("pid") == os.getpid() and record.get("host") == host
    if record and record.get("state") == "held" and not mine and (pid is None or record.get("pid") == pid):
        return f"it is being written by {describe_holder(record)}"
    if pid is None or pid == os.getpid():
        return "another process has the catalog open"
    removed = _removed_lock_record(pid, lock.path)
    if removed is not None:
        who = describe_holder(removed) if removed.get("pid") == pid else f"pid {pid} on host {host} " \
            f"({_process_command(pid)})"
        return (f"it is being written by {who}, whose {lock.path} was deleted while it ran (never delete "
                "that file: the OS releases it when the writer exits)")
    return (f"it is open in pid {pid} on host {host} ({_process_command(pid)}), which does not hold {lock.path} "
            "(that file was deleted or replaced while it ran, or it opened the catalog without the store)")


class StoreLock:
    """The exclusive writer lock of a store folder: ``<root>/writer.lock``.

    An OS lock (``flock``) on the open file decides who holds it, so a dead process never blocks
    anyone; the file's JSON record (pid, host, command, started_at) names the holder in errors.
    Re-entrant within one process (nested read-write opens share it); the descriptor is
    close-on-exec, so spawned workers do not hold it. On a filesystem without OS locks the record
    alone decides: a holder whose pid is gone on this host is stale.
    """

    def __init__(self, root: str | os.PathLike, name: str = LOCK_FILE):
        self.root = Path(root)
        self.path = self.root / name
        self._key = str(self.path)
        self._holding = False

    def holder(self) -> dict | None:
        """The current record (``state`` is ``held`` or ``released``), or None."""
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None and held.pid == os.getpid():
                return _read_record(held.fd)
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                return _read_record(fd)
            finally:
                os.close(fd)

    def acquire(self, wait_s: float = 0.0) -> StoreLock:
        """Take the lock, waiting up to ``wait_s`` seconds (announced on stderr) for another writer."""
        deadline = time.monotonic() + max(0.0, wait_s)
        announced = False
        while True:
            busy = self._try_acquire()
            if busy is None:
                self._holding = True
                return self
            if time.monotonic() >= deadline:
                raise StoreBusyError(self._busy_message(busy))
            if not announced:
                print(f"waiting up to {wait_s:.0f} s for {describe_holder(busy)} to finish writing store "
                      f"{self.root}", file=sys.stderr, flush=True)
                announced = True
            time.sleep(0.5)

    def _busy_message(self, record: dict | None) -> str:
        return (f"store {self.root} is being written by {describe_holder(record)}; wait for it to finish "
                "or stop that process, then re-run (the OS releases its lock when it exits, even after kill -9: "
                f"never delete {self.path}, that only hides the writer)")

    def _try_acquire(self) -> dict | None:
        """None when taken; otherwise the holder's record (or {} when it has not written one yet)."""
        pid = os.getpid()
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None and held.pid == pid:
                held.count += 1
                return None
            if held is not None:  # inherited through fork: the parent is the writer, not this process
                del _HELD[self._key]
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise StoreError(f"store {self.root} is not writable ({exc.strerror}); open it read-only "
                                     "(readers need no lock) or copy it somewhere writable") from exc
                if is_disk_full(exc):
                    raise DiskFullError(self.path) from exc
                raise
            advisory = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                    record = _read_record(fd)
                    os.close(fd)
                    return record if record and record.get("state") == "held" else {}
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                advisory = True
            previous = _read_record(fd)
            host = socket.gethostname()
            if previous and previous.get("state") == "held":
                same_host = previous.get("host") == host
                alive = pid_alive(int(previous.get("pid", 0) or 0)) if same_host else True
                if advisory and alive:
                    os.close(fd)
                    return previous
                why = "that process is gone" if same_host and not alive else "it no longer holds the lock"
                print(f"warning: taking over the writer lock of store {self.root} from "
                      f"{describe_holder(previous)}: {why}", file=sys.stderr, flush=True)
            record = {"state": "held", "pid": pid, "host": host, "command": _command_line(),
                      "started_at": datetime.now().astimezone().isoformat(timespec="seconds")}
            try:
                _write_record(fd, record)
            except OSError as exc:  # a full disk: hold the OS lock without the record
                if not is_disk_full(exc):
                    os.close(fd)
                    raise
            _HELD[self._key] = _Held(pid, fd, 1)
            return None

    def note(self, **fields: str | None) -> None:
        """Set (``None``: drop) fields of the record while this process holds the lock; else nothing."""
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is None or held.pid != os.getpid():
                return
            record = _read_record(held.fd) or {}
            for key, value in fields.items():
                if value is None:
                    record.pop(key, None)
                else:
                    record[key] = value
            with contextlib.suppress(OSError):
                _write_record(held.fd, record)

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        _release(self._key)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _release(key: str, force: bool = False) -> None:
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():
            return
        held.count = 0 if force else held.count - 1
        if held.count > 0:
            return
        del _HELD[key]
        record = _read_record(held.fd) or {}
        record.update(state="released", released_at=datetime.now().astimezone().isoformat(timespec="seconds"))
        with contextlib.suppress(OSError):
            _write_record(held.fd, record)
        os.close(held.fd)


@atexit.register
def _release_all_at_exit() -> None:
    for key in list(_HELD):
        _release(key, force=True)


# ---------------------------------------------------------------------------- the store
def _writer_has_it(root: Path, duckdb_message: str) -> bool:
    """True when the process DuckDB says has the catalog open holds ``writer.lock``: a store job, which has
    the catalog open only for moments; not a program that opened it without the store."""
    record = StoreLock(root).holder()
    match = _DUCKDB_HOLDER_RE.search(duckdb_message)
    return bool(record) and record.get("state") == "held" and (match is None or
                                                               record.get("pid") == int(match.group(1)))


def _reader_of(duckdb_message: str) -> str:
    """Who has the catalog open while this process, the writer, waits to take it back: a reader."""
    match = _DUCKDB_HOLDER_RE.search(duckdb_message)
    if match is None or int(match.group(1)) == os.getpid():
        return "another process has it open (a reader)"
    pid = int(match.group(1))
    return f"it is open in pid {pid} on host {socket.gethostname()} ({_process_command(pid)})"


def _connect(catalog: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the catalog; new catalogs are written in :data:`STORAGE_VERSION` when DuckDB knows the option."""
    try:
        return duckdb.connect(str(catalog), read_only=read_only,
                              config={"storage_compatibility_version": STORAGE_VERSION})
    except duckdb.Error as exc:
        if "storage_compatibility_version" not in str(exc):
            raise
    return duckdb.connect(str(catalog), read_only=read_only)  # DuckDB < 1.2 writes an old format anyway


def _storage_major(con: duckdb.DuckDBPyConnection) -> int | None:
    """Major DuckDB storage version of the connection's catalog (``v2.0.0+`` -> 2); None if unknown."""
    try:
        row = con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                          "WHERE database_name = current_database()").fetchone()
    except duckdb.Error:
        return None
    value = row[0] if row else None
    value = value[0] if isinstance(value, list) else value  # DuckDB 1.x returns a list for a map lookup
    match = re.match(r"v(\d+)\.", value or "")
    return int(match.group(1)) if match else None


def _needs_conversion(con: duckdb.DuckDBPyConnection) -> bool:
    major = _storage_major(con)
    return major is not None and major > int(STORAGE_VERSION[1:].split(".")[0])


def convert_catalog(root: Path) -> bool:
    """Rewrite ``root``'s catalog in :data:`STORAGE_VERSION` (DuckDB 1.x can then read it).

    Called by a read-write open (holding the writer lock) on a catalog written in DuckDB 2's
    format. The copy is verified table by table before it atomically replaces the catalog; on
    any failure the catalog is left as it was, with a warning. Returns True if converted.
    """
    catalog = root / CATALOG_FILE
    tmp = root / f".{CATALOG_FILE}.convert-{uuid.uuid4().hex[:8]}"
    try:
        with duckdb.connect(str(catalog)) as con:  # fold a leftover WAL into the file first
            con.execute("CHECKPOINT")
        if Path(f"{catalog}.wal").exists():
            raise StoreError(f"{catalog}.wal is still there after a checkpoint")
        with duckdb.connect() as con:
            con.execute(f"ATTACH {sql_str(str(catalog))} AS old (READ_ONLY)")
            con.execute(f"ATTACH {sql_str(str(tmp))} AS new (STORAGE_VERSION {sql_str(STORAGE_VERSION)})")
            con.execute("COPY FROM DATABASE old TO new")
            tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                 "WHERE database_name = 'old'").fetchall()
            for schema, table in tables:
                ref = f'"{schema}"."{table}"'
                a = con.execute(f"SELECT count(*) FROM old.{ref}").fetchone()
                b = con.execute(f"SELECT count(*) FROM new.{ref}").fetchone()
                if a != b:
                    raise StoreError(f"copy of table {table} has {b[0]} rows, not {a[0]}")
            con.execute("DETACH new")
            con.execute("DETACH old")
        os.replace(tmp, catalog)
    except (duckdb.Error, OSError, StoreError) as exc:
        print(f"warning: kept {catalog} in DuckDB 2's storage format (DuckDB 1.x and its CLI cannot read it; "
              f"use python -m pipelines.sql): converting it failed: {' '.join(str(exc).split())[:300]}",
              file=sys.stderr, flush=True)
        return False
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    print(f"converted {catalog} to DuckDB storage {STORAGE_VERSION} so DuckDB 1.x (its CLI, a Kaggle image) "
          "can read it", file=sys.stderr, flush=True)
    return True


class FeatureStore:
    """Handle on a feature-store directory. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path, con: duckdb.DuckDBPyConnection, read_only: bool,
                 lock: StoreLock | None = None):
        self.root = root
        self.read_only = read_only
        self._lock = lock
        self._absolute_views = "," in str(root)  # file_search_path is comma-separated
        self._closed = False
        self._con: duckdb.DuckDBPyConnection | None = None
        self._attach(con)

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Use ``con`` as the catalog connection, with the settings every connection of the store gets."""
        if not self._absolute_views:
            con.execute(f"SET file_search_path = {sql_str(str(self.root))}")
        self._con = con

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The catalog connection, re-opened on first use after :meth:`release_catalog`."""
        if self._con is None:
            self._reopen()
        return self._con

    def release_catalog(self) -> None:
        """Close the catalog connection until the store is next used; a writer keeps ``writer.lock``.

        DuckDB lets no other process open a catalog that one process has open read-write (read-only
        included), so a long job calls this before its long work (training, predicting, embedding)
        and readers (``pipelines.sql``, the leaderboard) get in meanwhile. The next use of the store
        (:attr:`con`, :meth:`rows`, :meth:`sql`, a write) re-opens it, waiting (said on stderr) up to
        :data:`REOPEN_WAIT_SECONDS` for readers that have it open. Not inside :meth:`transaction`.
        """
        con, self._con = self._con, None
        if con is None:
            return
        try:
            con.close()
        except duckdb.Error as exc:
            if not is_disk_full(exc):
                raise

    def _reopen(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.root} is closed; open it again")
        wait = READ_WAIT_SECONDS if self.read_only else REOPEN_WAIT_SECONDS
        con = self._connect_waiting(self.root, self.root / CATALOG_FILE, self.read_only, time.monotonic() + wait,
                                    reopening=True)
        self._attach(con)
        if self.read_only or self._absolute_views:   # TEMP part views went with the closed connection
            self.refresh_part_views()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = True, read_only: bool = False,
             wait_s: float | None = None) -> FeatureStore:
        """Open (and by default create) the store at ``path``.

        A read-write open takes the store's writer lock; if another process holds it, raise at
        once naming that process, or with ``wait_s`` > 0 wait that long for it (said on stderr).
        A read-only open takes no lock; when another process has the catalog open it waits (said on
        stderr, naming it) up to ``wait_s``. By default it waits up to :data:`READ_WAIT_SECONDS` for
        a store writer (long jobs have the catalog open only for moments: :meth:`release_catalog`) and
        fails at once for a program that opened the catalog without the store (nothing says when that
        one lets go).
        """
        writers_only = wait_s is None and read_only
        if wait_s is None:
            wait_s = READ_WAIT_SECONDS if read_only else 0.0
        root = Path(path).expanduser().resolve()
        catalog = root / CATALOG_FILE
        if not catalog.exists():
            if not create or read_only:
                if (root / PARTS_DIR).is_dir():   # a store that lost its catalog: rebuild it, do not start over
                    raise StoreError(f"store {root} has {PARTS_DIR}/ but no {CATALOG_FILE}; run "
                                     f"{REPAIR_COMMAND.format(store=root)} to rebuild the catalog from the parts")
                raise StoreError(f"no feature store at {root} (missing {CATALOG_FILE}); run pipelines.ingest first")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFullError(root) from exc
                raise
        deadline = time.monotonic() + max(0.0, wait_s)
        lock = None if read_only else StoreLock(root).acquire(wait_s)
        try:
            con = cls._connect_waiting(root, catalog, read_only, deadline, writers_only=writers_only)
            if not read_only and _needs_conversion(con):
                con.close()
                convert_catalog(root)
                con = cls._connect_waiting(root, catalog, read_only, deadline)
            store = cls(root, con, read_only, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            if not read_only:
                store._init_meta()
            store.refresh_part_views()
        except BaseException as exc:
            store.close()
            problem = store.explain(exc) if isinstance(exc, duckdb.Error) else None
            if problem is None:
                raise
            raise problem from exc
        return store

    @staticmethod
    def _connect_waiting(root: Path, catalog: Path, read_only: bool, deadline: float, *,
                         reopening: bool = False, writers_only: bool = False) -> duckdb.DuckDBPyConnection:
        """Connect to the catalog, waiting until ``deadline`` (said once on stderr, naming who has it open)
        while another process has it open; ``reopening``: a writer taking back its released catalog;
        ``writers_only``: wait only when that process is the store's writer (:func:`_writer_has_it`)."""
        announced = False
        while True:
            try:
                con = _connect(catalog, read_only)
                if announced and not read_only and not reopening:
                    StoreLock(root).note(waiting_for=None)
                return con
            except duckdb.Error as exc:
                text = str(exc)
                if is_disk_full(exc):
                    raise DiskFullError(catalog) from exc
                if is_catalog_damage(exc):
                    raise StoreError(catalog_damage_message(root, exc)) from exc
                if not isinstance(exc, duckdb.IOException):
                    raise
                if "lock" not in text.lower():
                    raise StoreError(f"cannot open {catalog}: {text}") from exc
                if writers_only and not announced and not _writer_has_it(root, text):
                    deadline = time.monotonic()
                if not announced or time.monotonic() >= deadline:  # who holds it: asked once, or at the end
                    who = _reader_of(text) if reopening and not read_only else catalog_holder(root, text)
                    if time.monotonic() >= deadline:
                        then = ("close that reader (a notebook or a SQL shell holding the store open) and re-run: "
                                "finished parts are kept" if reopening and not read_only else
                                "wait for that job to finish and re-run")
                        raise StoreBusyError(f"cannot open {catalog}: {who}; {then} "
                                             f"(DuckDB: {text.splitlines()[0]})") from exc
                    print(f"waiting up to {deadline - time.monotonic():.0f} s for another process to close {catalog} "
                          f"({who})", file=sys.stderr, flush=True)
                    if not read_only and not reopening:  # we hold writer.lock but do not write yet: a writer
                        # refused meanwhile learns who really writes
                        StoreLock(root).note(waiting_for=f"the catalog is open elsewhere, {who}")
                    announced = True
                time.sleep(0.5)

    def close(self) -> None:
        self._closed = True
        try:
            self.release_catalog()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _init_meta(self) -> None:
        have = {r[0] for r in self.rows(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()")}
        with self.writing(CATALOG_FILE):
            if "_versions" not in have:
                self.con.execute(
                    """
                    CREATE TABLE IF NOT EXISTS _versions (
                        table_name VARCHAR, version VARCHAR, content_hash VARCHAR, n_rows BIGINT,
                        created_at TIMESTAMP, params JSON, is_current BOOLEAN,
                        PRIMARY KEY (table_name, version))
                    """
                )
            if "_part_tables" not in have:
                self.con.execute(
                    """
                    CREATE TABLE IF NOT EXISTS _part_tables (
                        table_name VARCHAR PRIMARY KEY, key_columns VARCHAR[], order_column VARCHAR)
                    """
                )

    def writing(self, what: str | os.PathLike) -> DiskFullGuard:
        """Context manager turning ENOSPC inside it into one :class:`DiskFullError` naming ``what``."""
        return DiskFullGuard(self.root / what, self.root)

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
        current = self.first("SELECT version FROM _versions WHERE table_name = ? AND is_current", [name])
        physical = f"{name}__{version}"
        if existing is not None and current is not None and current[0] == version and self.has_table(name):
            return self.version_info(name, version)  # nothing changed: write nothing
        with self.transaction():
            if existing is None:
                self.con.register("_incoming", table)
                self.con.execute(f'CREATE TABLE "{physical}" AS SELECT * FROM _incoming')
                self.con.unregister("_incoming")
                self.con.execute(
                    "INSERT INTO _versions VALUES (?, ?, ?, ?, ?, ?, false)",
                    [name, version, digest, table.num_rows, utc_now(), json.dumps(params, sort_keys=True)],
                )
            self.con.execute("UPDATE _versions SET is_current = (version = ?) WHERE table_name = ?",
                             [version, name])
            self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{physical}"')
        return self.version_info(name, version)

    @contextlib.contextmanager
    def transaction(self):
        """One catalog transaction under the disk-full guard: committed when the block ends, rolled back
        (and the error re-raised) when it raises, so readers see all of its writes or none."""
        with self.writing(CATALOG_FILE):
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
                self.con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
                raise

    def read_table(self, name: str, version: str | None = None) -> pa.Table:
        """Read the current (or a given) version of a snapshot table, or the deduplicated part table."""
        _check_name(name)
        if version is None:
            if not self.has_table(name):
                raise StoreError(f"table {name!r} is not in the store {self.root}; run the stage that writes it")
            return self.sql(f'SELECT * FROM "{name}"')
        info = self.version_info(name, version)
        return self.sql(f'SELECT * FROM "{name}__{info.version}"')

    def has_table(self, name: str) -> bool:
        """True if ``name`` can be read: a snapshot or part table (a view) or an append-only table
        (``experiments``, ``ingest_runs``)."""
        row = self.first(
            "SELECT (SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal) + "
            "(SELECT count(*) FROM duckdb_tables() WHERE table_name = ?)", [name, name]
        )
        return bool(row and row[0])

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
        with self.writing(CATALOG_FILE):
            self.con.execute("UPDATE _versions SET is_current = (version = ?) WHERE table_name = ?",
                             [info.version, name])
            self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{name}__{info.version}"')

    # ------------------------------------------------------------------ part tables
    def parts_dir(self, name: str) -> Path:
        return self.root / PARTS_DIR / _check_name(name)

    def register_part_table(self, name: str, key_columns: list[str], order_column: str = "written_at", *,
                            recreate: str | None = None) -> None:
        """Declare a part table's key: the view keeps the latest row (by ``order_column``) per key.

        The key is also written beside the parts (``parts/<name>.json``, only when it differs), with
        ``recreate``: the command that re-creates the table's rows (``{store}`` stands for the store
        folder), which errors about a damaged part of the table name.
        """
        _check_name(name)
        row = self.first("SELECT key_columns, order_column FROM _part_tables WHERE table_name = ?", [name])
        if row is None or list(row[0]) != list(key_columns) or row[1] != order_column:
            with self.writing(CATALOG_FILE):
                self.con.execute("INSERT OR REPLACE INTO _part_tables VALUES (?, ?, ?)",
                                 [name, key_columns, order_column])
        directory = self.parts_dir(name)
        with self.writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        old = read_table_file(self.root, name) or {}
        spec = {"table": name, "key_columns": list(key_columns), "order_column": order_column,
                "recreate": recreate or old.get("recreate")}
        if spec != old:
            try:
                write_json_atomic(table_file(self.root, name), spec)
            except OSError as exc:   # a full disk: the catalog still has the key; the next writer records it
                if not is_disk_full(exc):
                    raise
        self.refresh_part_views()

    def append_part(self, name: str, table: pa.Table, *, prefix: str = "part") -> Path | None:
        """Atomically write ``table`` as a new zstd Parquet part of ``name`` (tmp file + rename)."""
        if table.num_rows == 0:
            return None
        directory = self.parts_dir(name)
        with self.writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{prefix}-{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}.parquet"
        write_parquet_atomic(table, final)
        return final

    def part_files(self, name: str) -> list[Path]:
        directory = self.parts_dir(name)
        return sorted(directory.glob("*.parquet")) if directory.exists() else []

    def part_glob(self, name: str) -> str:
        """Absolute glob of a part table's files (for one-off queries; views use :meth:`part_view_sql`)."""
        return str(self.parts_dir(name) / "*.parquet")

    def view_glob(self, relative: str) -> str:
        """The glob a persisted view should name for files under the store, e.g. ``oof/*.parquet``.

        Relative to the store folder (every connection resolves it there through
        ``file_search_path``), so the view follows the store when it is copied or moved.
        """
        return str(self.root / relative) if self._absolute_views else relative

    def part_view_sql(self, name: str, key_columns: list[str], order_column: str) -> str:
        """The deduplicating view body of a part table, its files named relative to the store folder.

        It keeps, per key, the row with the latest ``order_column``; exact ties (and NULLs, which lose
        to any value) go to the row in the last part file by name, then the last row in that file
        (:meth:`latest_rows_sql`). Only the key, the order column and each row's file and row number go
        through the window; the payload (embedding lists) is read once and semi-joined to the winners,
        never sorted: a full-table aggregate over 100k rows x 1,024 float16 took 3.4 s against 11.2 s
        for a window over whole rows (plain Parquet 1.6 s) and its peak memory no longer grows with the
        payload (bench/store_scale.py).
        """
        glob = sql_str(self.view_glob(f"{PARTS_DIR}/{_check_name(name)}/*.parquet"))
        return (f"SELECT * EXCLUDE ({PART_FILE_COLUMN}, file_row_number) FROM {self.part_scan_sql(glob)} "
                f"SEMI JOIN ({self.latest_rows_sql(glob, key_columns, order_column)}) AS _latest "
                f"USING ({PART_FILE_COLUMN}, file_row_number)")

    @staticmethod
    def part_scan_sql(files_sql: str) -> str:
        """``read_parquet`` of ``files_sql`` (a quoted glob or a list of quoted paths) with each row's file
        (column :data:`PART_FILE_COLUMN`) and row number in it (``file_row_number``); columns a part
        lacks read as NULL (``union_by_name``: parts written by older versions). DuckDB >= 1.1."""
        return (f"read_parquet({files_sql}, union_by_name = true, filename = {sql_str(PART_FILE_COLUMN)}, "
                f"file_row_number = true)")

    @classmethod
    def latest_rows_sql(cls, files_sql: str, key_columns: list[str], order_column: str, where: str = "",
                        columns: Iterable[str] = ()) -> str:
        """``(_part_file, file_row_number)`` of the row a part table's view keeps per key among ``files_sql``:
        the latest ``order_column`` (NULLs last); ties to the last file by name, then the last row in it.

        The tie rule is deterministic, so the view and :mod:`featurestore.compact` pick the same row; it
        reads only the key, order, file and row-number columns (and those of ``where``, an SQL condition
        on key columns applied before the dedup, e.g. to read a few keys: semi-join the payload scan to
        this and nothing else is sorted). ``columns``: more (key) columns to return before those two."""
        key_sql = ", ".join(f'"{k}"' for k in key_columns)
        extra = "".join(f'"{c}", ' for c in columns)
        return (f"SELECT {extra}{PART_FILE_COLUMN}, file_row_number FROM {cls.part_scan_sql(files_sql)} "
                f"{f'WHERE {where} ' if where else ''}QUALIFY row_number() OVER (PARTITION BY {key_sql} ORDER BY \"{order_column}\" DESC NULLS LAST, "
                f"{PART_FILE_COLUMN} DESC, file_row_number DESC) = 1")

    def refresh_part_views(self) -> None:
        """Make every registered part table's view match its parts, writing only what differs.

        Read-write: (re)create a view whose definition differs (tagged by a hash in its comment)
        and drop the view of a table with no parts. Read-only: shadow a missing or differing view
        with a TEMP view (the catalog is not touched).
        """
        if not self.rows("SELECT 1 FROM duckdb_tables() WHERE database_name = current_database() "
                         "AND table_name = '_part_tables'"):
            return
        persisted = {r[0]: r[1] for r in self.rows(
            "SELECT view_name, comment FROM duckdb_views() WHERE database_name = current_database() "
            "AND NOT internal AND NOT temporary")}
        for name, keys, order in self.rows("SELECT * FROM _part_tables ORDER BY table_name"):
            has_parts = bool(self.part_files(name))
            body = self.part_view_sql(name, list(keys), order) if has_parts else None
            tag = _VIEW_TAG + hashlib.sha256(body.encode()).hexdigest()[:16] if body else None
            if self.read_only or self._absolute_views:
                if body and persisted.get(name) != tag:
                    self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {body}')
                if self.read_only:
                    continue
            if body is None:
                if name in persisted:
                    with self.writing(CATALOG_FILE):
                        self.con.execute(f'DROP VIEW IF EXISTS "{name}"')
                continue
            if persisted.get(name) == tag:
                continue
            with self.transaction():
                self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {body}')
                self.con.execute(f'COMMENT ON VIEW "{name}" IS {sql_str(tag)}')

    # ------------------------------------------------------------------ damaged parts
    def damaged_parts(self, names: Iterable[str] | None = None) -> list[DamagedPart]:
        """The parts of ``names`` (default: every part table) that are not whole Parquet (:func:`parquet_damage`)."""
        return damaged_parts(self.root, names)

    def recreate_command(self, name: str) -> str:
        """The command that re-creates the rows of part table ``name`` (its ``parts/<name>.json``), else the repair."""
        return recreate_command(self.root, name) or REPAIR_COMMAND.format(store=self.root)

    def damaged_part_message(self, damaged: list[DamagedPart]) -> str:
        """One line: the first damaged part, why, and the command that moves it aside and re-creates its rows."""
        part = damaged[0]
        command = self.recreate_command(part.table)
        then = ("it moves the part to quarantine/ in the store and names the job that re-creates its rows"
                if command.startswith(REPAIR_COMMAND.split(" --", 1)[0]) else
                "it moves the part to quarantine/ in the store and re-creates its rows")
        more = f" ({len(damaged) - 1} more damaged part(s) too)" if len(damaged) > 1 else ""
        return (f"part {part.path.relative_to(self.root)} of table {part.table} in store {self.root} is damaged "
                f"({part.reason}){more}; run {command}: {then}")

    def quarantine_parts(self, names: Iterable[str] | None = None) -> list[tuple[DamagedPart, Path]]:
        """Move every damaged part of ``names`` (default: every part table) to ``quarantine/`` in the store,
        keeping its relative path (a name already taken there gets a ``.N`` suffix; nothing is deleted or
        overwritten), and refresh the views. Read-write stores only: the caller holds the writer lock.
        Returns ``(part, where it went)`` pairs."""
        if self.read_only:
            raise StoreError(f"store {self.root} is open read-only; cannot move damaged parts")
        moved = quarantine_parts(self.root, names)
        if moved:
            self.refresh_part_views()
        return moved

    def explain(self, exc: BaseException) -> StoreError | None:
        """The one-line :class:`StoreError` for a DuckDB error a damaged catalog or part caused, else None."""
        if is_catalog_damage(exc):
            return StoreError(catalog_damage_message(self.root, exc))
        text = str(exc)
        if "parquet" not in text.lower():
            return None
        damaged = self.damaged_parts()
        named = [d for d in damaged if str(d.path) in text or d.path.name in text]
        damaged = named + [d for d in damaged if d not in named]
        return StoreError(self.damaged_part_message(damaged)) if damaged else None

    @contextlib.contextmanager
    def reading(self):
        """``with`` block turning a DuckDB error caused by a damaged part or catalog into one
        :class:`StoreError` that names it (:meth:`explain`); other errors pass unchanged."""
        try:
            yield
        except duckdb.Error as exc:
            problem = self.explain(exc)
            if problem is None:
                raise
            raise problem from exc

    # ------------------------------------------------------------------ queries
    def rows(self, query: str, params: list | None = None) -> list[tuple]:
        """All rows of a query as tuples (fully fetched, so the connection is free afterwards)."""
        with self.reading():
            return self.con.execute(query, params or []).fetchall()

    def first(self, query: str, params: list | None = None) -> tuple | None:
        rows = self.rows(query, params)
        return rows[0] if rows else None

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run a query against the catalog and return an Arrow table."""
        with self.reading():
            return query_arrow(self.con, query, params)

    def count(self, name: str) -> int:
        if not self.has_table(name):
            return 0
        return int(self.first(f'SELECT count(*) FROM "{_check_name(name)}"')[0])

    def table_names(self) -> list[str]:
        rows = self.con.execute(
            "SELECT DISTINCT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]


class DiskFullGuard:
    """``with`` block turning ENOSPC (OS, pyarrow or DuckDB) into one :class:`DiskFullError`."""

    def __init__(self, path: Path, directory: Path):
        self.path, self.directory = path, directory

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise DiskFullError(self.path, self.directory) from exc


def _is_float_data(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _is_float_data(t.value_type)
    return pa.types.is_floating(t)


def dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding: all but float data (embeddings, probabilities), where pyarrow
    would try a dictionary, find it too large and fall back - 1.64x slower appends of 1M x 1,024 float16
    embeddings and 7% larger files (bench/store_scale.py)."""
    return [f.name for f in table.schema if not _is_float_data(f.type)]


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write zstd Parquet to ``path`` so that readers see the whole file or nothing.

    A full disk raises :class:`DiskFullError` naming ``path`` (the partial tmp file is removed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with DiskFullGuard(path, path.parent):
            pq.write_table(table, tmp, compression="zstd", use_dictionary=dictionary_columns(table))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- damaged files
@dataclass(frozen=True)
class DamagedPart:
    """A part file that is not whole Parquet."""

    table: str
    path: Path
    reason: str


_PARQUET_MAGIC = b"PAR1"
_CHECKED: dict[tuple[str, int, int], str | None] = {}


def parquet_damage(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a whole Parquet file (e.g. ``"83,152 bytes, no Parquet footer: truncated or
    overwritten"``), or None when it is. Checks the magic bytes at both ends, the footer length and that the
    footer parses - a few small reads, cached per (path, size, mtime), so every part of a store can be checked
    on each open of a job. Damage inside a data page with an intact footer is not detected here."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None                     # gone since it was listed (compacted): not damage
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        if len(_CHECKED) > 200_000:
            _CHECKED.clear()
        _CHECKED[key] = _parquet_damage(path, st.st_size)
    return _CHECKED[key]


def _parquet_damage(path: Path, size: int) -> str | None:
    if size < 12:
        return f"{size} bytes: too small to be Parquet"
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(size - 8)
        tail = fh.read(8)
    if tail[4:] != _PARQUET_MAGIC:
        return f"{size:,} bytes, no Parquet footer: truncated or overwritten"
    if head != _PARQUET_MAGIC:
        return f"{size:,} bytes, no Parquet header: overwritten"
    footer = int.from_bytes(tail[:4], "little")
    if footer + 12 > size:
        return f"{size:,} bytes, footer of {footer:,} bytes: truncated or overwritten"
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet footer: {' '.join(str(exc).split())[:200]}"
    return None


def part_table_names(root: Path) -> list[str]:
    """Every table folder under ``parts/`` of the store at ``root`` (registered in the catalog or not), sorted."""
    directory = Path(root) / PARTS_DIR
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and _NAME_RE.match(p.name))


def damaged_parts(root: Path, names: Iterable[str] | None = None) -> list[DamagedPart]:
    """The parts of ``names`` (default: every part table) in the store at ``root`` that are not whole Parquet."""
    found = []
    for name in part_table_names(root) if names is None else names:
        directory = Path(root) / PARTS_DIR / _check_name(name)
        for path in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
            reason = parquet_damage(path)
            if reason is not None:
                found.append(DamagedPart(name, path, reason))
    return found


def quarantine_parts(root: Path, names: Iterable[str] | None = None) -> list[tuple[DamagedPart, Path]]:
    """Move the damaged parts of ``names`` (default: every part table) to ``quarantine/`` in the store; the
    caller holds the writer lock (:meth:`FeatureStore.quarantine_parts` also refreshes the views)."""
    root = Path(root)
    moved = []
    for part in damaged_parts(root, names):
        target = quarantine_path(root, part.path)
        with DiskFullGuard(target, target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(part.path, target)
        moved.append((part, target))
    return moved


def quarantine_path(root: Path, path: Path) -> Path:
    """Where a damaged file of the store goes: ``quarantine/<its path in the store>``, never an existing file."""
    target = root / QUARANTINE_DIR / path.relative_to(root)
    n = 1
    while target.exists():
        target = target.with_name(f"{path.name}.{n}")
        n += 1
    return target


def recreate_command(root: Path, name: str) -> str | None:
    """The command recorded in part table ``name``'s ``parts/<name>.json`` that re-creates its rows, or None."""
    spec = read_table_file(root, name) or {}
    return spec["recreate"].replace("{store}", str(root)) if spec.get("recreate") else None


def table_file(root: Path, name: str) -> Path:
    """``parts/<name>.json``: what part table ``name`` is (beside its folder, so the folder holds parts only)."""
    return Path(root) / PARTS_DIR / f"{_check_name(name)}.json"


def read_table_file(root: Path, name: str) -> dict | None:
    """A part table's ``parts/<name>.json`` (key columns, order column, re-create command), or None."""
    try:
        spec = json.loads(table_file(root, name).read_text())
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_CATALOG_DAMAGE = ("corrupt database file", "not a valid duckdb database file")


def is_catalog_damage(exc: BaseException) -> bool:
    """True for DuckDB's words for a damaged database file (a block checksum, a bad header)."""
    return isinstance(exc, duckdb.Error) and any(w in str(exc).lower() for w in _CATALOG_DAMAGE)


def catalog_damage_message(root: Path, exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:200]
    return (f"catalog {Path(root) / CATALOG_FILE} is damaged (DuckDB: {detail}); run "
            f"{REPAIR_COMMAND.format(store=root)} to rebuild it from the parts and what is still readable "
            "(the damaged file is kept beside it)")
