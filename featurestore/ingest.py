"""Competition ingest: CSVs, soundscape names and an audio QA pass into the feature store.

CSV problems (missing columns, unknown labels, bad names in the label file, a label time past
24 h) stop the run before anything is written. Label windows past the end of their soundscape
(once the audio pass knows its duration) are not stored: one ``label_past_end`` warning gives
their count and the first line. Audio problems never stop it: a file that cannot be decoded
becomes an ``audio_inventory`` row with ``error`` set and an ``ingest_problems`` row.
The audio pass writes atomic Parquet parts every ``batch_size`` files, so a killed run
resumes where it stopped; unchanged files (same size and mtime) are never re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from featurestore.audio_qa import INVENTORY_FIELDS, inspect_audio
from featurestore.compact import compact_parts
from featurestore.competition import (
    DataError,
    drop_labels_past_end,
    parse_soundscape_name,
    read_soundscape_labels,
    read_submission_columns,
    read_taxonomy,
    read_train_csv,
)
from featurestore.errors import StoreError
from featurestore.store import FeatureStore, utc_now
from featurestore.windows import (
    AUDIO_SOURCES,
    SOUNDSCAPE_SOURCES,
    WINDOW_LABEL_PARTS,
    build_windows,
    is_audio,
    window_labels_sql,
)
from featurestore.workers import worker_pool

INGEST_VERSION = "ingest-1"
SNAPSHOT_TABLES = ("taxonomy", "recordings", "soundscape_labels", "soundscapes", "windows", "ingest_problems")
INVENTORY_TYPES = {
    "size_bytes": pa.int64(), "mtime_ns": pa.int64(), "sample_rate": pa.int32(), "channels": pa.int16(),
    "frames": pa.int64(), "duration_s": pa.float64(), "peak": pa.float32(), "rms_dbfs": pa.float32(),
    "clipped_fraction": pa.float32(), "silent_frame_fraction": pa.float32(), "snr_db": pa.float32(),
}


@dataclass
class AudioFile:
    source: str
    filename: str
    path: Path
    size_bytes: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.source}/{self.filename}"


@dataclass
class IngestSummary:
    data_version: str
    counts: dict[str, int]
    audio_read: int
    audio_skipped: int
    problems: list[dict] = field(default_factory=list)
    new_versions: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"data version {self.data_version}",
                 f"audio files read this run: {self.audio_read}, unchanged and skipped: {self.audio_skipped}"]
        lines += [f"  {name:<18} {n:>8} rows" for name, n in self.counts.items()]
        if self.new_versions:
            lines.append("new table versions: " + ", ".join(self.new_versions))
        errors = [p for p in self.problems if p["severity"] == "error"]
        warnings = [p for p in self.problems if p["severity"] == "warning"]
        lines.append(f"problems: {len(errors)} error(s), {len(warnings)} warning(s)")
        for p in (errors + warnings)[:25]:
            lines.append(f"  [{p['severity']}] {p['kind']}: {p['message']}")
        if len(errors) + len(warnings) > 25:
            lines.append("  ... (all in table ingest_problems)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- discovery
def list_audio_files(data_dir: Path) -> list[AudioFile]:
    """Every audio file under the competition's audio folders, sorted by (source, filename)."""
    found = []
    for source in AUDIO_SOURCES:
        base = data_dir / source
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and is_audio(path):
                stat = path.stat()
                found.append(AudioFile(source, path.relative_to(base).as_posix(), path, stat.st_size, stat.st_mtime_ns))
    return found


def _inspect(item: AudioFile) -> dict:
    return inspect_audio(item.path, item.source, item.filename)


def iter_inspections(todo: list[AudioFile], workers: int) -> Iterator[dict]:
    """Inventory rows for ``todo`` (unordered when parallel). One worker runs inline."""
    if workers <= 1 or len(todo) <= 1:
        yield from map(_inspect, todo)
        return
    with worker_pool(min(workers, len(todo))) as pool:   # spawned: no fork of the parent's DuckDB connection
        yield from pool.imap_unordered(_inspect, todo, chunksize=1)


def inventory_table(rows: list[dict]) -> pa.Table:
    now = utc_now()
    cols = {k: pa.array([r[k] for r in rows], INVENTORY_TYPES.get(k, pa.string())) for k in INVENTORY_FIELDS}
    cols["ingest_version"] = pa.array([INGEST_VERSION] * len(rows))
    cols["ingested_at"] = pa.array([now] * len(rows), pa.timestamp("us"))
    return pa.table(cols)


def with_provenance(table: pa.Table, source_file: str | None = None) -> pa.Table:
    """Add ``ingest_version`` and ``ingested_at`` (and ``source_file`` when given) to every row."""
    n = table.num_rows
    if source_file is not None and "source_file" not in table.column_names:
        table = table.append_column("source_file", pa.array([source_file] * n, pa.string()))
    table = table.append_column("ingest_version", pa.array([INGEST_VERSION] * n, pa.string()))
    return table.append_column("ingested_at", pa.array([utc_now()] * n, pa.timestamp("us")))


# ---------------------------------------------------------------------------- tables
def soundscapes_table(inventory: pa.Table, problems: list[dict]) -> pa.Table:
    rows = [r for r in inventory.select(["source", "filename", "duration_s", "sample_rate", "error"]).to_pylist()
            if r["source"] in SOUNDSCAPE_SOURCES]
    cols: dict[str, list] = {k: [] for k in ("filename", "soundscape_id", "split", "site", "date", "time_utc",
                                             "hour", "duration_s", "sample_rate", "source_file")}
    for r in sorted(rows, key=lambda r: (r["source"], r["filename"])):
        try:
            name = parse_soundscape_name(r["filename"])
        except DataError as exc:
            problems.append(_problem("error", "soundscape_name", f"{r['source']}/{r['filename']}", None, str(exc)))
            continue
        split = "train" if r["source"] == "train_soundscapes" else "test"
        for k, v in (("filename", r["filename"]), ("soundscape_id", name.soundscape_id), ("split", split),
                     ("site", name.site), ("date", name.date), ("time_utc", name.time_utc), ("hour", name.hour),
                     ("duration_s", r["duration_s"]), ("sample_rate", r["sample_rate"]),
                     ("source_file", f"{r['source']}/{r['filename']}")):
            cols[k].append(v)
    types = {"date": pa.date32(), "hour": pa.int8(), "duration_s": pa.float64(), "sample_rate": pa.int32()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})


def _problem(severity: str, kind: str, file: str, row: int | None, message: str) -> dict:
    return {"severity": severity, "kind": kind, "file": file, "row": row, "message": message}


def problems_table(problems: list[dict]) -> pa.Table:
    keys = ("severity", "kind", "file", "row", "message")
    ordered = sorted(problems, key=lambda p: (p["severity"], p["kind"], p["file"], p["row"] or 0, p["message"]))
    return pa.table({k: pa.array([p[k] for p in ordered], pa.int32() if k == "row" else pa.string()) for k in keys})


def data_version_of(versions: dict[str, str]) -> str:
    text = ";".join(f"{k}={versions[k]}" for k in sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- the job
def read_competition_csvs(data_dir: Path) -> dict:
    """Parse every CSV first, so that a bad CSV stops the run before the store is touched."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    taxonomy = read_taxonomy(data_dir / "taxonomy.csv")
    known = set(taxonomy.column("primary_label").to_pylist())
    out: dict = {"taxonomy": taxonomy, "problems": []}
    train_csv = data_dir / "train.csv"
    out["recordings"] = read_train_csv(train_csv, known) if train_csv.exists() else None
    labels_csv = data_dir / "train_soundscapes_labels.csv"
    if labels_csv.exists():
        labels, report = read_soundscape_labels(labels_csv, known)
        out["soundscape_labels"] = labels
        out["problems"] += [_problem("warning", "label_conflict", labels_csv.name, None, c) for c in report.conflicts]
        out["problems"] += [_problem("warning", w.kind, labels_csv.name, w.row, w.message) for w in report.warnings]
        out["label_report"] = report
    else:
        out["soundscape_labels"] = None
    submission_csv = data_dir / "sample_submission.csv"
    if submission_csv.exists():
        columns = read_submission_columns(submission_csv)
        if columns[1:] != taxonomy.column("primary_label").to_pylist():
            out["problems"].append(_problem("warning", "submission_columns", submission_csv.name, 1,
                                            "sample_submission.csv class columns differ from taxonomy.csv order"))
    return out


def run_ingest(data_dir: str | os.PathLike, store_dir: str | os.PathLike, *, workers: int | None = None,
               batch_size: int = 64, progress: Callable[[int], object] | None = None,
               on_total: Callable[[int], object] | None = None,
               inventory_rows: list[dict] | None = None) -> IngestSummary:
    """Ingest a competition folder into the store; see the module docstring for guarantees.

    ``inventory_rows`` (``audio_inventory`` rows, :data:`INVENTORY_FIELDS`) stand for the audio pass: the
    files they describe are taken as they say, nothing under ``data_dir``'s audio folders is read (a
    scale rehearsal's synthetic files, ``bench/competition_scale.py``); the CSVs are read as always.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    csvs = read_competition_csvs(data_dir)
    problems: list[dict] = list(csvs["problems"])
    workers = workers or os.cpu_count() or 1
    if inventory_rows is None:
        files = list_audio_files(data_dir)
        inspections: Callable[[list[AudioFile]], Iterator[dict]] = lambda todo: iter_inspections(todo, workers)  # noqa: E731
    else:
        given = {r["path"]: r for r in inventory_rows}
        files = [AudioFile(r["source"], r["filename"], data_dir / r["source"] / r["filename"], r["size_bytes"],
                           r["mtime_ns"]) for r in given.values()]
        inspections = lambda todo: (given[f.key] for f in todo)  # noqa: E731

    with FeatureStore.open(store_dir) as store:
        store.register_part_table("audio_inventory", ["path"], order_column="ingested_at")
        known = {}
        if store.has_table("audio_inventory"):
            known = {r["path"]: (r["size_bytes"], r["mtime_ns"]) for r in
                     store.sql("SELECT path, size_bytes, mtime_ns FROM audio_inventory").to_pylist()}
        todo = [f for f in files if known.get(f.key) != (f.size_bytes, f.mtime_ns)]
        if on_total:
            on_total(len(todo))
        batch: list[dict] = []
        for row in inspections(todo):
            batch.append(row)
            if progress:
                progress(1)
            if len(batch) >= batch_size:
                store.append_part("audio_inventory", inventory_table(batch))
                batch = []
        store.append_part("audio_inventory", inventory_table(batch))
        store.refresh_part_views()
        present = {f.key for f in files}
        compact_parts(store, "audio_inventory", keep=lambda t: t.filter(  # drop files no longer on disk
            pa.array([p in present for p in t.column("path").to_pylist()], pa.bool_())))
        inventory = (store.sql("SELECT * FROM audio_inventory ORDER BY path") if store.has_table("audio_inventory")
                     else inventory_table([]))

        for r in inventory.select(["path", "error", "warning"]).to_pylist():
            if r["error"]:
                problems.append(_problem("error", "audio_decode", r["path"], None, r["error"]))
            if r["warning"]:
                problems.append(_problem("warning", "audio_decode", r["path"], None, r["warning"]))
        problems += _cross_checks(csvs, files)
        labels = csvs["soundscape_labels"]
        if labels is not None:
            durations = {r["filename"]: r["duration_s"] for r in inventory.select(
                ["source", "filename", "duration_s", "error"]).to_pylist()
                if r["source"] == "train_soundscapes" and r["error"] is None and r["duration_s"] is not None}
            labels, past_end = drop_labels_past_end(labels, durations, data_dir / "train_soundscapes_labels.csv")
            if past_end is not None:
                problems.append(_problem("warning", past_end.kind, "train_soundscapes_labels.csv", past_end.row,
                                         past_end.message))

        tables = {
            "taxonomy": with_provenance(csvs["taxonomy"]),
            "soundscapes": with_provenance(soundscapes_table(inventory, problems)),
            "windows": with_provenance(build_windows(inventory), "audio_inventory"),
        }
        if csvs["recordings"] is not None:
            tables["recordings"] = with_provenance(csvs["recordings"], "train.csv")
        if csvs["soundscape_labels"] is not None:
            tables["soundscape_labels"] = with_provenance(labels, "train_soundscapes_labels.csv")
        tables["ingest_problems"] = with_provenance(problems_table(problems))

        before = {name: _current_or_none(store, name) for name in tables}
        versions = {name: store.write_table(name, t, params={"ingest_version": INGEST_VERSION}).version
                    for name, t in tables.items()}
        inventory_version = hashlib.sha256(
            "".join(f"{r['path']}:{r['sha256_bytes']};" for r in inventory.select(["path", "sha256_bytes"]).to_pylist())
            .encode()).hexdigest()[:12]
        versions["audio_inventory"] = inventory_version
        data_version = data_version_of(versions)
        labels_query = window_labels_sql([t for t in WINDOW_LABEL_PARTS if store.has_table(t)])
        if labels_query is not None:  # the same query training reads (models.frame.window_labels)
            store.con.execute(f"CREATE OR REPLACE VIEW window_labels AS {labels_query}")
        _record_run(store, data_dir, data_version, versions, len(todo), len(files) - len(todo), problems)
        counts = {name: store.count(name) for name in (*SNAPSHOT_TABLES, "audio_inventory")}
    return IngestSummary(
        data_version=data_version, counts=counts, audio_read=len(todo), audio_skipped=len(files) - len(todo),
        problems=problems, new_versions=[n for n in tables if before[n] != versions[n]],
    )


def _current_or_none(store: FeatureStore, name: str) -> str | None:
    try:
        return store.current_version(name)
    except StoreError:
        return None


def _cross_checks(csvs: dict, files: list[AudioFile]) -> list[dict]:
    """Files listed in CSVs but missing on disk, and audio on disk that no CSV lists."""
    problems = []
    on_disk = {f.key for f in files}
    if csvs["recordings"] is not None:
        listed = set(csvs["recordings"].column("filename").to_pylist())
        for name in sorted(listed - {f.filename for f in files if f.source == "train_audio"}):
            problems.append(_problem("warning", "missing_audio", f"train_audio/{name}", None,
                                     f"train.csv lists train_audio/{name} but the file is not there"))
        for name in sorted({f.filename for f in files if f.source == "train_audio"} - listed):
            problems.append(_problem("warning", "unlisted_audio", f"train_audio/{name}", None,
                                     f"train_audio/{name} is not listed in train.csv"))
    if csvs["soundscape_labels"] is not None and any(f.source == "train_soundscapes" for f in files):
        labelled = set(csvs["soundscape_labels"].column("filename").to_pylist())
        for name in sorted(labelled):
            if f"train_soundscapes/{name}" not in on_disk:
                problems.append(_problem("warning", "missing_audio", f"train_soundscapes/{name}", None,
                                         f"train_soundscapes_labels.csv labels {name} but the file is not there"))
    return problems


def _record_run(store: FeatureStore, data_dir: Path, data_version: str, versions: dict, read: int, skipped: int,
                problems: list[dict]) -> None:
    store.con.execute(
        "CREATE TABLE IF NOT EXISTS ingest_runs (run_at TIMESTAMP, data_dir VARCHAR, data_version VARCHAR, "
        "table_versions JSON, audio_read INTEGER, audio_skipped INTEGER, errors INTEGER, warnings INTEGER, "
        "ingest_version VARCHAR)"
    )
    store.con.execute(
        "INSERT INTO ingest_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [utc_now(), str(data_dir), data_version, json.dumps(versions, sort_keys=True), read, skipped,
         sum(p["severity"] == "error" for p in problems), sum(p["severity"] == "warning" for p in problems),
         INGEST_VERSION],
    )


def latest_data_version(store: FeatureStore) -> str | None:
    """The data version written by the most recent ingest run."""
    if not store.has_table("ingest_runs"):
        return None
    row = store.first("SELECT data_version FROM ingest_runs ORDER BY run_at DESC LIMIT 1")
    return row[0] if row else None
