"""Batch prediction for monitoring data: any audio -> one row per 5-s window (or per window and class).

:func:`predict_windows` runs a trained head (single or stacked, :func:`submit.predict.open_predictor`) over
every audio file under a folder - any duration, any name, nested folders - and writes Parquet or CSV rows:

* ``wide`` (default): ``file, start_s, end_s`` and one float32 column per class (the head's class order);
* ``long``: ``file, start_s, end_s, class, prob``, only the pairs with ``prob >= min_prob``.

``file`` is the path relative to the audio folder; a window is ``[start_s, end_s)`` on the store's
soundscape grid (``round(seconds / 5)`` windows from 0 s; a last window past the end is zero-padded, as
the embed job pads it). A stacked head's level-2 model and post steps run file by file, which is how
they group rows (per-file features, neighbours), so a file's rows do not depend on the other files.

Guarantees:

* **Resumable.** Each file's rows are written atomically to one part in ``<out>.parts/`` (named by a hash
  of the file's relative path) the moment the file is predicted; a run killed at any point (``kill -9``
  included) and re-run with the same arguments predicts only the files without a part, and the output
  holds every window of every file exactly once. A re-run with another head or format is refused (its
  ``manifest.json`` says what the parts are), rather than mixing two heads' rows.
* **Whole or nothing.** ``out`` is written from the parts in file order to a temporary file and renamed
  over ``out`` (streamed part by part: memory does not grow with the number of files); the parts folder
  is removed after that. A file that cannot be decoded gets no rows and one warning, and is tried again
  by the next run (its part is never written).
* **Same numbers as predict.** On a competition soundscape the wide rows equal ``pipelines.predict``'s
  submission rows for the same head (tested), whichever engine ran them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurestore.errors import DataError, UserInputError
from featurestore.windows import WINDOW_SECONDS, is_audio

FORMATS = ("wide", "long")
SUFFIXES = (".parquet", ".csv")
MANIFEST = "manifest.json"


def audio_files(audio: str | os.PathLike) -> tuple[Path, list[str]]:
    """``(root, relative paths)`` of the audio to predict: every audio file under a folder (nested folders
    included, sorted by relative path), or one file. DataError when there is none."""
    audio = Path(audio).expanduser()
    if audio.is_file():
        if not is_audio(audio):
            raise DataError(f"{audio} is not an audio file (expected one of .ogg, .flac, .wav, .mp3)")
        return audio.parent, [audio.name]
    if not audio.is_dir():
        raise DataError(f"audio folder {audio} not found")
    files = sorted(p.relative_to(audio).as_posix() for p in audio.rglob("*") if is_audio(p) and p.is_file())
    if not files:
        raise DataError(f"no audio files (.ogg, .flac, .wav, .mp3) under {audio}")
    return audio, files


def part_name(relative: str) -> str:
    """The part file of one audio file: a hash of its relative path (stable across runs and machines)."""
    return hashlib.sha1(relative.encode()).hexdigest()[:20] + ".parquet"


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


@dataclass(frozen=True)
class WindowsSpec:
    """What a run writes; stored in the parts folder's manifest so a resume cannot mix two runs."""

    head_dir: str
    head_id: str
    fmt: str = "wide"
    min_prob: float = 0.0
    audio_root: str = ""

    def manifest(self, classes: list[str]) -> dict:
        return {"head_id": self.head_id, "head_dir": self.head_dir, "format": self.fmt,
                "min_prob": self.min_prob, "audio_root": self.audio_root, "classes": classes}


def file_table(relative: str, starts: np.ndarray, probs: np.ndarray, classes: list[str], fmt: str,
               min_prob: float):
    """The rows of one file's windows starting at ``starts`` (s) as a pyarrow table (``wide`` or ``long``, see
    the module docstring)."""
    import pyarrow as pa

    starts = np.asarray(starts, np.int32)
    ends = starts + WINDOW_SECONDS
    probs = np.asarray(probs, np.float32)
    if fmt == "wide":
        cols = {"file": pa.array([relative] * len(ends), pa.string()), "start_s": pa.array(starts),
                "end_s": pa.array(ends)}
        cols.update({c: pa.array(probs[:, j]) for j, c in enumerate(classes)})
        return pa.table(cols, metadata={"windows": str(len(ends))})
    win, cls = np.nonzero(probs >= min_prob)
    return pa.table({"file": pa.array([relative] * len(win), pa.string()), "start_s": pa.array(starts[win]),
                     "end_s": pa.array(ends[win]),
                     "class": pa.DictionaryArray.from_arrays(pa.array(cls.astype(np.int32)), pa.array(classes)),
                     "prob": pa.array(probs[win, cls])}, metadata={"windows": str(len(ends))})


def schema_of(classes: list[str], fmt: str):
    import pyarrow as pa

    head = [("file", pa.string()), ("start_s", pa.int32()), ("end_s", pa.int32())]
    if fmt == "wide":
        return pa.schema(head + [(c, pa.float32()) for c in classes])
    return pa.schema(head + [("class", pa.dictionary(pa.int32(), pa.string())), ("prob", pa.float32())])


@dataclass
class FileResult:
    """What a worker hands back for one file: only metadata (its rows are in its part)."""

    relative: str
    error: str | None = None


def predict_one_file(predictor, root: Path, relative: str, parts: Path, spec: WindowsSpec) -> FileResult:
    """Predict one file and write its part atomically (no part when it cannot be decoded)."""
    from featurestore.store import write_parquet_atomic
    from submit.submission import file_window_ids

    path = root / relative
    try:
        row_ids, probs = predictor.predict_file(path)
    except Exception as exc:  # one bad file must not sink a run over thousands
        reason = str(exc) if str(path) in str(exc) else f"{path}: {type(exc).__name__}: {exc}"
        return FileResult(relative, error=f"{reason} (no rows written; fix it and re-run to predict it)")
    probs = np.asarray(probs, np.float32)
    ok = np.all(np.isfinite(probs), axis=1)
    starts = np.array([int(r.rsplit("_", 1)[1]) for r in row_ids]) - WINDOW_SECONDS   # row id: <stem>_<end s>
    ids = file_window_ids(path, starts)[0]             # the window ids the stack groups a file's rows by
    probs = np.asarray(predictor.finish(ids, np.where(ok[:, None], probs, 0.0), ok), np.float32)
    write_parquet_atomic(file_table(relative, starts, probs, predictor.class_names, spec.fmt, spec.min_prob),
                         parts / part_name(relative))
    bad = int((~ok).sum())
    return FileResult(relative, f"{path}: {bad} window(s) gave non-finite probabilities: the head's prior for them"
                      if bad else None)


_WORKER: dict = {}


def init_worker(head_dir: str, runtime: dict) -> None:
    from submit.predict import open_predictor

    _WORKER.update(predictor=open_predictor(head_dir, **runtime))


def worker_file(job: tuple[str, str, str, WindowsSpec]) -> FileResult:
    root, relative, parts, spec = job
    return predict_one_file(_WORKER["predictor"], Path(root), relative, Path(parts), spec)


def run_local(head_dir: Path, jobs: list[tuple[str, str, str, WindowsSpec]], workers: int, runtime: dict,
              predictor) -> Iterator[FileResult]:
    """Results of ``jobs`` as they finish: in this process (one worker) or a spawned process pool."""
    from embed.extractors import pool_env
    from featurestore.workers import worker_pool

    if workers <= 1 or len(jobs) <= 1:
        _WORKER.update(predictor=predictor)
        yield from map(worker_file, jobs)
        return
    n = min(workers, len(jobs))
    with worker_pool(n, init_worker, (str(head_dir), runtime), env=pool_env(n)) as pool:
        yield from pool.imap_unordered(worker_file, jobs, chunksize=1)


def run_ray(head_dir: Path, jobs: list, runtime: dict, address: str | None, actors: int | None) -> Iterator:
    """Results of ``jobs`` as they finish on a Ray actor pool (:mod:`embed.ray_engine`), each actor opening the
    head once; the parts folder must be on a filesystem every node sees (checked by every actor)."""
    import functools

    from embed.extractors import ONE_THREAD_ENV, OVERLAP_ENV
    from embed.ray_engine import ray_session, run_actor_tasks

    with ray_session(address) as cluster:
        yield from run_actor_tasks(functools.partial(_RayPredictor, str(head_dir), runtime,
                                                     [jobs[0][0], jobs[0][2]] if jobs else []),
                                   jobs, actors=actors or cluster.cpus, env={**ONE_THREAD_ENV, OVERLAP_ENV: "0"})


@dataclass
class WindowsSummary:
    out: Path
    head_id: str
    fmt: str
    files: int
    resumed: int
    predicted: int
    windows: int
    rows: int
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        kept = f", {self.resumed} kept from an earlier run" if self.resumed else ""
        failed = sum(1 for w in self.warnings if "no rows written" in w)
        lines = [f"wrote {self.out}: {self.rows:,} {self.fmt} rows ({self.windows:,} windows) of "
                 f"{self.files - failed} file(s) from head {self.head_id} ({self.predicted} predicted now{kept})"]
        if failed:
            lines.append(f"  {failed} file(s) could not be predicted (warnings above); re-run to retry them")
        return "\n".join(lines)


def _open_parts(parts: Path, manifest: dict) -> set[str]:
    """The parts folder for ``manifest``: made, or resumed when it holds the same run; the part names present."""
    from featurestore.store import write_json_atomic

    parts.mkdir(parents=True, exist_ok=True)
    path = parts / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc}); delete {parts} to start over") from None
        if old != manifest:
            differs = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise UserInputError(f"{parts} holds the parts of another run (its {', '.join(differs)} differ); "
                                 f"finish that run with the same arguments, or delete {parts} or choose another --out")
    else:
        write_json_atomic(path, manifest)
    return {p.name for p in parts.glob("*.parquet")}


def _csv_schema(schema):
    """The CSV form of a rows schema: the long format's dictionary ``class`` column as plain text."""
    import pyarrow as pa

    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


def _merge(parts: Path, names: list[str], out: Path, schema) -> tuple[int, int]:
    """Write the parts ``names`` (in that order) to ``out`` atomically, streamed part by part; (rows, windows)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from featurestore.store import DiskFullGuard

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    csv = out.suffix == ".csv"
    rows = windows = 0
    try:
        with DiskFullGuard(out, out.parent):
            with (pacsv.CSVWriter(tmp, _csv_schema(schema)) if csv else
                  pq.ParquetWriter(tmp, schema, compression="zstd")) as writer:
                for name in names:
                    part = pq.read_table(parts / name)
                    windows += int((part.schema.metadata or {}).get(b"windows", b"0"))
                    writer.write_table(part.cast(_csv_schema(schema)) if csv else
                                       part.replace_schema_metadata(None).cast(schema))
                    rows += part.num_rows
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, windows


def predict_windows(store_dir: str | os.PathLike, audio: str | os.PathLike, out: str | os.PathLike, *,
                    head_id: str = "best", fmt: str = "wide", min_prob: float = 0.0, workers: int = 1,
                    engine: str = "local", address: str | None = None, actors: int | None = None,
                    runtime: dict | None = None, make_progress: Callable[[int, str], object] | None = None,
                    on_warning: Callable[[str], object] | None = None) -> WindowsSummary:
    """Predict every audio file under ``audio`` with a head of the store into ``out`` (.parquet or .csv);
    see the module docstring. ``engine`` ``ray``: the files run as tasks of a Ray actor pool
    (:func:`embed.ray_engine.run_actor_tasks`; ``address``, ``actors``), each actor opening the head once."""
    from featurestore.store import FeatureStore
    from models.experiments import resolve_head_id
    from stack.bundle import head_folder
    from submit.predict import open_predictor

    out = Path(out).expanduser()
    if fmt not in FORMATS:
        raise UserInputError(f"unknown windows format {fmt!r}; use one of {FORMATS}")
    if out.suffix not in SUFFIXES:
        raise UserInputError(f"--out {out}: write .parquet or .csv")
    if not out.parent.is_dir():
        raise UserInputError(f"--out {out}: folder {out.parent} does not exist")
    if not 0.0 <= min_prob <= 1.0:
        raise UserInputError(f"--min-prob {min_prob}: must be in [0, 1]")
    if fmt == "wide" and min_prob:
        raise UserInputError("--min-prob filters the long format only (add --long)")
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        head_id = resolve_head_id(store, head_id)
        head_dir = head_folder(store.root, head_id)
    root, files = audio_files(audio)
    predictor = open_predictor(head_dir, **(runtime or {}))   # a version mismatch fails before any work
    spec = WindowsSpec(str(Path(head_dir).resolve()), head_id, fmt, float(min_prob), str(root.resolve()))
    parts = parts_dir(out)
    present = _open_parts(parts, spec.manifest(list(predictor.class_names)))
    todo = [f for f in files if part_name(f) not in present]
    jobs = [(str(root), f, str(parts), spec) for f in todo]
    bar = make_progress(len(todo), f"predict {head_id}") if make_progress and todo else None
    warnings: list[str] = []
    try:
        if engine == "ray":
            results = run_ray(head_dir, jobs, runtime or {}, address, actors)
        elif engine == "local":
            results = run_local(head_dir, jobs, workers, runtime or {}, predictor)
        else:
            raise UserInputError(f"unknown engine {engine!r}; use local or ray")
        for result in results:
            if result.error:
                warnings.append(result.error)
                if on_warning:
                    on_warning(result.error)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    names = [part_name(f) for f in files if (parts / part_name(f)).exists()]
    rows, windows = _merge(parts, names, out, schema_of(list(predictor.class_names), fmt))
    if len(names) == len(files):
        shutil.rmtree(parts, ignore_errors=True)
    return WindowsSummary(out, head_id, fmt, len(files), len(files) - len(todo), len(todo), windows, rows, warnings)


class _RayPredictor:
    """A Ray actor's callable: checks it sees the audio and parts folders, opens the head once, predicts one
    file per call (see predict_windows)."""

    def __init__(self, head_dir: str, runtime: dict, folders: list[str]):
        from embed.ray_engine import check_visible
        from submit.predict import open_predictor

        check_visible([*folders, head_dir])
        self.predictor = open_predictor(head_dir, **runtime)

    def __call__(self, job: tuple[str, str, str, WindowsSpec]) -> FileResult:
        root, relative, parts, spec = job
        return predict_one_file(self.predictor, Path(root), relative, Path(parts), spec)
