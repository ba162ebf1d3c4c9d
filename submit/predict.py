"""Predict any head, single or stacked: audio files -> the head's predictor -> validated submission rows.

:func:`open_predictor` picks the predictor of a head folder: :class:`submit.head_predictor.HeadPredictor`
for one head bundle, :class:`submit.stack_predictor.StackPredictor` for a stacked head (one embedding pass
per file feeds every base head; the level-2 model and post steps run over all rows once every file is
predicted). Both answer the :class:`Predictor` protocol. Every file gets exactly its expected rows
(:func:`submit.submission.expected_row_ids`); a bad file gets the prior where it has no usable audio.
The audio list (:func:`submit.submission.list_audio`: the folder's own files in a format soundfile decodes
here; sub-folders are not searched) refuses two files with one stem before any work, and what it skips
(sub-folders, m4a/aac, other suffixes) is one warning naming them; files not named as competition
soundscapes and files below 32 kHz are predicted, with a warning.
Only numpy, scipy, soundfile, ai-edge-litert, lightgbm and scikit-learn are imported on this path.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from embed.extractors import pool_env
from featurestore.audio_qa import low_rate_warning, unreadable_audio
from featurestore.errors import BundleError, DataError
from featurestore.windows import WINDOW_SECONDS
from featurestore.workers import worker_pool
from models.bundle import HeadBundle
from submit.head_predictor import HeadPredictor, build_extractors
from submit.submission import (
    expected_ids_for_audio,
    expected_window_count,
    file_window_ids,
    header_info,
    list_audio,
    name_warning,
    read_header,
    write_submission,
)


@runtime_checkable
class Predictor(Protocol):
    """What predict needs of a head, single (:class:`HeadPredictor`) or stacked
    (:class:`submit.stack_predictor.StackPredictor`)."""

    head_id: str
    class_names: list[str]
    extractors: list
    prior: np.ndarray                  # what ``predict_file`` rows fall back to (the columns of its rows)
    requests: list[tuple[str, str]]    # the (feature view, pooling) pairs it reads from a file's embedding

    def predict_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Row ids and probabilities of one file's decodable windows (raises on an undecodable file)."""

    def rows_from_features(self, path: Path, feats: dict) -> tuple[list[str], np.ndarray]:
        """:meth:`predict_file` given the file's embedded views."""

    def finish(self, window_ids: list[str], rows: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
        """All files' rows -> (windows, classes) probabilities in :attr:`class_names` order."""

    @property
    def output_prior(self) -> np.ndarray:
        """What a row with no prediction at all gets in the final output."""


def open_predictor(head_dir: str | os.PathLike, **runtime) -> Predictor:
    """The predictor of a head folder (:func:`stack.bundle.load_head_dir`): :class:`HeadPredictor`, or a
    stacked head's :class:`submit.stack_predictor.StackPredictor`. Rebuilds the extractors (BundleError on
    a version mismatch; ``runtime``: threads, batch_size, cache_dir, model paths)."""
    from stack.bundle import StackBundle, load_head_dir

    head = load_head_dir(head_dir)
    if isinstance(head, StackBundle):
        from submit.stack_predictor import StackPredictor

        return StackPredictor(head, **runtime)
    return HeadPredictor(head, build_extractors(head, **runtime))


def predict_soundscape(path: Path, bundle: HeadBundle, extractors: list) -> tuple[list[str], np.ndarray, str | None]:
    """Every expected row of one soundscape (:func:`expected_row_ids`) and a warning, or None.

    Never raises. A file that is missing, empty, undecodable or holds NaN/inf samples gets the
    class prior on all its rows (NaN/inf samples are not repaired: the decoder's output cannot be
    trusted, so no window of it is scored). A file with fewer decodable windows than expected
    (truncated, or shorter than the competition's 60 s) is predicted on the windows it has and
    gets the prior on the rest; so does a window whose probabilities come out non-finite. A file below
    32 kHz is predicted and warned about in ingest's words (:func:`featurestore.audio_qa.low_rate_warning`).
    """
    return complete_rows(path, HeadPredictor(bundle, extractors))


def complete_rows(path: Path, predictor) -> tuple[list[str], np.ndarray, str | None]:
    """:func:`predict_soundscape` for any predictor (``predict_file`` and ``prior``, see :class:`HeadPredictor`)."""
    return file_rows(path, predictor)[:3]


def file_rows(path: Path, predictor) -> tuple[list[str], np.ndarray, str | None, np.ndarray]:
    """:func:`complete_rows` plus which rows hold a prediction from audio (False: the prior was written;
    a stacked head's ``finish`` runs its level-2 model on the usable rows only)."""
    n = expected_window_count(path)
    expected = file_window_ids(path, np.arange(n) * WINDOW_SECONDS)[1]
    prior = predictor.prior
    fallback = np.tile(prior, (n, 1))
    usable = np.zeros(n, bool)
    if not path.exists():
        return expected, fallback, f"{unreadable_audio(path)} (wrote the class prior for its {n} rows)", usable
    try:
        row_ids, probs = predictor.predict_file(path)
    except Exception as exc:  # any decode/model failure of one file must not sink the submission
        reason = str(exc) if str(path) in str(exc) else f"{path}: {type(exc).__name__}: {exc}"
        if _gone_or_empty(path):   # embed's and ingest's words (featurestore.audio_qa.unreadable_audio)
            reason = str(unreadable_audio(path))
        return expected, fallback, f"{reason} (wrote the class prior for its {n} rows)", usable
    got = dict(zip(row_ids, probs, strict=True))
    out = fallback
    bad = 0
    for i, rid in enumerate(expected):
        if rid in got:
            if np.all(np.isfinite(got[rid])):
                out[i] = np.clip(got[rid], 0.0, 1.0)
                usable[i] = True
            else:
                bad += 1
    header = header_info(path)
    problems = [low] if header and (low := low_rate_warning(header[1])) else []
    found = sum(rid in got for rid in expected)
    if found < n:
        said = f"header says {header[0]:.2f} s" if header is not None else "header unreadable"
        problems.append(f"only {found} of its {n} expected {WINDOW_SECONDS}-s windows hold decodable audio "
                        f"({said}; truncated or short file): the class prior for the other {n - found} rows")
    if bad:
        problems.append(f"{bad} window(s) gave non-finite probabilities: the class prior for them")
    return expected, out, (f"{path}: " + "; ".join(problems)) if problems else None, usable


def _gone_or_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


_WORKER: dict = {}


@dataclass(frozen=True)
class FileTiming:
    """How long one file took where it was predicted (:func:`predict_one_timed`): the runtime's report keeps
    these so the dry run can tell one-time costs from the steady per-file rate (:mod:`submit.dryrun`)."""

    seconds: float           # file_rows in the worker: decode, extractors, heads (not the predictor's load)
    first: bool              # the first file of its worker (or of an in-process run): it pays the warm-up
    load_s: float            # the worker's predictor load, on its first file (0 otherwise, or loaded by the caller)
    windows: int             # 5-s windows of audio its header states (0: unreadable; its cost is not a file's)
    pool: int = 1            # processes predicting at once (the pool's size)

    def to_json(self) -> dict:
        return {"s": round(self.seconds, 4), "first": self.first, "load_s": round(self.load_s, 4),
                "windows": self.windows, "pool": self.pool}


def init_worker(head_dir: str, runtime: dict) -> None:
    """A predict worker process's initializer: open the head's predictor once (:func:`predict_one` uses it)."""
    t = time.perf_counter()
    _WORKER.update(predictor=open_predictor(head_dir, **runtime))
    _WORKER.update(load_s=time.perf_counter() - t, files=0)


def predict_one(path: str) -> tuple[str, list[str], np.ndarray, str | None, np.ndarray]:
    """``(path, *file_rows)`` of one file with the worker's predictor (:func:`init_worker`)."""
    return predict_one_timed(path)[0]


def predict_one_timed(path: str) -> tuple[tuple[str, list[str], np.ndarray, str | None, np.ndarray], FileTiming]:
    """:func:`predict_one` and its :class:`FileTiming` (``pool`` left 1: the caller knows the pool)."""
    first = not _WORKER.get("files")
    t = time.perf_counter()
    rows = (path, *file_rows(Path(path), _WORKER["predictor"]))
    seconds = time.perf_counter() - t
    _WORKER["files"] = _WORKER.get("files", 0) + 1
    header = header_info(Path(path))
    windows = max(1, round(header[0] / WINDOW_SECONDS)) if header else 0
    return rows, FileTiming(seconds, first, _WORKER.get("load_s", 0.0) if first else 0.0, windows)


class RayFileRows:
    """A Ray actor's callable (``--engine ray``): opens the head's predictor once, then :func:`predict_one`."""

    def __init__(self, head_dir: str, runtime: dict):
        from embed.ray_engine import check_visible

        check_visible([head_dir])
        init_worker(head_dir, runtime)

    def __call__(self, item: tuple[int, str]) -> tuple:
        return (item[0], *predict_one(item[1]))


def iter_predictions(head_dir: Path, files: list[Path], workers: int, runtime: dict,
                     predictor=None, engine: str = "local", address: str | None = None,
                     actors: int | None = None, timings: list[FileTiming] | None = None) -> Iterator[tuple]:
    """(path, row_ids, probs, error, usable rows) per file, in file order (``predictor``: an already loaded one, used
    when predicting in this process; ``engine`` ``ray``: the files run on a Ray actor pool, results put back in
    file order as they arrive - each is one file's rows, a few KB). ``timings`` (a list, local engine) receives
    each file's :class:`FileTiming` as it is yielded."""
    if engine == "ray":
        import functools

        from embed.extractors import ONE_THREAD_ENV, OVERLAP_ENV
        from embed.ray_engine import ray_session, run_actor_tasks

        waiting: dict[int, tuple] = {}
        at = 0
        with ray_session(address) as cluster:
            for index, *rows in run_actor_tasks(functools.partial(RayFileRows, str(head_dir), runtime),
                                                list(enumerate(map(str, files))), actors=actors or cluster.cpus,
                                                env={**ONE_THREAD_ENV, OVERLAP_ENV: "0"}):
                waiting[index] = tuple(rows)
                while at in waiting:
                    yield waiting.pop(at)
                    at += 1
        return

    def unpack(results, pool: int) -> Iterator[tuple]:
        for rows, timing in results:
            if timings is not None:
                timings.append(dataclasses.replace(timing, pool=pool))
            yield rows

    if workers <= 1 or len(files) <= 1:
        if predictor is not None:
            _WORKER.update(predictor=predictor, load_s=0.0, files=0)   # loaded by the caller: its load is theirs
        else:
            init_worker(str(head_dir), runtime)
        yield from unpack(map(predict_one_timed, map(str, files)), 1)
        return
    n = min(workers, len(files))
    with worker_pool(n, init_worker, (str(head_dir), runtime), env=pool_env(n)) as pool:
        yield from unpack(pool.imap(predict_one_timed, map(str, files), chunksize=1), n)


def predict_audio(head_dir: str | os.PathLike, audio_dir: str | os.PathLike, columns: list[str], *,
                  workers: int = 1, runtime: dict | None = None, engine: str = "local",
                  address: str | None = None, actors: int | None = None,
                  progress: Callable[[int], object] | None = None,
                  on_start: Callable[[int], object] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Predict every audio file; returns (row_ids, probs in ``columns`` order, per-file warnings).

    The row ids are exactly :func:`expected_row_ids` of every file (what the validator expects);
    a bad file gets the class prior where it has no usable audio, and one warning.

    ``on_start(n_files)`` is called once every input is checked, before any file is decoded. The files are
    :func:`list_audio`'s: the folder's own files in a format soundfile decodes here; what it skips (sub-folders,
    m4a/aac, other suffixes) is the first returned warning, naming them. Two files with one stem are refused
    first; files not named as competition soundscapes get one warning for the run
    (:func:`submit.submission.name_warning`), next.
    """
    head_dir = Path(head_dir)
    skipped: list[str] = []
    files = list_audio(audio_dir, on_skipped=skipped.append)   # refuses two files with one stem before any work
    if not files:
        raise DataError(f"no audio files to predict in {audio_dir}" + (f" ({skipped[0]})" if skipped else "")
                        + "; point --audio at the folder holding the soundscapes (.ogg, .flac, .wav, ...)")
    predictor = open_predictor(head_dir, **(runtime or {}))  # fails fast on a version mismatch, before any work
    missing = [c for c in columns if c not in predictor.class_names]
    if missing:
        raise BundleError(f"submission columns {missing[:5]} are not classes of head {predictor.head_id}")
    order = [predictor.class_names.index(c) for c in columns]
    if on_start:
        on_start(len(files))
    row_ids: list[str] = []
    window_ids: list[str] = []
    blocks: list[np.ndarray] = []
    usable: list[np.ndarray] = []
    errors: list[str] = skipped + ([names] if (names := name_warning(files)) else [])
    for path, ids, probs, error, ok in iter_predictions(head_dir, files, workers, runtime or {}, predictor,
                                                        engine, address, actors):
        row_ids += ids
        window_ids += file_window_ids(Path(path), np.arange(len(ids)) * WINDOW_SECONDS)[0]
        blocks.append(probs)
        usable.append(ok)
        if error:
            errors.append(error)
        if progress:
            progress(1)
    probs = predictor.finish(window_ids, np.vstack(blocks), np.concatenate(usable))
    return row_ids, np.asarray(probs)[:, order], errors


@dataclass(frozen=True)
class SubmissionSummary:
    head_id: str
    path: Path
    n_rows: int
    n_classes: int
    warnings: list[str]

    def render(self) -> str:
        return (f"wrote {self.path}: {self.n_rows} rows x {self.n_classes} classes from head {self.head_id} "
                "(validated)")


def predict_submission(store_dir: str | os.PathLike, audio_dir: str | os.PathLike, out: str | os.PathLike, *,
                       head_id: str = "best", sample: str | os.PathLike | None = None, workers: int = 1,
                       runtime: dict | None = None, engine: str = "local", address: str | None = None,
                       actors: int | None = None, make_progress: Callable[[int, str], object] | None = None,
                       on_warning: Callable[[str], object] | None = None) -> SubmissionSummary:
    """Predict ``audio_dir`` with a bundle of the store and write a validated submission to ``out``.

    ``head_id`` ``"best"`` is the leaderboard's best full-CV head; the columns follow ``sample``
    (a sample_submission.csv) or else the store's taxonomy order. The file is validated (columns,
    exactly :func:`expected_ids_for_audio` as rows, numbers in [0, 1]) before it replaces ``out``.
    ``engine`` ``ray`` runs the files on a Ray actor pool (``address``, ``actors``; the same rows).
    ``make_progress(n_files, description)`` returns a bar (``update``/``close``), made once every
    input is checked. Per-file problems (see :func:`predict_soundscape`) go to ``on_warning`` as
    soon as every file is predicted, before the file is written, and are returned too.
    """
    from featurestore.store import FeatureStore
    from models.experiments import resolve_head_id
    from models.frame import class_names_of
    from stack.bundle import head_folder

    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        head_id = resolve_head_id(store, head_id)
        columns = read_header(Path(sample))[1:] if sample else class_names_of(store)
        head_dir = head_folder(store.root, head_id)
    bars: list = []

    def on_start(n_files: int) -> None:
        if make_progress:
            bars.append(make_progress(n_files, f"predict {head_id}"))

    try:
        row_ids, probs, warnings = predict_audio(head_dir, audio_dir, columns, workers=workers, runtime=runtime,
                                                 engine=engine, address=address, actors=actors, progress=lambda n: bars and bars[0].update(n), on_start=on_start)
    finally:
        for bar in bars:
            bar.close()
    for warning in warnings if on_warning else ():
        on_warning(warning)
    # validated before it replaces ``out``: a failed check leaves no (or the previous) file
    path = write_submission(out, row_ids, probs, columns, sample_submission=sample or ["row_id", *columns],
                            expected_ids=expected_ids_for_audio(audio_dir))
    return SubmissionSummary(head_id, path, len(row_ids), len(columns), warnings)
