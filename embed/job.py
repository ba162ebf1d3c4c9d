"""The embedding job: every window in the store not yet embedded by an extractor version, once.

Tables (all part tables, so shards and machines can fill one store; the views dedupe by key):

* ``birdnet_frames`` / ``custom_frames`` — one row per frame: window_id, frame_index, frame_start_s
  (absolute, in the file), valid_fraction + is_padded (share of the frame that is real audio;
  windows past the end of a file are zero-padded), extractor, extractor_version, embedding
  (float16), logits (float32; the classes matched to the taxonomy unless full logits were asked
  for), written_at. Key (window_id, extractor_version, frame_index).
* ``classical_windows`` — one row per window: window_id, extractor, extractor_version,
  valid_fraction, is_padded, features (float32), written_at. Key (window_id, extractor_version).
* ``extractor_versions`` — what each version means: params (JSON), logit_labels, feature_names.
* ``embed_errors`` — files that could not be embedded, with the reason.
* ``birdnet_class_map`` (snapshot) — each taxonomy class and its BirdNET class, if any.

Work is planned per file (all of a file's windows in one atomic part), split over shards by a
hash of the file path and over worker processes (one single-threaded interpreter each), or over the
actors of a Ray cluster (``engine="ray"``, :mod:`embed.ray_engine`; the driver alone plans and
touches the catalog). Parts are written atomically under names derived from what the task embeds
(file keys, window ids, extractor versions, table), so a task run twice (retried by Ray after its
process died) replaces its own part, and a run killed with ``kill -9`` and re-run ends with every
window exactly once.
A part of these tables that is not whole Parquet (truncated or overwritten by a disk fault) is
moved to ``quarantine/`` in the store when a run starts (under the writer lock; said on stderr,
never deleted), so its windows count as not stored and are embedded again, bit-identical.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from embed import registry
from embed.audio import Audio
from embed.extractors import Extractor, FrameOutput, WindowOutput, compute_all, pool_env
from embed.registry import VERSIONS_TABLE
from featurestore.compact import compact_parts
from featurestore.errors import AudioError, DataError, StoreBusyError, StoreError, UserInputError
from featurestore.store import (
    CATALOG_FILE,
    FeatureStore,
    StoreLock,
    sql_str,
    utc_now,
    write_parquet_atomic,
)
from featurestore.workers import worker_pool

PART_TABLES = {**registry.PART_TABLES, "embed_errors": ["file", "extractor_version"]}
EXTRACTORS = registry.NAMES   # --extractor names
LOCK_WAIT_SECONDS = 120.0
PLAN_BATCH_ROWS = 65_536     # plan rows the driver reads at a time (the plan is a Parquet file, not a list)
RAY_CHUNK_TASKS = 512        # tasks per Ray Data pipeline: one actor-pool start-up (~5 s) per chunk of up to
                             # 512 x 600 s of audio, and the driver never holds more than one chunk's tasks


# ---------------------------------------------------------------------------- planning
@dataclass
class FileTask:
    key: str                                   # "<source>/<filename>"
    path: str
    duration_s: float
    windows: dict[str, list[tuple[str, int]]]  # extractor version -> [(window_id, start_s)]


@dataclass
class TaskResult:
    files: int = 0
    audio_s: float = 0.0
    windows: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> (I, N)."""
    if text is None:
        return 0, 1
    if isinstance(text, tuple):
        index, count = text
    else:
        try:
            index, count = (int(x) for x in str(text).split("/"))
        except ValueError as exc:
            raise DataError(f"--shard {text!r}: expected I/N, e.g. 0/2 and 1/2") from exc
    if not 0 <= index < count:
        raise DataError(f"--shard {index}/{count}: need 0 <= I < N")
    return index, count


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic split of files over N shards (sha1 of the file path)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % shard[1] == shard[0]


def task_target(total_s: float, workers: int, task_seconds: float | None = None) -> float:
    """Audio seconds per task (one part each): ``task_seconds``, else about 8 tasks per worker, 20-600 s."""
    return task_seconds or min(600.0, max(20.0, total_s / max(1, workers * 8)))


def iter_tasks(files: Iterable[FileTask], target_s: float) -> Iterator[list[FileTask]]:
    """Group files (in order, read lazily) into tasks of about ``target_s`` of audio, at most 256 files each."""
    current: list[FileTask] = []
    seconds = 0.0
    for f in files:
        current.append(f)
        seconds += f.duration_s
        if seconds >= target_s or len(current) >= 256:
            yield current
            current, seconds = [], 0.0
    if current:
        yield current


def plan_tasks(files: list[FileTask], workers: int, task_seconds: float | None = None) -> list[list[FileTask]]:
    """Group files (in order) into tasks of about ``task_seconds`` of audio; one part per task."""
    return list(iter_tasks(files, task_target(sum(f.duration_s for f in files), workers, task_seconds)))


# ---------------------------------------------------------------------------- rows
def _fixed_list(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    n, d = matrix.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix).reshape(-1), value_type), d)


def frame_rows(ex: Extractor, out: FrameOutput, ids: list[str], written_at) -> pa.Table:
    g = out.grid
    n = len(g.window_index)
    cols = {
        "window_id": pa.array([ids[i] for i in g.window_index.tolist()], pa.string()),
        "frame_index": pa.array(g.frame_index, pa.int16()),
        "frame_start_s": pa.array(g.start_s, pa.float64()),
        "valid_fraction": pa.array(g.valid_fraction, pa.float32()),
        "is_padded": pa.array(g.valid_fraction < 1.0, pa.bool_()),
        "extractor": pa.array([ex.name] * n, pa.string()),
        "extractor_version": pa.array([ex.version] * n, pa.string()),
        "embedding": _fixed_list(out.embedding.astype(np.float16), pa.float16()),
    }
    if out.logits is not None:
        cols["logits"] = _fixed_list(out.logits.astype(np.float32), pa.float32())
    cols["written_at"] = pa.array([written_at] * n, pa.timestamp("us"))
    return pa.table(cols)


def window_rows(ex: Extractor, out: WindowOutput, ids: list[str], written_at) -> pa.Table:
    n = len(ids)
    return pa.table({
        "window_id": pa.array(ids, pa.string()),
        "extractor": pa.array([ex.name] * n, pa.string()),
        "extractor_version": pa.array([ex.version] * n, pa.string()),
        "valid_fraction": pa.array(out.valid_fraction, pa.float32()),
        "is_padded": pa.array(out.valid_fraction < 1.0, pa.bool_()),
        "features": _fixed_list(out.features.astype(np.float32), pa.float32()),
        "written_at": pa.array([written_at] * n, pa.timestamp("us")),
    })


def version_row(ex: Extractor) -> pa.Table:
    params = ex.params()
    return pa.table({
        "extractor": [ex.name], "extractor_version": [ex.version], "table_name": [ex.table],
        "params": [json.dumps(params, sort_keys=True)],
        "logit_labels": pa.array([ex.logit_labels()], pa.list_(pa.string())),
        "feature_names": pa.array([ex.feature_names()], pa.list_(pa.string())),
        "model_sha256": [params.get("model_sha256")], "code_version": [params.get("code_version")],
        "written_at": pa.array([utc_now()], pa.timestamp("us")),
    })


def error_rows(errors: list[dict]) -> pa.Table:
    keys = ("file", "extractor_version", "message")
    cols = {k: pa.array([e[k] for e in errors], pa.string()) for k in keys}
    cols["written_at"] = pa.array([utc_now()] * len(errors), pa.timestamp("us"))
    return pa.table(cols)


def task_token(task: list[FileTask]) -> str:
    """A digest of what ``task`` embeds: each file's key and, per extractor version, the window ids it plans."""
    digest = hashlib.sha256()
    for f in task:
        for version in sorted(f.windows):
            digest.update(f"{f.key}\0{version}\0{chr(1).join(w for w, _ in f.windows[version])}\n".encode())
    return digest.hexdigest()


def part_path(parts_root: Path, table: str, token: str | None = None) -> Path:
    """Where a task's part of ``table`` goes: ``part-<hash of token and table>.parquet`` (deterministic, so a task
    run again, e.g. retried by Ray after its process died, replaces its own part atomically instead of adding a
    second copy); with no token a unique ``part-<time>-<random>.parquet``."""
    if token is None:
        return parts_root / table / f"part-{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}.parquet"
    return parts_root / table / f"part-{hashlib.sha256(f'{token}/{table}'.encode()).hexdigest()[:24]}.parquet"


# ---------------------------------------------------------------------------- one task (worker side)
def run_task(extractors: list[Extractor], task: list[FileTask], parts_root: Path,
             still_wanted: Callable[[], bool] = lambda: True) -> TaskResult:
    """Embed the files of one task and write one atomic part per table, named by the task's content
    (:func:`part_path`): running the same task again replaces its parts, never adds rows."""
    result = TaskResult()
    tables: dict[str, list[pa.Table]] = {}
    for f in task:
        result.files += 1
        result.audio_s += f.duration_s
        try:
            audio = Audio.open(f.path)   # a long recording is streamed by each extractor
        except AudioError as exc:
            result.errors += [{"file": f.key, "extractor_version": v, "message": str(exc)} for v in f.windows]
            continue
        if audio.duration_s + 0.5 < f.duration_s:  # the file changed since ingest (e.g. truncated by a copy)
            result.notes.append(f"{f.path}: {audio.duration_s:.1f} s of audio now, {f.duration_s:.1f} s at ingest; "
                                "its windows past the end were embedded as padding (re-run pipelines.ingest "
                                "if the file changed)")
        written_at = utc_now()
        wanted = [(ex, f.windows[ex.version]) for ex in extractors if f.windows.get(ex.version)]
        outputs = compute_all(audio, [(ex, [s for _, s in todo]) for ex, todo in wanted])
        for (ex, todo), out in zip(wanted, outputs, strict=True):
            ids = [w for w, _ in todo]
            if isinstance(out, DataError):   # an AudioError names the file already (a streamed file's decode)
                message = str(out) if isinstance(out, AudioError) else f"{f.path}: {out}"
                result.errors.append({"file": f.key, "extractor_version": ex.version, "message": message})
                continue
            if isinstance(out, BaseException):
                raise out
            rows = frame_rows(ex, out, ids, written_at) if isinstance(out, FrameOutput) else \
                window_rows(ex, out, ids, written_at)
            tables.setdefault(ex.table, []).append(rows)
            result.windows[ex.name] = result.windows.get(ex.name, 0) + len(ids)
    if not still_wanted():  # the parent died (kill -9): write nothing, the re-run redoes this task
        os._exit(1)
    token = task_token(task)
    for table, pieces in tables.items():
        merged = pa.concat_tables(pieces, promote_options="default")
        write_parquet_atomic(merged, part_path(parts_root, table, token))
        result.rows[table] = merged.num_rows
    if result.errors:
        write_parquet_atomic(error_rows(result.errors), part_path(parts_root, "embed_errors", token))
    return result


_WORKER: dict = {}


def init_worker(params: list[dict], runtime: dict, parts_root: str) -> None:
    """An embed worker process's initializer: rebuild the extractors once (the pool,
    :func:`featurestore.workers.worker_pool`, makes the worker exit with its parent)."""
    _WORKER["parent"] = os.getppid()
    _WORKER["extractors"] = [registry.from_params(p, **runtime) for p in params]
    _WORKER["parts_root"] = Path(parts_root)


def _worker_task(task: list[FileTask]) -> TaskResult:
    return run_task(_WORKER["extractors"], task, _WORKER["parts_root"],
                    still_wanted=lambda: os.getppid() == _WORKER["parent"])


def execute(extractors: list[Extractor], tasks: Iterable[list[FileTask]], parts_root: Path, workers: int,
            runtime: dict) -> Iterator[TaskResult]:
    """Results of ``tasks`` (read lazily: the pool's feeder takes a task when a worker's pipe has room) as they
    finish; one worker, or a single task, runs inline with the parent's extractors."""
    tasks = iter(tasks)
    head = list(itertools.islice(tasks, max(1, workers)))    # enough to know how many workers have work
    if workers <= 1 or len(head) <= 1:
        for task in itertools.chain(head, tasks):
            yield run_task(extractors, task, parts_root)
        return
    params = [ex.params() for ex in extractors]
    n = len(head)
    for ex in extractors:
        ex.release()              # each worker loads its own model: the parent's checked copy is not needed
    with worker_pool(n, init_worker, (params, runtime, str(parts_root)), env=pool_env(n)) as pool:
        yield from pool.imap_unordered(_worker_task, itertools.chain(head, tasks), chunksize=1)


class EmbedActor:
    """One embed actor's state: its node sees the store's ``parts/`` and the audio, and the extractors are built
    once (one interpreter thread each); calling it embeds one task (:func:`run_task`) and returns
    its :class:`TaskResult` (metadata only: the rows go to the part files)."""

    def __init__(self, params: list[dict], runtime: dict, parts_root: str, audio_root: str, lock_file: str,
                 holder: dict | None):
        from embed.ray_engine import check_visible

        check_visible([parts_root, audio_root])
        self.extractors = [registry.from_params(p, **runtime) for p in params]
        self.parts_root = Path(parts_root)
        self.lock_file, self.holder = Path(lock_file), holder

    def still_wanted(self) -> bool:
        """False once another run holds the job's lock: this actor outlived its driver (killed), and the new
        run plans these windows again, so this one must write nothing."""
        if not self.holder:
            return True
        now = StoreLock(self.lock_file.parent, self.lock_file.name).holder() or {}
        return all(now.get(k) == self.holder.get(k) for k in ("pid", "host", "started_at"))

    def __call__(self, task: list[FileTask]) -> TaskResult:
        return run_task(self.extractors, task, self.parts_root, still_wanted=self.still_wanted)


def execute_ray(extractors: list[Extractor], tasks: Iterable[list[FileTask]], parts_root: Path, audio_root: Path,
                actors: int, runtime: dict, lock_file: Path, holder: dict | None, stats=None) -> Iterator[TaskResult]:
    """:func:`execute` on the Ray cluster: the results (:class:`TaskResult`) of ``tasks`` as
    they finish, each task embedded by an :class:`EmbedActor` (extractors rebuilt from their params once per
    actor, one interpreter thread, extractors one after another: every actor has one CPU)."""
    from functools import partial

    from embed.extractors import ONE_THREAD_ENV, OVERLAP_ENV
    from embed.ray_engine import run_actor_tasks

    params = [ex.params() for ex in extractors]
    for ex in extractors:
        ex.release()              # the actors load their own models
    make = partial(EmbedActor, params, runtime, str(parts_root), str(audio_root), str(lock_file), holder)
    tasks = iter(tasks)
    while chunk := list(itertools.islice(tasks, RAY_CHUNK_TASKS)):   # the driver holds one chunk, not the plan
        yield from run_actor_tasks(make, chunk, actors=actors, env={**ONE_THREAD_ENV, OVERLAP_ENV: "0"}, stats=stats)


# ---------------------------------------------------------------------------- the job
@dataclass
class EmbedSummary:
    store: str
    data_dir: str
    shard: tuple[int, int]
    workers: int
    versions: dict[str, str]
    windows_in_scope: dict[str, int]
    windows_before: dict[str, int]
    windows_now: dict[str, int]
    windows_stored: dict[str, int]
    rows_written: dict[str, int]
    files: int
    audio_s: float
    wall_s: float
    errors: list[dict]
    notes: list[str]
    engine: str = "local"
    actor_startup_s: float | None = None   # --engine ray: pipeline start -> every actor's models built

    def render(self) -> str:
        rate = self.audio_s / self.wall_s if self.wall_s > 0 else 0.0
        lines = [f"embed: store {self.store}, audio {self.data_dir}, shard {self.shard[0]}/{self.shard[1]}, "
                 f"{self.workers} {'Ray actor(s)' if self.engine == 'ray' else 'worker(s)'}"]
        for name, version in self.versions.items():
            lines.append(f"  {name:<10} {version}: {self.windows_now.get(name, 0)} window(s) embedded now, "
                         f"{self.windows_before.get(name, 0)} already stored, {self.windows_stored.get(name, 0)}/"
                         f"{self.windows_in_scope.get(name, 0)} of this shard's windows stored")
        lines.append(f"  {self.files} file(s), {self.audio_s:.1f} s of audio in {self.wall_s:.1f} s "
                     f"({rate:.1f} audio-s per s)")
        if self.rows_written:
            lines.append("  rows written: " + ", ".join(f"{t} {n}" for t, n in sorted(self.rows_written.items())))
        lines += [f"  note: {n}" for n in self.notes]
        files = sorted({e["file"]: e["message"] for e in self.errors}.items())
        if files:
            lines.append(f"  {len(files)} file(s) skipped (recorded in embed_errors; fix and re-run):")
            lines += [f"    {message}" for _, message in files[:20]]
            if len(files) > 20:
                lines.append("    ...")
        return "\n".join(lines)


def open_store(store_dir: str | os.PathLike, wait_s: float = LOCK_WAIT_SECONDS) -> FeatureStore:
    """Open the store read-write, waiting (said on stderr) while another process (another shard) writes it."""
    return FeatureStore.open(store_dir, create=False, wait_s=wait_s)


def data_dir_of(store: FeatureStore) -> Path:
    if not store.has_table("ingest_runs"):
        raise StoreError(f"{store.root}: no ingest run recorded; run python -m pipelines.ingest first")
    row = store.first("SELECT data_dir FROM ingest_runs ORDER BY run_at DESC LIMIT 1")
    return Path(row[0])


def _done_sql(store: FeatureStore, ex: Extractor) -> str | None:
    """SQL of the window ids stored for ``ex``'s version (read from its part files), None when it has none."""
    if not store.part_files(ex.table):
        return None
    return (f"SELECT DISTINCT window_id FROM read_parquet({sql_str(store.part_glob(ex.table))}, union_by_name = true) "
            f"WHERE extractor_version = {sql_str(ex.version)}")


def shard_sql(key_sql: str, shard: tuple[int, int]) -> str:
    """:func:`in_shard` as an SQL condition on the file key ``key_sql`` (the same sha1 digits, so the same files)."""
    return f"('0x' || left(sha1({key_sql}), 8))::UBIGINT % {int(shard[1])} = {int(shard[0])}"


@dataclass
class Plan:
    """What a run will embed, written by DuckDB to a Parquet file (``path``: one row per window in scope, in
    file order: key, window_id, start_s, audio_end_s, ``done_<i>`` per extractor) so the driver's memory does
    not grow with the store: it reads the plan back in batches (:func:`_plan_files`)."""

    path: Path
    scope: int                 # windows of this shard (and sources)
    before: list[int]          # per extractor: of those, already stored
    files: int                 # files with a window to embed
    seconds: float             # their audio seconds


def _write_plan(store: FeatureStore, exs: list[Extractor], shard: tuple[int, int], sources: list[str] | None,
                path: Path) -> Plan:
    """The windows of this shard and sources, each with whether every extractor version has it stored: one
    DuckDB query (the windows table left-joined with each version's stored ids), sorted and spilled by DuckDB,
    written to ``path``."""
    present = sorted(r[0] for r in store.rows("SELECT DISTINCT source FROM windows"))
    unknown = sorted(set(sources or []) - set(present))
    if unknown:
        raise DataError(f"no windows from source(s) {unknown} in the store; sources present: {present}")
    joins, flags = [], []
    for i, ex in enumerate(exs):
        done = _done_sql(store, ex)
        if done is None:
            flags.append(f"false AS done_{i}")
        else:
            joins.append(f"LEFT JOIN ({done}) d{i} ON d{i}.window_id = w.window_id")
            flags.append(f"d{i}.window_id IS NOT NULL AS done_{i}")
    where = [shard_sql("w.source || '/' || w.filename", shard)]
    if sources:
        where.append(f"w.source IN ({', '.join(sql_str(x) for x in sources)})")
    store.rows(f"COPY (SELECT w.source || '/' || w.filename AS key, w.window_id, w.start_s, w.audio_end_s, "
               f"{', '.join(flags)} FROM windows w {' '.join(joins)} WHERE {' AND '.join(where)} "
               f"ORDER BY w.source, w.filename, w.start_s) TO {sql_str(str(path))} (FORMAT parquet)")
    planned = sql_str(str(path))
    done_cols = [f"done_{i}" for i in range(len(exs))]
    counts = store.first(f"SELECT count(*), {', '.join(f'coalesce(sum({c}::INT), 0)' for c in done_cols)} "
                         f"FROM {planned}")
    todo = " OR ".join(f"NOT {c}" for c in done_cols) or "false"
    files, seconds = store.first(f"SELECT count(*), coalesce(sum(s), 0) FROM (SELECT max(audio_end_s) AS s "
                                 f"FROM {planned} GROUP BY key HAVING bool_or({todo}))")
    return Plan(path, int(counts[0]), [int(c) for c in counts[1:]], int(files), float(seconds))


def _plan_files(path: Path, exs: list[Extractor], data: Path) -> Iterator[FileTask]:
    """The files of a plan with a window to embed, read lazily in plan (file) order."""
    import pyarrow.parquet as pq

    def task(key: str, rows: list[tuple]) -> FileTask | None:
        todo = {ex.version: [(w, start) for w, start, _, done in rows if not done[i]] for i, ex in enumerate(exs)}
        todo = {v: t for v, t in todo.items() if t}
        return FileTask(key, str(data / key), max(r[2] for r in rows), todo) if todo else None

    key, rows = None, []
    for batch in pq.ParquetFile(path).iter_batches(PLAN_BATCH_ROWS):
        cols = batch.to_pydict()
        done = list(zip(*(cols[f"done_{i}"] for i in range(len(exs))), strict=True)) if exs else \
            [()] * batch.num_rows
        for k, w, start, end, d in zip(cols["key"], cols["window_id"], cols["start_s"], cols["audio_end_s"], done,
                                       strict=True):
            if k != key:
                if rows and (f := task(key, rows)) is not None:
                    yield f
                key, rows = k, []
            rows.append((w, start, end, d))
    if rows and (f := task(key, rows)) is not None:
        yield f


_NEEDS_MODEL = ("custom", "cnn", "perch")   # families whose --extractor needs --model


def recreate_command(table: str) -> str:
    """The embed command that re-creates the rows of part table ``table`` (``{store}``: the store folder);
    recorded in the table's ``parts/<table>.json``, so an error about a damaged part of it names this command."""
    families = [cls for cls in registry.FAMILIES.values() if cls.table == table]
    words = ["python -m pipelines.embed --store {store}"]
    if families:
        words.append(f"--extractor {','.join(cls.family for cls in families)}")
        if any(cls.family in _NEEDS_MODEL for cls in families):
            words.append("--model MODEL")
    return " ".join(words)


def _quarantine_damaged(store: FeatureStore, extractors: list[str]) -> None:
    """Move damaged parts of the embed tables to quarantine/ (the caller holds the writer lock), saying so at
    once on stderr: their windows then count as not stored, so this run (or the one named) embeds them again."""
    families = [registry.FAMILIES.get(name.partition(":")[0]) for name in extractors]
    ours = {cls.table for cls in families if cls is not None} | {"embed_errors"}
    for part, target in store.quarantine_parts(PART_TABLES):
        command = recreate_command(part.table).replace("{store}", str(store.root))
        then = ("this run embeds its windows again" if part.table in ours else
                "this run records its extractors' versions again (others' when they next run)"
                if part.table == VERSIONS_TABLE else f"run {command} to embed its windows again")
        print(f"warning: moved damaged part {part.path.relative_to(store.root)} ({part.reason}) to "
              f"{target.relative_to(store.root)}; {then}", file=sys.stderr, flush=True)


def _prepare(store: FeatureStore, extractors: list[Extractor]) -> None:
    for name, keys in PART_TABLES.items():
        store.register_part_table(name, keys, recreate=recreate_command(name))
    known = set()
    if store.part_files(VERSIONS_TABLE):
        glob = store.part_glob(VERSIONS_TABLE).replace("'", "''")
        known = {r[0] for r in store.rows(f"SELECT DISTINCT extractor_version FROM read_parquet('{glob}')")}
    for ex in extractors:
        if ex.version not in known:
            store.append_part(VERSIONS_TABLE, version_row(ex))
        for name, (table, params) in ex.side_tables().items():
            store.write_table(name, table, params=params)


def _forget_fixed_errors(store: FeatureStore, planned: str, missing: set[tuple[str, str]]) -> None:
    """Drop ``embed_errors`` rows of this run's files (those of the plan ``planned``) whose windows are now all
    stored."""
    if not store.part_files("embed_errors"):
        return
    stale = store.rows("SELECT file, extractor_version FROM embed_errors")
    if not stale:
        return
    files = {r[0] for r in store.rows(f"SELECT DISTINCT key FROM {planned} WHERE key IN "
                                      "(SELECT file FROM embed_errors)")}
    if not any(f in files and (f, v) not in missing for f, v in stale):
        return
    compact_parts(store, "embed_errors", keep=lambda t: t.filter(pa.array(
        [f not in files or (f, v) in missing for f, v in zip(t.column("file").to_pylist(),
                                                              t.column("extractor_version").to_pylist(),
                                                              strict=True)], pa.bool_())))


def run_embed(store_dir: str | os.PathLike, extractors: str | list[str] | tuple[str, ...] = ("birdnet", "classical"),
              *, shard: str | tuple[int, int] | None = None, **options) -> EmbedSummary:
    """Embed every window of the store not yet stored for each extractor version; see the module docstring.

    One run per shard at a time: a second embed of the same shard on the same store stops at once
    and names the first (``embed-<i>of<n>.lock`` in the store); other shards run side by side.

    ``engine="ray"`` runs the tasks as Ray actors (:mod:`embed.ray_engine`) on the cluster of ``address``
    (default ``$RAY_ADDRESS``, else a Ray runtime started here for the call), ``actors`` of them (default:
    the cluster's CPUs); the features are bit-identical to ``engine="local"`` (``workers`` processes).
    """
    root = Path(store_dir).expanduser()
    if not (root / CATALOG_FILE).exists():
        raise StoreError(f"no feature store at {root} (missing {CATALOG_FILE}); run pipelines.ingest first")
    i, n = parse_shard(shard)
    lock = StoreLock(root, f"embed-{i}of{n}.lock")
    try:
        lock.acquire()
    except StoreBusyError as exc:
        raise StoreBusyError(f"shard {i}/{n} is already being embedded: {exc}") from None
    try:
        return _run_embed(root, extractors, shard=(i, n), **options)
    finally:
        lock.release()


def _run_embed(store_dir: str | os.PathLike, extractors: str | list[str] | tuple[str, ...] = ("birdnet", "classical"),
               *, workers: int | None = None, shard: str | tuple[int, int] | None = None,
               progress: Callable[[float], object] | None = None, engine: str = "local", address: str | None = None,
               actors: int | None = None, **options) -> EmbedSummary:
    """Embed every window of the store not yet stored for each extractor version; see the module docstring."""
    if engine not in ("local", "ray"):
        raise UserInputError(f"--engine {engine!r}: choose local or ray")
    if engine == "ray":
        from embed.ray_engine import ray_session

        with ray_session(address) as cluster:
            if progress is not None:   # a quiet run (or a library call) prints nothing
                print(f"embed: {cluster.describe()}", file=sys.stderr, flush=True)
            n = actors or max(1, cluster.cpus)
            if actors and cluster.cpus and actors > cluster.cpus:
                raise UserInputError(f"--actors {actors}: the Ray cluster has {cluster.cpus} CPU(s) (one per actor); "
                                     f"pass --actors {cluster.cpus} or fewer, or add nodes")
            return _embed_planned(store_dir, extractors, workers=n, shard=shard, engine="ray", progress=progress,
                                  **options)
    if address is not None or actors is not None:
        raise UserInputError("--address and --actors are for --engine ray; the local engine takes --workers")
    return _embed_planned(store_dir, extractors, workers=workers, shard=shard, engine="local", progress=progress,
                          **options)


def _embed_planned(store_dir: str | os.PathLike, extractors: str | list[str] | tuple[str, ...], *, workers: int | None,
                   shard: str | tuple[int, int] | None, engine: str, data_dir: str | os.PathLike | None = None,
                   sources: list[str] | None = None, hop_s: float | None = None, batch_size: int | None = None,
                   threads: int = 1, full_logits: bool = False, model: str | os.PathLike | None = None,
                   model_config: str | os.PathLike | dict = "perch_v2", cnn_model: str | os.PathLike | None = None,
                   perch_model: str | os.PathLike | None = None,
                   labels_file: str | None = None, cache_dir: str | os.PathLike | None = None,
                   task_seconds: float | None = None, progress: Callable[[float], object] | None = None,
                   on_total: Callable[[float], object] | None = None) -> EmbedSummary:
    t_start = time.perf_counter()
    names = [n.strip() for n in (extractors.split(",") if isinstance(extractors, str) else extractors) if n.strip()]
    shard = parse_shard(shard)
    workers = max(1, workers or os.cpu_count() or 1)
    with open_store(store_dir) as store:
        _quarantine_damaged(store, names)
        data = Path(data_dir).expanduser().resolve() if data_dir else data_dir_of(store)
        if not data.is_dir():
            raise DataError(f"audio folder {data} not found (from ingest_runs; pass --data to override)")
        taxonomy = store.read_table("taxonomy")
        exs = [registry.build(name, taxonomy, hop_s=hop_s, batch_size=batch_size, threads=threads,
                              full_logits=full_logits, model=model, model_config=model_config,
                              cnn_model=cnn_model, perch_model=perch_model, labels_file=labels_file,
                              cache_dir=cache_dir) for name in names]
        _prepare(store, exs)
        root, parts_root = str(store.root), store.root / "parts"
        plan_dir = tempfile.TemporaryDirectory(prefix="embed-plan-")
        try:
            plan = _write_plan(store, exs, shard, sources, Path(plan_dir.name) / "plan.parquet")
        except BaseException:
            plan_dir.cleanup()
            raise
    try:
        scope = {ex.name: plan.scope for ex in exs}
        before = {ex.name: plan.before[i] for i, ex in enumerate(exs)}
        tasks = iter_tasks(_plan_files(plan.path, exs, data), task_target(plan.seconds, workers, task_seconds))
        if on_total:
            on_total(plan.seconds)
        if plan.files:
            for ex in exs:
                ex.warm_up()  # shared files (BirdNET's patched model) built once, before workers start

        runtime = {"batch_size": batch_size, "threads": threads, "cache_dir": cache_dir}
        actor_stats = None
        now: dict[str, int] = {}
        rows: dict[str, int] = {}
        errors: list[dict] = []
        file_notes: list[str] = []
        audio_s, n_files = 0.0, 0
        if engine == "ray":
            from embed.ray_engine import ActorStats

            lock = StoreLock(root, f"embed-{shard[0]}of{shard[1]}.lock")
            actor_stats = ActorStats()
            results = execute_ray(exs, tasks, parts_root, data, workers, runtime, lock.path, lock.holder(), actor_stats)
        else:
            results = execute(exs, tasks, parts_root, workers, runtime)
        for result in results:
            for k, v in result.windows.items():
                now[k] = now.get(k, 0) + v
            for k, v in result.rows.items():
                rows[k] = rows.get(k, 0) + v
            errors += result.errors
            file_notes += result.notes
            audio_s += result.audio_s
            n_files += result.files
            if progress:
                progress(result.audio_s)

        with open_store(root) as store:
            store.refresh_part_views()
            stored, missing = {}, set()
            planned = sql_str(str(plan.path))
            for ex in exs:
                done = _done_sql(store, ex)
                if done is None:
                    stored[ex.name] = 0
                    missing |= {(r[0], ex.version) for r in store.rows(f"SELECT DISTINCT key FROM {planned}")}
                    continue
                stored[ex.name] = int(store.first(f"SELECT count(*) FROM {planned} WHERE window_id IN ({done})")[0])
                missing |= {(r[0], ex.version) for r in store.rows(
                    f"SELECT DISTINCT key FROM {planned} WHERE window_id NOT IN ({done})")}
            _forget_fixed_errors(store, planned, missing)
    finally:
        plan_dir.cleanup()   # the plan: a temporary Parquet file, gone with the run
    notes = [n for ex in exs for n in ex.notes] + file_notes
    return EmbedSummary(root, str(data), shard, workers, {ex.name: ex.version for ex in exs}, scope, before, now,
                        stored, rows, n_files, audio_s, time.perf_counter() - t_start, errors, notes, engine,
                        actor_stats.startup_s if actor_stats else None)
