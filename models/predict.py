"""Inference: audio files → a bundle's extractors → fold-averaged probabilities → submission rows.

Everything needed comes from the bundle (``heads/<head_id>/``, :mod:`models.bundle`): its config
(feature views, pooling, context), ``extractors.json`` (the exact extractor parameters the
features were made with) and the fold Heads. An extractor that would now produce a different
version (another model file, other code) is refused rather than silently mixed. Only numpy,
scipy, soundfile, ai-edge-litert, lightgbm and scikit-learn are imported on this path.

A stacked head's folder (:mod:`stack.bundle`) is predicted through :class:`stack.predict.StackPredictor`
(:func:`load_predictor` picks it): one embedding pass per file feeds every base head, and the level-2
model and post steps run over all rows once every file is predicted.

The expected rows of a soundscape are defined once, here (:func:`expected_row_ids`): predict
writes exactly them and the validator (:func:`expected_ids_for_audio`) checks exactly them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from embed.extractors import Extractor, single_threaded_children
from featurestore.errors import BundleError, DataError
from featurestore.windows import SOUNDSCAPE_SECONDS, TEST, WINDOW_SECONDS, is_audio, row_ids, window_id
from models.bundle import HeadBundle, class_prior, load_bundle
from models.frame import add_context


def build_extractors(bundle: HeadBundle, **runtime) -> list[Extractor]:
    """Rebuild the bundle's extractors from ``extractors.json``; BundleError for any whose version
    differs from the one its features were trained on (``runtime``: threads, batch_size, cache_dir)."""
    from embed.registry import rebuild

    return rebuild(bundle.extractor_params, bundle.config.feature_versions.extractors,
                   owner=f"head {bundle.head_id}", **runtime)


def file_window_ids(path: Path, starts: np.ndarray) -> tuple[list[str], list[str]]:
    """(window ids for context features, competition row ids) of a soundscape's windows."""
    return [window_id(TEST, path.name, s) for s in starts], row_ids(path.name, starts)


def header_seconds(path: Path) -> float | None:
    """Duration the file's header states, or None when the header cannot be read."""
    try:
        info = sf.info(str(path))
        return info.frames / float(info.samplerate) if info.samplerate > 0 and info.frames >= 0 else None
    except Exception:  # soundfile raises several types for unreadable input; a missing file too
        return None


def expected_window_count(path: Path, min_seconds: float = SOUNDSCAPE_SECONDS) -> int:
    """Rows a soundscape must have in the submission: its 5-s windows over the expected duration.

    The expected duration is the competition's ``min_seconds`` (60 s) or the header's duration
    when the header is readable and says more; the count is ``round(seconds / 5)`` (a 59.99-s or
    60.02-s file gives 12), as the store's window grid counts soundscape windows. Never raises:
    predict and the validator both use it, so their row sets are the same by construction.
    """
    seconds = max(header_seconds(path) or 0.0, float(min_seconds))
    return max(1, int(round(seconds / WINDOW_SECONDS)))


def expected_row_ids(path: Path, min_seconds: float = SOUNDSCAPE_SECONDS) -> list[str]:
    """Competition row ids of every expected window of one soundscape (see :func:`expected_window_count`)."""
    return file_window_ids(path, np.arange(expected_window_count(path, min_seconds)) * WINDOW_SECONDS)[1]


def predict_file(path: Path, bundle: HeadBundle, extractors: list) -> tuple[list[str], np.ndarray]:
    """Row ids and fold-averaged probabilities (windows × head classes) of the decodable windows of one file.

    The windows follow the store's soundscape grid over the decoded audio (``round(seconds / 5)``
    windows); raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded
    (empty, corrupt, NaN or inf samples).
    """
    from embed.features import embed_file_views

    frame = bundle.config.frame
    return head_rows(path, bundle, embed_file_views(path, extractors, [(frame.features, frame.pooling)],
                                                    soundscape=True))


def head_rows(path: Path, bundle: HeadBundle, feats: dict) -> tuple[list[str], np.ndarray]:
    """:func:`predict_file` given the file's views (``embed.features.embed_file_views``): the head's
    view and pooling, neighbour context when it was trained with it, the mean over fold models."""
    frame = bundle.config.frame
    starts, X, _ = feats[(frame.features, frame.pooling)]
    ids, row_ids = file_window_ids(path, starts)
    if frame.context:
        X, _ = add_context(X, np.asarray(ids))
    probs = np.mean([head.predict_proba(X) for head in bundle.folds], axis=0)
    return row_ids, probs.astype(np.float32)


class HeadPredictor:
    """predict's per-file interface for one head bundle: ``predict_file`` per file (in the workers),
    ``finish`` over all rows (the identity; a stacked head applies its stacker there, see
    :class:`stack.predict.StackPredictor`), ``prior`` for rows without usable audio."""

    def __init__(self, bundle: HeadBundle, extractors: list):
        self.bundle, self.extractors = bundle, extractors
        self.head_id = bundle.head_id
        self.class_names = bundle.class_names
        self.prior = class_prior(bundle)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """The ``(view, pooling)`` the head reads from a file's embedding."""
        return [(self.bundle.config.frame.features, self.bundle.config.frame.pooling)]

    def predict_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        return predict_file(path, self.bundle, self.extractors)

    def rows_from_features(self, path: Path, feats: dict) -> tuple[list[str], np.ndarray]:
        """:meth:`predict_file` given the file's views (the extractors already run)."""
        return head_rows(path, self.bundle, feats)

    def finish(self, window_ids: list[str], rows: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
        return rows

    @property
    def output_prior(self) -> np.ndarray:
        """What a row with no prediction at all gets in the final output (the class prior)."""
        return self.prior


def load_predictor(head_dir: str | os.PathLike, **runtime):
    """The predictor of a head folder: :class:`HeadPredictor`, or a stacked head's
    :class:`stack.predict.StackPredictor`. Rebuilds the extractors (BundleError on a version mismatch)."""
    from stack.bundle import is_stack_dir

    if is_stack_dir(head_dir):
        from stack.predict import StackPredictor

        return StackPredictor(head_dir, **runtime)
    bundle = load_bundle(head_dir)
    return HeadPredictor(bundle, build_extractors(bundle, **runtime))


def prior_rows(path: Path, bundle: HeadBundle, n_windows: int | None = None) -> tuple[list[str], np.ndarray]:
    """Fallback for an undecodable file: every expected row gets the class prior, so the submission stays complete."""
    n = expected_window_count(path) if n_windows is None else n_windows
    _, row_ids = file_window_ids(path, np.arange(n) * WINDOW_SECONDS)
    return row_ids, np.tile(class_prior(bundle), (n, 1))


def predict_soundscape(path: Path, bundle: HeadBundle, extractors: list) -> tuple[list[str], np.ndarray, str | None]:
    """Every expected row of one soundscape (:func:`expected_row_ids`) and a warning, or None.

    Never raises. A file that is missing, empty, undecodable or holds NaN/inf samples gets the
    class prior on all its rows (NaN/inf samples are not repaired: the decoder's output cannot be
    trusted, so no window of it is scored). A file with fewer decodable windows than expected
    (truncated, or shorter than the competition's 60 s) is predicted on the windows it has and
    gets the prior on the rest; so does a window whose probabilities come out non-finite.
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
        return expected, fallback, f"file not found: {path} (wrote the class prior for its {n} rows)", usable
    try:
        row_ids, probs = predictor.predict_file(path)
    except Exception as exc:  # any decode/model failure of one file must not sink the submission
        reason = str(exc) if str(path) in str(exc) else f"{path}: {type(exc).__name__}: {exc}"
        if not path.exists():
            reason = f"file not found: {path}"
        elif path.is_file() and path.stat().st_size == 0:
            reason = f"{path}: empty file (0 bytes)"
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
    problems = []
    found = sum(rid in got for rid in expected)
    if found < n:
        header = header_seconds(path)
        said = f"header says {header:.2f} s" if header is not None else "header unreadable"
        problems.append(f"only {found} of its {n} expected {WINDOW_SECONDS}-s windows hold decodable audio "
                        f"({said}; truncated or short file): the class prior for the other {n - found} rows")
    if bad:
        problems.append(f"{bad} window(s) gave non-finite probabilities: the class prior for them")
    return expected, out, (f"{path}: " + "; ".join(problems)) if problems else None, usable


_WORKER: dict = {}


def _init_worker(head_dir: str, runtime: dict) -> None:
    _WORKER.update(predictor=load_predictor(head_dir, **runtime))


def _predict_one(path: str) -> tuple[str, list[str], np.ndarray, str | None, np.ndarray]:
    return (path, *file_rows(Path(path), _WORKER["predictor"]))


def iter_predictions(head_dir: Path, files: list[Path], workers: int, runtime: dict,
                     predictor=None) -> Iterator[tuple]:
    """(path, row_ids, probs, error, usable rows) per file, in file order (``predictor``: an already loaded one, used
    when predicting in this process)."""
    if workers <= 1 or len(files) <= 1:
        if predictor is not None:
            _WORKER.update(predictor=predictor)
        else:
            _init_worker(str(head_dir), runtime)
        yield from map(_predict_one, map(str, files))
        return
    ctx = multiprocessing.get_context("spawn")
    with single_threaded_children(min(workers, len(files))):  # the workers start here, one BLAS thread each
        pool = ctx.Pool(min(workers, len(files)), initializer=_init_worker, initargs=(str(head_dir), runtime))
    with pool:
        yield from pool.imap(_predict_one, map(str, files), chunksize=1)


def list_audio(audio_dir: str | os.PathLike) -> list[Path]:
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise DataError(f"audio folder {audio_dir} not found")
    return sorted(p for p in audio_dir.iterdir() if is_audio(p) and p.is_file())


def expected_ids_for_audio(audio_dir: str | os.PathLike) -> list[str]:
    """row_ids of every expected 5-s window of every audio file in a folder (never raises for a bad file).

    Each file is a competition soundscape: 60 s, or what its header says when it is readable and
    says more (:func:`expected_row_ids`, the rows predict writes for it).
    """
    return [rid for path in list_audio(audio_dir) for rid in expected_row_ids(path)]


def predict_audio(head_dir: str | os.PathLike, audio_dir: str | os.PathLike, columns: list[str], *,
                  workers: int = 1, runtime: dict | None = None,
                  progress: Callable[[int], object] | None = None,
                  on_start: Callable[[int], object] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Predict every audio file; returns (row_ids, probs in ``columns`` order, per-file warnings).

    The row ids are exactly :func:`expected_row_ids` of every file (what the validator expects);
    a bad file gets the class prior where it has no usable audio, and one warning.

    ``on_start(n_files)`` is called once every input is checked, before any file is decoded.
    """
    head_dir = Path(head_dir)
    predictor = load_predictor(head_dir, **(runtime or {}))  # fails fast on a version mismatch, before any work
    missing = [c for c in columns if c not in predictor.class_names]
    if missing:
        raise BundleError(f"submission columns {missing[:5]} are not classes of head {predictor.head_id}")
    order = [predictor.class_names.index(c) for c in columns]
    files = list_audio(audio_dir)
    if not files:
        raise DataError(f"no audio files in {audio_dir}")
    if on_start:
        on_start(len(files))
    row_ids: list[str] = []
    window_ids: list[str] = []
    blocks: list[np.ndarray] = []
    usable: list[np.ndarray] = []
    errors: list[str] = []
    for path, ids, probs, error, ok in iter_predictions(head_dir, files, workers, runtime or {}, predictor):
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
                       runtime: dict | None = None, make_progress: Callable[[int, str], object] | None = None,
                       on_warning: Callable[[str], object] | None = None) -> SubmissionSummary:
    """Predict ``audio_dir`` with a bundle of the store and write a validated submission to ``out``.

    ``head_id`` ``"best"`` is the leaderboard's best full-CV head; the columns follow ``sample``
    (a sample_submission.csv) or else the store's taxonomy order. The file is validated (columns,
    exactly :func:`expected_ids_for_audio` as rows, numbers in [0, 1]) before it replaces ``out``.
    ``make_progress(n_files, description)`` returns a bar (``update``/``close``), made once every
    input is checked. Per-file problems (see :func:`predict_soundscape`) go to ``on_warning`` as
    soon as every file is predicted, before the file is written, and are returned too.
    """
    from featurestore.errors import StoreError
    from featurestore.store import FeatureStore
    from models.bundle import bundle_dir
    from models.experiments import best_head_id
    from models.frame import class_names_of
    from models.submission import read_header, write_submission

    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        head_id = best_head_id(store) if head_id == "best" else head_id
        columns = read_header(Path(sample))[1:] if sample else class_names_of(store)
        head_dir = bundle_dir(store.root, head_id)
    if not head_dir.is_dir():
        raise StoreError(f"no trained head {head_id!r} in {store_dir}; pick one from pipelines.leaderboard")
    bars: list = []

    def on_start(n_files: int) -> None:
        if make_progress:
            bars.append(make_progress(n_files, f"predict {head_id}"))

    try:
        row_ids, probs, warnings = predict_audio(head_dir, audio_dir, columns, workers=workers, runtime=runtime,
                                                 progress=lambda n: bars and bars[0].update(n), on_start=on_start)
    finally:
        for bar in bars:
            bar.close()
    for warning in warnings if on_warning else ():
        on_warning(warning)
    # validated before it replaces ``out``: a failed check leaves no (or the previous) file
    path = write_submission(out, row_ids, probs, columns, sample_submission=sample or ["row_id", *columns],
                            expected_ids=expected_ids_for_audio(audio_dir))
    return SubmissionSummary(head_id, path, len(row_ids), len(columns), warnings)
