"""A small spectrogram CNN (TensorFlow / Keras), distilled from stored teacher embeddings, then fine-tuned.

The 2026 winner's recipe on this toolkit's store. Nothing is re-embedded by the teacher: its
embedding of every window is already stored (BirdNET, or a user model such as Perch v2), so

1. **stage 1 (distil)** regresses the teacher embedding of the same window (cosine loss) over every
   training window, labelled or not (unlabelled train soundscapes included);
2. **stage 2 (fine-tune)** trains the logits on focal labels, expert soundscape labels and, with
   ``pseudo``, the stored soft pseudo-labels of unlabelled windows (soft binary cross-entropy; a share
   of the cosine loss is kept so the embedding stays teacher-like), with time-shift, gain and
   background mixing from unlabelled soundscapes.

One model per fold gives OOF predictions and the fold-mean headline (fold ``k``'s model never sees a
window of fold ``k``: neither its labels nor its audio, nor pseudo-labels of its recordings), then one
model on all data is exported (:func:`export`) as ``cnn.tflite`` + ``cnn.json`` (float32), and
``cnn_f16``; dynamic-range ``cnn_int8`` only when the fold models' int8 scores hold (``INT8_MAX_DROP``).
Use it with ``pipelines.embed --extractor cnn --model OUT/cnn.tflite`` (:mod:`embed.cnn`, no TensorFlow).

Data: the front end (:class:`embed.cnn.FrontEnd`) of every window is computed once, streaming the
audio file by file in worker processes (:func:`featurestore.workers.worker_pool`: they exit with this
process, even after a ``kill -9``), into a float16 ``.npy`` cache inside the store (``cnn_cache/<key>/``;
resumable: a ``done`` mask is saved after the rows it marks are flushed). Teacher embeddings go to a
float16 ``.npy`` beside it. Both are written with plain file writes into files whose blocks are reserved
first, never through a memory map: a full disk is one :class:`~featurestore.errors.DiskFullError`
naming the file (a page of a memory map written on a full disk kills the process with SIGBUS, no
message). Training reads batches from them memory-mapped, so memory stays flat in the number of windows.
Every epoch is checkpointed (model, optimiser, stage and epoch in one ``tf.train.Checkpoint``); a killed
run resumes at its next epoch.

Reproducible: one id (``cnn-<hash of the whole configuration>``) gives the same bytes (``.tflite``,
``.json``, fold scores, the int8 decision), run straight through or killed and resumed. Each epoch's
order, augmentation and dropout masks are seeded by (seed, fold, stage, epoch) (the dropout layers'
random state is reset at every epoch, so a resumed epoch draws what it would have drawn), and
TensorFlow runs with op determinism on a fixed number of intra-op threads, ``CnnParams.threads`` (by
default the cores this process may use) recorded in the id: a sum split over n threads is added in
an order that depends on n (one thread and two gave different weights on the demo). TensorFlow is
imported only inside the functions that need it (extra ``[cnn]``); this module's import needs numpy only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.special import expit

from featurestore.errors import AudioError, StoreError, UserInputError
from featurestore.params import params_from

CACHE_DIR = "cnn_cache"
TRAINING_VERSION = "cnn-2"        # cnn-2: dropout re-seeded every epoch, op determinism, threads in the id
CNN_MODE = "cnn"                 # the experiments row's mode: a CNN student, not a head bundle
INT8_MAX_DROP = 0.005            # int8 is exported when its fold mean is within this of float32's
EXPORT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2}   # max |TFLite - Keras| logit, relative to the logit range
ALL = "all"


@dataclass(frozen=True)
class CnnParams:
    """The CNN and its training. Defaults are sized for a 2-core CPU (see the README's numbers)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)   # conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool)
    dropout: float = 0.2
    distill_epochs: int = 4
    epochs: int = 6                   # fine-tuning epochs
    batch_size: int = 64
    distill_lr: float = 3e-3
    lr: float = 2e-3
    weight_decay: float = 1e-4
    finetune_distill: float = 0.2     # weight of the cosine loss kept while fine-tuning
    focal_weight: float = 1.0
    soundscape_weight: float = 2.0
    pseudo_weight: float | None = None   # None: the weight stored with the pseudo-labels
    shift_s: float = 1.0              # random circular time shift of up to +-shift_s
    gain_db: float = 6.0              # random gain of up to +-gain_db
    mix_prob: float = 0.5             # chance of mixing in an unlabelled soundscape window
    mix_db: tuple[float, float] = (-12.0, 0.0)   # its level relative to the window, in dB
    steps_per_epoch: int | None = None   # None: one pass over the rows; set for a fixed budget (tests)
    seed: int = 0
    threads: int | None = None        # TensorFlow intra-op threads (None: the cores this process may use); in the id

    def __post_init__(self):
        if not self.channels or any(int(c) <= 0 for c in self.channels):
            raise UserInputError(f"CNN channels must be positive integers, got {self.channels}")
        if self.distill_epochs < 0 or self.epochs < 0 or self.distill_epochs + self.epochs == 0:
            raise UserInputError("CNN epochs must be >= 0, and not both 0")
        if self.batch_size < 2:
            raise UserInputError("CNN batch_size must be >= 2")
        if not 0 <= self.mix_prob <= 1 or not 0 <= self.dropout < 1:
            raise UserInputError("mix_prob must be in [0, 1] and dropout in [0, 1)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserInputError(f"CNN threads must be a positive integer (or null: every core), got {self.threads!r}")


def make_cnn_params(overrides: dict | None = None) -> CnnParams:
    data = dict(overrides or {})
    for key in ("channels", "mix_db"):
        if key in data and isinstance(data[key], list):
            data[key] = tuple(data[key])
    return params_from(CnnParams, data, "CNN")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------- the front-end cache
def _logmel_rows(job: tuple[str, list[float], dict]) -> np.ndarray:
    """The front end of the windows starting at ``starts`` of one file, float16 (n, mels, frames)."""
    from embed.audio import Audio
    from embed.cnn import front_end

    path, starts, fe = job
    frontend = front_end(fe)
    signal = Audio.load(path).at(frontend.sample_rate)
    L = frontend.frame_samples
    frames = np.zeros((len(starts), L), np.float32)
    for i, start in enumerate(starts):
        s0 = int(round(float(start) * frontend.sample_rate))
        chunk = signal[s0: s0 + L]
        frames[i, : len(chunk)] = chunk
    return frontend.logmel(frames).astype(np.float16)


def _logmel_or_error(job: tuple[str, list[float], dict]) -> np.ndarray | AudioError:
    """Worker: :func:`_logmel_rows`, or the file's decoding error as a value (the other files go on)."""
    try:
        return _logmel_rows(job)
    except AudioError as exc:
        return exc


def window_frames_of(path: str | os.PathLike, starts: list[float], frontend) -> np.ndarray:
    """The front end of some windows of one file as the cache holds them (float16)."""
    return _logmel_rows((str(path), list(starts), frontend.to_json()))


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` seen whole or not at all; a full disk is one :class:`DiskFullError` naming ``path``."""
    from featurestore.store import DiskFullGuard

    tmp = path.with_name(path.name + ".tmp.npy")
    try:
        with DiskFullGuard(path, path.parent):
            np.save(tmp, array)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _allocate(path: Path, name: Path) -> None:
    """Reserve every block of the file at ``path`` now (where the OS and filesystem can), so that a full disk
    fails at once, as one :class:`DiskFullError` naming ``name``, not after hours of work."""
    from featurestore.store import DiskFullGuard

    if not hasattr(os, "posix_fallocate"):
        return
    with DiskFullGuard(name, name.parent), open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _new_npy(path: Path, shape: tuple[int, ...], name: Path) -> None:
    """A float16 ``.npy`` of zeros at ``path``, its blocks reserved (:func:`_allocate`); removed again on a
    full disk (one :class:`DiskFullError` naming ``name``)."""
    from featurestore.store import DiskFullGuard

    try:
        with DiskFullGuard(name, name.parent):
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
        _allocate(path, name)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class _NpyRows:
    """Rows written into an existing ``.npy`` with plain file writes. (A memory map's page written on a full
    disk kills the process with SIGBUS - "Bus error", exit 135, no message; a write returns ENOSPC, which
    becomes one :class:`DiskFullError` naming ``name``.) Read the file with ``np.load(mmap_mode="r")``."""

    def __init__(self, path: Path, name: Path | None = None):
        view = np.lib.format.open_memmap(path, mode="r")
        self.shape, self.dtype, self.offset = view.shape, view.dtype, int(view.offset)
        self.row_bytes = int(np.prod(view.shape[1:], dtype=np.int64)) * view.dtype.itemsize
        del view
        self.name = name or path
        self.fh = open(path, "r+b", buffering=0)   # noqa: SIM115 - closed by close()

    def write(self, rows, values: np.ndarray) -> None:
        """``file[rows] = values`` for ascending row indices (each run of consecutive rows is one write)."""
        from featurestore.store import DiskFullGuard

        rows = np.asarray(rows, np.int64)
        values = np.ascontiguousarray(values, self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with DiskFullGuard(self.name, self.name.parent):
            for run, block in zip(np.split(rows, breaks), np.split(values, breaks), strict=True):
                data = memoryview(block.tobytes())
                self.fh.seek(self.offset + int(run[0]) * self.row_bytes)
                while data:
                    data = data[self.fh.write(data):]

    def flush(self) -> None:
        from featurestore.store import DiskFullGuard

        with DiskFullGuard(self.name, self.name.parent):
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def build_cache(store, window_ids: list[str], frontend, *, workers: int = 1, say=_say) -> tuple[Path, np.memmap]:
    """The front end of every window in ``window_ids`` (sorted), in a float16 memmap inside the store.

    Keyed by the front end and the window list; resumable (rows are marked done only after they are
    flushed). Undecodable files raise one :class:`AudioError` naming the first, after every other file is
    cached (:func:`load_data` leaves out the files the embed job recorded as undecodable).
    """
    from embed.extractors import pool_env
    from embed.job import data_dir_of
    from featurestore.windows import file_of, start_of
    from featurestore.workers import worker_pool

    key = _hash({"frontend": frontend.to_json(), "windows": _hash(window_ids)})
    folder = store.root / CACHE_DIR / key
    folder.mkdir(parents=True, exist_ok=True)
    shape = (len(window_ids), frontend.n_mels, frontend.n_frames)
    data_path, done_path = folder / "logmel.npy", folder / "done.npy"
    if not data_path.exists():
        tmp = folder / "logmel.tmp.npy"
        _new_npy(tmp, shape, data_path)
        os.replace(tmp, data_path)
        (folder / "windows.txt").write_text("\n".join(window_ids) + "\n")
    cache = _NpyRows(data_path)
    if cache.shape != shape:
        cache.close()
        raise StoreError(f"{data_path}: shape {cache.shape} != {shape}; delete {folder} and re-run")
    done = np.load(done_path) if done_path.exists() else np.zeros(len(window_ids), bool)
    todo: dict[str, list[int]] = {}
    for i in np.flatnonzero(~done).tolist():
        todo.setdefault(file_of(window_ids[i]), []).append(i)
    if not todo:
        cache.close()
        return folder, np.lib.format.open_memmap(data_path, mode="r")
    _allocate(data_path, data_path)    # the blocks still to write (a cache begun before they were reserved)
    data_dir = data_dir_of(store)
    files = sorted(todo)
    say(f"cnn front end: {len(np.flatnonzero(~done))} of {len(window_ids)} windows to compute "
        f"({len(files)} files, {workers} worker(s)) -> {folder}")
    t0 = last_save = time.perf_counter()
    jobs = [(str(data_dir / f), [start_of(window_ids[i]) for i in todo[f]], frontend.to_json()) for f in files]
    n_done = 0
    failed: list[AudioError] = []

    def commit() -> None:
        cache.flush()
        _save_atomic(done_path, done)

    try:
        with worker_pool(workers, env=pool_env(workers)) as pool:
            for f, rows in zip(files, pool.imap(_logmel_or_error, jobs, chunksize=4), strict=True):
                if isinstance(rows, AudioError):
                    failed.append(rows)
                    continue
                cache.write(todo[f], rows)
                done[todo[f]] = True
                n_done += 1
                if time.perf_counter() - last_save > 30 or n_done == len(files):
                    commit()
                    last_save = time.perf_counter()
                    say(f"  {n_done}/{len(files)} files ({time.perf_counter() - t0:.0f} s)")
    finally:        # ^C or an error: the files finished so far are kept
        try:
            commit()
        finally:
            cache.close()
    if failed:
        raise AudioError(f"{len(failed)} file(s) could not be decoded (first: {failed[0]}); every other file is "
                         "cached. Fix them, or let python -m pipelines.embed record them in embed_errors: the CNN "
                         "leaves those out")
    return folder, np.lib.format.open_memmap(data_path, mode="r")


def teacher_targets(store, folder: Path, window_ids: list[str], view: str, *, chunk: int = 20000,
                    ) -> tuple[np.memmap, str, str]:
    """The teacher's stored embedding of every window (mean over a window's frames), float16 memmap;
    ``(targets, extractor name, version)``. Every window must have one: a missing window is refused
    with the embed command that fills it."""
    from embed.features import load_window_features, parse_view, resolve_version

    spec = parse_view(view)          # an embedding view: load_data checked it with teacher_view
    version = resolve_version(store, spec.extractor)
    path = folder / f"teacher-{version}.npy"
    if path.exists():
        return np.lib.format.open_memmap(path, mode="r"), spec.extractor, version
    tmp = folder / f"teacher-{version}.tmp.npy"
    out = None
    try:
        for a in range(0, len(window_ids), chunk):
            part = window_ids[a: a + chunk]
            ids, X, _, _ = load_window_features(store, view, "mean", window_ids=part,
                                                versions={spec.extractor: version})
            if len(ids) != len(part):
                missing = sorted(set(part) - set(ids))
                raise StoreError(f"{len(missing)} training window(s) have no {view} embedding (first: "
                                 f"{missing[0]}); embed them first: python -m pipelines.embed --store {store.root} "
                                 f"--extractor {spec.extractor.split(':')[0]}")
            if out is None:
                _new_npy(tmp, (len(window_ids), X.shape[1]), path)
                out = _NpyRows(tmp, path)
            out.write(np.arange(a, a + len(part)), X)
        out.flush()
    finally:
        if out is not None:
            out.close()
    os.replace(tmp, path)
    return np.lib.format.open_memmap(path, mode="r"), spec.extractor, version


# ---------------------------------------------------------------------------- the data of a run
@dataclass
class CnnData:
    """Every training window (labelled and unlabelled, never test), in window-id order."""

    window_ids: np.ndarray
    labelled: np.ndarray             # bool
    Y: np.ndarray                    # (n, classes) float32 labels (0 for unlabelled rows)
    weight: np.ndarray               # sample weight of labelled rows
    folds: np.ndarray                # fold of each row (-1: none)
    logmel: np.ndarray               # memmap (n, mels, frames) float16
    teacher: np.ndarray              # memmap (n, dim) float16
    background: np.ndarray           # rows of unlabelled soundscape windows (mixing sources)
    class_names: list[str]
    frame: object                    # models.frame.TrainingFrame of the labelled rows (no features)
    labelled_rows: np.ndarray        # row index of each frame row
    eval_mask: np.ndarray            # over frame rows
    scored_on: str
    fold_version: str
    data_version: str | None
    teacher_name: str
    teacher_version: str
    pseudo: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # fold -> (rows, soft labels)
    pseudo_weight: float = 0.0
    pseudo_version: str | None = None

    @property
    def fold_ids(self) -> list[int]:
        from featurestore.folds import folds_to_run

        return folds_to_run(self.folds[self.labelled])


def load_data(store, teacher: str, params: CnnParams, frontend, *, fold_version: str | None = None,
              pseudo: str | None = None, workers: int = 1, say=_say) -> CnnData:
    """Assemble a run's data from the store (computing the front-end cache and teacher targets once)."""
    from embed.features import parse_view, resolve_version
    from featurestore.folds import fold_assignment
    from featurestore.ingest import latest_data_version
    from featurestore.windows import SOUNDSCAPE, TEST, file_of
    from models.frame import (
        FeatureVersions,
        TrainingFrame,
        class_names_of,
        failed_files,
        label_matrix,
        window_labels,
    )
    from models.pseudo_labels import unlabelled_windows
    from models.training import evaluation_rows

    view = teacher_view(teacher)
    rows = store.rows("SELECT window_id FROM windows WHERE source <> ? ORDER BY window_id", [TEST])
    ids = [r[0] for r in rows]
    if not ids:
        raise StoreError(f"no training windows in {store.root}; run pipelines.ingest first")
    extractor = parse_view(view).extractor
    failed = failed_files(store, {extractor: resolve_version(store, extractor)})
    if failed:   # undecodable audio (embed_errors): no teacher embedding and no front end, as for the heads
        kept = [w for w in ids if file_of(w) not in failed]
        say(f"cnn: {len(ids) - len(kept)} window(s) of {len(failed)} undecodable file(s) left out (see the "
            "embed_errors table)")
        ids = kept
    labels = window_labels(store)
    if not labels:
        raise StoreError("no labelled windows in the store (ingest train.csv / soundscape labels first)")
    classes = class_names_of(store)
    folds, fold_version = fold_assignment(store, np.asarray(ids), fold_version)
    labelled = np.array([w in labels for w in ids])
    Y = np.zeros((len(ids), len(classes)), np.float32)
    lab_rows = np.flatnonzero(labelled)
    Y[lab_rows] = label_matrix([labels[ids[i]][1] for i in lab_rows], classes)
    source = np.array([labels[ids[i]][0] if labelled[i] else SOUNDSCAPE for i in range(len(ids))])
    weight = np.where(source == SOUNDSCAPE, params.soundscape_weight, params.focal_weight).astype(np.float32)
    unlabelled = set(unlabelled_windows(store))
    background = np.array([i for i, w in enumerate(ids) if w in unlabelled], np.int64)

    folder, logmel = build_cache(store, ids, frontend, workers=workers, say=say)
    targets, teacher_name, teacher_version = teacher_targets(store, folder, ids, view)
    wid = np.asarray(ids)
    frame = TrainingFrame(wid[lab_rows], np.zeros((len(lab_rows), 0), np.float32), Y[lab_rows], weight[lab_rows],
                          np.array([file_of(w) for w in wid[lab_rows]]), source[lab_rows], classes, [],
                          FeatureVersions({teacher_name: teacher_version}, "mean"))
    eval_mask, scored_on = evaluation_rows(frame, folds[lab_rows])
    data = CnnData(wid, labelled, Y, weight, folds, logmel, targets, background, classes, frame, lab_rows, eval_mask,
                   scored_on, fold_version, latest_data_version(store), teacher_name, teacher_version)
    if pseudo:
        _attach_pseudo(store, data, pseudo, params)
    return data


def _attach_pseudo(store, data: CnnData, version: str, params: CnnParams) -> None:
    """Soft labels of unlabelled windows from a stored pseudo-label version, per teacher fold (and all)."""
    from featurestore.folds import require_same_fold_version
    from models.pseudo_labels import FULL_FOLD, PSEUDO_FOLDS_FIX, load_pseudo, pseudo_run

    run = pseudo_run(store, version)
    require_same_fold_version(f"pseudo-labels {version} come from teacher {run.teacher_id}", run.fold_version,
                              data.fold_version, PSEUDO_FOLDS_FIX)
    position = {w: i for i, w in enumerate(data.window_ids.tolist())}
    for k in (*data.fold_ids, FULL_FOLD):
        ids, P, classes, stored = load_pseudo(store, version, k)
        if not ids:
            raise StoreError(f"pseudo-labels {version} have no teacher fold {k}")
        order = [classes.index(c) for c in data.class_names]
        keep = [j for j, w in enumerate(ids) if w in position and not data.labelled[position[w]]]
        rows = np.array([position[ids[j]] for j in keep], np.int64)
        data.pseudo[k] = (rows, P[keep][:, order].astype(np.float16))
    data.pseudo_weight = float(params.pseudo_weight if params.pseudo_weight is not None else stored.weight)
    data.pseudo_version = version


def teacher_view(teacher: str) -> str:
    """``birdnet`` | ``custom:<name>`` -> the embedding view read as stage 1's targets."""
    from embed.features import parse_view

    view = teacher.strip()
    spec = parse_view(view)
    if spec.column != "embedding" or spec.extractor.split(":")[0] not in ("birdnet", "custom"):
        raise UserInputError(f"--teacher {teacher!r}: use birdnet or custom:<name> (a stored embedding)")
    return view


# ---------------------------------------------------------------------------- the model (TensorFlow)
def build_model(frontend, n_classes: int, teacher_dim: int, params: CnnParams):
    """Keras model: log-mel (mels, frames, 1) -> [embedding (teacher_dim), logits (n_classes)].

    Per-mel-band input normalisation (batch norm over the mel axis), conv blocks, global mean + max
    pooling, dropout, a linear ``embedding`` layer (the distillation target's space) and ``logits`` on it.
    """
    import keras
    from keras import layers

    if teacher_dim == n_classes:  # the exported outputs are told apart by width
        raise UserInputError(f"the teacher embedding has {teacher_dim} dims, as many as the classes; "
                             "not supported (outputs are matched by width)")
    inputs = keras.Input(frontend.input_shape, name="logmel")
    x = layers.BatchNormalization(axis=1, name="band_norm")(inputs)
    for i, c in enumerate(params.channels):
        x = layers.Conv2D(int(c), 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Concatenate(name="pooled")([layers.GlobalAveragePooling2D(name="gap")(x),
                                           layers.GlobalMaxPooling2D(name="gmp")(x)])
    x = layers.Dropout(params.dropout, name="drop")(x)
    embedding = layers.Dense(teacher_dim, name="embedding")(x)
    normed = layers.LayerNormalization(name="embedding_norm")(embedding)   # logits never see its raw scale
    logits = layers.Dense(n_classes, name="logits")(layers.Dropout(params.dropout, name="drop2")(normed))
    return keras.Model(inputs, [embedding, logits], name="cnn_student")


def augment(x: np.ndarray, rng: np.random.Generator, params: CnnParams, frontend,
            background: np.ndarray | None) -> np.ndarray:
    """Time shift (circular, up to +-shift_s), gain (+-gain_db) and background mixing in the power domain
    (``10 log10(10^(x/10) + g 10^(b/10))``, ``g`` from ``mix_db``) of a float32 (B, mels, frames) batch."""
    B, _, T = x.shape
    out = x
    max_shift = int(round(params.shift_s * frontend.sample_rate / frontend.hop))
    if max_shift > 0:
        shift = rng.integers(-max_shift, max_shift + 1, size=B)
        idx = (np.arange(T)[None, :] - shift[:, None]) % T
        out = np.take_along_axis(out, idx[:, None, :], axis=2)
    if params.gain_db > 0:
        out = out + rng.uniform(-params.gain_db, params.gain_db, size=(B, 1, 1)).astype(np.float32)
    if background is not None and len(background) and params.mix_prob > 0:
        mix = rng.random(B) < params.mix_prob
        if mix.any():
            level = rng.uniform(params.mix_db[0], params.mix_db[1], size=(int(mix.sum()), 1, 1)).astype(np.float32)
            out = np.array(out, copy=True)
            out[mix] = 10.0 * np.log10(10.0 ** (out[mix] / 10.0) + 10.0 ** ((background[mix] + level) / 10.0))
    return out.astype(np.float32, copy=False)


@dataclass
class FoldResult:
    fold: int | str
    oof: np.ndarray | None           # (labelled rows of the fold, classes) probabilities
    history: list[dict]
    seconds: float


class _Trainer:
    """Stage 1 + stage 2 of one model (a fold's or the all-data one), checkpointed every epoch."""

    def __init__(self, data: CnnData, params: CnnParams, frontend, fold: int | str, workdir: Path, say=_say):
        import keras
        import tensorflow as tf

        self.tf, self.data, self.params, self.frontend, self.fold, self.say = tf, data, params, frontend, fold, say
        self.workdir = workdir
        keras.utils.set_random_seed(params.seed + (0 if fold == ALL else 1 + int(fold)))
        self.model = build_model(frontend, len(data.class_names), data.teacher.shape[1], params)
        self.sets = {"distill": self.distill_set(), "finetune": self.finetune_set()}
        steps = {stage: self.steps(len(rows)) for stage, (rows, _, _) in self.sets.items()}

        def optimiser(lr: float, total: int):
            schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total))
            return keras.optimizers.AdamW(schedule, weight_decay=params.weight_decay)

        self.opt = {"distill": optimiser(params.distill_lr, steps["distill"] * params.distill_epochs),
                    "finetune": optimiser(params.lr, steps["finetune"] * params.epochs)}
        for opt in self.opt.values():
            opt.build(self.model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)   # epochs finished, stages counted together
        self.ckpt = tf.train.Checkpoint(model=self.model, distill=self.opt["distill"], finetune=self.opt["finetune"],
                                        epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.ckpt, str(workdir / "ckpt"), max_to_keep=1)
        if self.manager.latest_checkpoint:
            self.ckpt.restore(self.manager.latest_checkpoint).expect_partial()
        self.history: list[dict] = json.loads((workdir / "history.json").read_text()) \
            if (workdir / "history.json").exists() else []
        self.history = self.history[: int(self.epoch.numpy())]
        self._steps = {stage: self._make_step(stage) for stage in ("distill", "finetune")}

    # ---------------------------------------------------------------- rows
    def train_rows(self) -> np.ndarray:
        """Rows this model may see: all but the held-out fold's (labelled rows without a fold are out)."""
        d = self.data
        ok = ~(d.labelled & (d.folds == -1))
        return np.flatnonzero(ok if self.fold == ALL else ok & (d.folds != self.fold))

    def distill_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stage 1's (rows, sample weights, soft labels of the pseudo rows at the end of ``rows``): every
        row this model may see, weighted equally, no labels."""
        rows = self.train_rows()
        return rows, np.ones(len(rows), np.float32), None

    def finetune_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stage 2's (rows, sample weights, soft labels of the pseudo rows at the end of ``rows``): the
        labelled rows this model may see, then the pseudo-labelled ones of its teacher fold."""
        d = self.data
        rows = self.train_rows()
        lab = rows[d.labelled[rows]]
        if not len(lab):
            raise StoreError(f"fold {self.fold}: no labelled training windows outside it")
        key = -1 if self.fold == ALL else int(self.fold)
        if key not in d.pseudo:
            return lab, d.weight[lab], None
        prow, labels = d.pseudo[key]
        allowed = np.isin(prow, rows)
        return (np.concatenate([lab, prow[allowed]]),
                np.concatenate([d.weight[lab], np.full(int(allowed.sum()), d.pseudo_weight, np.float32)]),
                labels[allowed])

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """Stage 1's targets: the teacher embeddings as stored. (Centring them on the training mean, so the
        cosine ignores the direction all BirdNET embeddings share, was measured worse on the demo's fold 0:
        held-out AUC 0.57 vs 0.71 after 8 + 8 epochs; the student over-fitted the residual.)"""
        return np.asarray(self.data.teacher[rows], np.float32)

    def steps(self, n: int) -> int:
        return int(self.params.steps_per_epoch or max(1, n // self.params.batch_size))

    def background_rows(self) -> np.ndarray:
        d = self.data
        bg = d.background
        return bg if self.fold == ALL else bg[d.folds[bg] != self.fold]

    # ---------------------------------------------------------------- steps
    def _make_step(self, stage: str):
        tf = self.tf
        model, opt, keep = self.model, self.opt[stage], float(self.params.finetune_distill)

        @tf.function(reduce_retracing=True)
        def step(x, target, y, w):
            with tf.GradientTape() as tape:
                emb, logits = model(x, training=True)
                cos = tf.reduce_sum(tf.math.l2_normalize(emb, -1) * tf.math.l2_normalize(target, -1), -1)
                distill = tf.reduce_mean(1.0 - cos)
                if stage == "distill":
                    loss = distill
                else:
                    bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits), -1)
                    loss = tf.reduce_sum(bce * w) / tf.maximum(tf.reduce_sum(w), 1e-6) + keep * distill
            grads = tape.gradient(loss, model.trainable_variables)
            # stage 1 leaves the logits layer without a gradient: update only what the loss reaches
            opt.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables, strict=True)
                                 if g is not None])
            return loss, distill

        return step

    def _batch(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows)
        x = np.empty((len(rows), *self.data.logmel.shape[1:]), np.float32)
        x[order] = self.data.logmel[rows[order]]          # memmap reads in row order
        return x

    def seed_dropout(self, rng: np.random.Generator) -> None:
        """Reset the random state of every dropout layer from ``rng``: the masks of an epoch then depend on the
        epoch alone, not on how many epochs this process ran before (a resumed run restarts that state)."""
        for layer in self.model.layers:
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:
                generator.state.assign(np.array([rng.integers(2 ** 31), 0], generator.state.dtype))

    def run_epoch(self, stage: str, epoch: int) -> dict:
        d, p = self.data, self.params
        key = [p.seed, 0 if self.fold == ALL else 1 + int(self.fold), 0 if stage == "distill" else 1, epoch]
        rng = np.random.default_rng(key)
        self.seed_dropout(np.random.default_rng([*key, 1]))
        rows, weights, pseudo_labels = self.sets[stage]
        n_steps = self.steps(len(rows))
        picks = np.concatenate([rng.permutation(len(rows)) for _ in range(-(-n_steps * p.batch_size // len(rows)))])
        background = self.background_rows()
        n_lab = len(rows) - (0 if pseudo_labels is None else len(pseudo_labels))
        losses, distills = [], []
        for s in range(n_steps):
            pick = picks[s * p.batch_size: (s + 1) * p.batch_size]
            r = rows[pick]
            x = self._batch(r)
            bg = self._batch(rng.choice(background, size=len(r))) if len(background) and p.mix_prob > 0 else None
            x = augment(x, rng, p, self.frontend, bg)[..., None]
            y = d.Y[r].copy()
            is_pseudo = pick >= n_lab
            if is_pseudo.any():
                y[is_pseudo] = pseudo_labels[pick[is_pseudo] - n_lab].astype(np.float32)
            target = self.targets(r)
            loss, distill = self._steps[stage](x, target, y, weights[pick])
            losses.append(float(loss))
            distills.append(float(distill))
        return {"stage": stage, "epoch": epoch, "loss": float(np.mean(losses)), "cosine_loss": float(np.mean(distills))}

    def predict(self, rows: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(embedding, probabilities) of ``rows``, un-augmented, in ``rows`` order."""
        embs, probs = [], []
        for a in range(0, len(rows), batch):
            emb, logits = self.model(self._batch(rows[a: a + batch])[..., None], training=False)
            embs.append(np.asarray(emb))
            probs.append(expit(np.asarray(logits, np.float64)))
        dim = self.data.teacher.shape[1]
        return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32),
                np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, len(self.data.class_names))))

    # ---------------------------------------------------------------- the loop
    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame rows, store rows) of the held-out fold's labelled windows (empty for the all-data model)."""
        d = self.data
        if self.fold == ALL:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        frame_rows = np.flatnonzero(d.folds[d.labelled_rows] == self.fold)
        return frame_rows, d.labelled_rows[frame_rows]

    def fold_auc(self, probs: np.ndarray, frame_rows: np.ndarray) -> float:
        """The held-out fold's metric (:func:`models.training.fold_score`) of ``probs`` of ``frame_rows``."""
        from models.training import fold_score

        d = self.data
        oof = np.full(d.frame.Y.shape, np.nan, np.float32)
        oof[frame_rows] = probs
        return fold_score(d.frame, oof, d.folds[d.labelled_rows], d.eval_mask, self.fold)

    def train(self) -> FoldResult:
        p, t0 = self.params, time.perf_counter()
        plan = [("distill", e) for e in range(p.distill_epochs)] + [("finetune", e) for e in range(p.epochs)]
        frame_rows, rows = self.held_out()
        label = "all data" if self.fold == ALL else f"fold {self.fold}"
        finished = int(self.epoch.numpy())
        if finished == len(plan):
            self.say(f"  {label}: done earlier ({finished} epochs checkpointed)")
        elif finished:
            self.say(f"  {label}: resuming after epoch {finished} of {len(plan)}")
        for i in range(int(self.epoch.numpy()), len(plan)):
            stage, e = plan[i]
            t1 = time.perf_counter()
            stats = self.run_epoch(stage, e)
            line = (f"  {label} {stage} epoch {e + 1}/{p.distill_epochs if stage == 'distill' else p.epochs}: "
                    f"loss {stats['loss']:.4f}, cosine loss {stats['cosine_loss']:.4f}")
            if len(rows):
                emb, probs = self.predict(rows)
                cos = np.sum(_unit(emb) * _unit(self.targets(rows)), axis=1)
                stats["held_out_cosine_loss"] = float(np.mean(1 - cos))
                stats["fold_auc"] = self.fold_auc(probs, frame_rows)
                line += f"; held-out cosine loss {stats['held_out_cosine_loss']:.4f}, fold AUC {stats['fold_auc']:.4f}"
            stats["seconds"] = time.perf_counter() - t1
            self.history.append(stats)
            self.epoch.assign(i + 1)
            self.manager.save()
            (self.workdir / "history.json.tmp").write_text(json.dumps(self.history, indent=1))
            os.replace(self.workdir / "history.json.tmp", self.workdir / "history.json")
            self.say(line + f" ({stats['seconds']:.1f} s)")
        oof = self.predict(rows)[1] if len(rows) else None
        return FoldResult(self.fold, oof, self.history, time.perf_counter() - t0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------- export
def convert(model, precision: str = "float32") -> bytes:
    """TFLite flatbuffer of a Keras model: ``float32``, ``float16`` weights, or dynamic-range ``int8``."""
    import contextlib
    import io

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision != "float32":
        raise UserInputError(f"unknown precision {precision!r}; use float32, float16 or int8")
    with contextlib.redirect_stdout(io.StringIO()):       # Keras prints its SavedModel signature
        return converter.convert()


def _output_names(flatbuffer: bytes, model) -> tuple[str, str]:
    """TFLite names of the (embedding, logits) outputs, matched by width (checked distinct in build_model)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=flatbuffer).get_output_details()
    dims = {int(d["shape"][-1]): d["name"] for d in details}
    emb_dim, n_classes = int(model.outputs[0].shape[-1]), int(model.outputs[1].shape[-1])
    return dims[emb_dim], dims[n_classes]


def export(model, out_dir: Path, frontend, class_names: list[str], *, name: str = "cnn", precision: str = "float32",
           teacher: str = "", cnn_id: str = "", trained_on: str = ALL, probe: np.ndarray | None = None) -> Path:
    """Write ``<name>.tflite`` + ``<name>.json`` (the sidecar :class:`embed.cnn.Sidecar`) atomically.

    With ``probe`` (a (n, mels, frames) float32 batch), the TFLite outputs are checked against Keras
    within :data:`EXPORT_TOLERANCE` (not for int8, whose accuracy is judged by fold scores).
    """
    from embed.cnn import SIDECAR_FORMAT, sidecar_path

    out_dir.mkdir(parents=True, exist_ok=True)
    flatbuffer = convert(model, precision)
    emb_name, logits_name = _output_names(flatbuffer, model)
    path = out_dir / f"{name}.tflite"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, path)
    sidecar = {"format": SIDECAR_FORMAT, "model_sha256": hashlib.sha256(flatbuffer).hexdigest(),
               "frontend": frontend.to_json(), "class_names": list(class_names), "embedding_output": emb_name,
               "embedding_dim": int(model.outputs[0].shape[-1]), "logits_output": logits_name, "teacher": teacher,
               "precision": precision, "cnn_id": cnn_id, "trained_on": trained_on}
    side = sidecar_path(path)
    side.with_name(side.name + ".tmp").write_text(json.dumps(sidecar, indent=1) + "\n")
    os.replace(side.with_name(side.name + ".tmp"), side)
    if probe is not None and precision in EXPORT_TOLERANCE:
        gap = tflite_gap(path, model, probe)
        if gap > EXPORT_TOLERANCE[precision]:
            raise StoreError(f"{path}: TFLite logits differ from Keras by {gap:.2e} of their range "
                             f"(> {EXPORT_TOLERANCE[precision]:g}); the conversion is not trustworthy")
    return path


def tflite_gap(path: Path, model, probe: np.ndarray) -> float:
    """max |TFLite logits - Keras logits| / range of the Keras logits, on a (n, mels, frames) batch."""
    from embed.cnn import CnnModel

    ex = CnnModel(path)
    got = ex.runner.run(np.asarray(probe, np.float32)[..., None])["logits"]
    want = np.asarray(model(np.asarray(probe, np.float32)[..., None], training=False)[1])
    return float(np.max(np.abs(got - want)) / max(float(np.ptp(want)), 1e-6))


def tflite_probs(path: Path, logmel: np.ndarray) -> np.ndarray:
    """Probabilities from an exported model on (n, mels, frames) front-end rows (no TensorFlow)."""
    from embed.cnn import CnnModel

    runner = CnnModel(path).runner
    out = [runner.run(np.asarray(logmel[a: a + 256], np.float32)[..., None])["logits"]
           for a in range(0, len(logmel), 256)]
    return expit(np.concatenate(out).astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------- the job
@dataclass
class CnnResult:
    cnn_id: str
    out_dir: Path
    model_path: Path
    fold_mean: float
    fold_std: float
    oof_auc: float
    fold_scores: dict
    scored_on: str
    exported: dict[str, Path]
    int8_note: str
    compare: str
    seconds: float
    report: object = None

    def render(self) -> str:
        from models.training import NOTHING_SCORABLE, SCORED_ON_TEXT

        lines = [f"cnn {self.cnn_id}: fold mean {self.fold_mean:.4f} +/- {self.fold_std:.4f} "
                 f"(pooled OOF {self.oof_auc:.4f}) on {SCORED_ON_TEXT[self.scored_on]}; {self.seconds:.0f} s"]
        if self.scored_on == "none":
            lines.append(f"warning: {NOTHING_SCORABLE}")
        if self.compare:
            lines.append(self.compare)
        lines += [f"  {k}: {v}" for k, v in self.exported.items()]
        if self.int8_note:
            lines.append(self.int8_note)
        lines.append(f"use it: python -m pipelines.embed --store STORE --extractor cnn --model {self.model_path}")
        return "\n".join(lines)


def run_config(teacher: str, params: CnnParams, frontend, data: CnnData, folds: bool) -> dict:
    return {"training_version": TRAINING_VERSION, "teacher": teacher, "teacher_version": data.teacher_version,
            "params": asdict(params), "frontend": frontend.to_json(), "fold_version": data.fold_version,
            "data_version": data.data_version, "pseudo_version": data.pseudo_version, "classes": data.class_names,
            "n_windows": len(data.window_ids), "folds": folds}


def compare_line(store, teacher_name: str, fold_version: str, fold_mean: float) -> str:
    """The CNN's fold mean next to the best linear head on the teacher's embedding (same folds)."""
    from models.experiments import TABLE, best_on

    if not store.has_table(TABLE):
        return ""
    row = best_on(store, head="linear", features=teacher_name.split(":")[0], fold_version=fold_version)
    if row is None:
        return (f"no full-CV linear head on {teacher_name} features with these folds to compare with "
                f"(python -m pipelines.train --head-kind linear --features {teacher_name})")
    return (f"vs {teacher_name} linear head {row[0]}: fold mean {row[1]:.4f} (same folds); CNN "
            f"{fold_mean - row[1]:+.4f}")


def deterministic_tensorflow(tf, threads: int | None = None) -> int:
    """Deterministic TensorFlow ops (``enable_op_determinism``) on ``threads`` intra-op threads (None: what
    TensorFlow uses here: ``$TF_NUM_INTRAOP_THREADS``, else every core this process may use); returns the
    number, which results depend on. Refused when TensorFlow already runs on another number in this process."""
    tf.config.experimental.enable_op_determinism()
    config = tf.config.threading
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    running = config.get_intra_op_parallelism_threads() or int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or cores
    wanted = threads or running
    if config.get_intra_op_parallelism_threads() != wanted:
        try:            # pinned before TensorFlow starts; once it runs, the number cannot change
            config.set_intra_op_parallelism_threads(wanted)
        except RuntimeError as exc:
            if wanted != running:
                raise UserInputError(f"CNN threads {threads}: TensorFlow already runs on {running} intra-op "
                                     f"thread(s) in this process; use threads {running} or train in a new process"
                                     ) from exc
    return wanted


def train_cnn(store_dir: str | os.PathLike, out_dir: str | os.PathLike, *, teacher: str = "birdnet",
              params: CnnParams | dict | None = None, frontend: dict | None = None, folds: bool = True,
              fold_version: str | None = None, pseudo: str | None = None, workers: int = 1, tag: str | None = None,
              say: Callable[[str], None] = _say) -> CnnResult:
    """Train the CNN student (per fold with ``folds``, then on all data), export it into ``out_dir``,
    write its OOF file and experiments row; see the module docstring."""
    from embed.cnn import front_end
    from featurestore.store import FeatureStore, write_parquet_atomic
    from models.experiments import metric_columns, record
    from models.training import OOF_DIR, SCORED_ON_TEXT, oof_table, refresh_oof_view, score_run

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")       # TensorFlow's C++ start-up chatter
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise UserInputError("training the CNN needs TensorFlow: pip install 'birdclef-stack[cnn]'") from exc
    tf.get_logger().setLevel("ERROR")   # each fold's model traces its own train step: not a retracing problem
    params = params if isinstance(params, CnnParams) else make_cnn_params(params)
    params = replace(params, threads=deterministic_tensorflow(tf, params.threads))
    fe = front_end(frontend)
    out = Path(out_dir).expanduser()
    t0 = time.perf_counter()
    with FeatureStore.open(store_dir, create=False) as store:
        data = load_data(store, teacher, params, fe, fold_version=fold_version, pseudo=pseudo, workers=workers, say=say)
        config = run_config(teacher, params, fe, data, folds)
        cnn_id = f"cnn-{_hash(config)}"
        run_file = out / "run.json"
        if run_file.exists():
            previous = json.loads(run_file.read_text()).get("cnn_id")
            if previous != cnn_id:
                raise UserInputError(f"{out} holds another CNN run ({previous}); use a new --out folder "
                                     "(or delete it) for this configuration")
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({"cnn_id": cnn_id, **config}, indent=1, default=str) + "\n")
        say(f"cnn {cnn_id}: {len(data.window_ids)} windows ({int(data.labelled.sum())} labelled, "
            f"{len(data.background)} unlabelled soundscape), teacher {data.teacher_name} "
            f"({data.teacher.shape[1]}-d), {len(data.class_names)} classes, input {list(fe.input_shape)}"
            + (f", pseudo-labels {pseudo}" if pseudo else ""))

        oof = np.full((len(data.frame.window_ids), len(data.class_names)), np.nan, np.float32)
        fold_ids = data.fold_ids if folds else []
        int8_scores: dict[str, dict[int, float]] = {"float32": {}, "int8": {}}
        train_s = 0.0
        for k in fold_ids:
            workdir = out / "work" / f"fold_{k}"
            workdir.mkdir(parents=True, exist_ok=True)
            done = workdir / "oof.npy"
            trainer = None
            frame_rows = np.flatnonzero(data.folds[data.labelled_rows] == k)
            if done.exists():
                oof[frame_rows] = np.load(done)
                say(f"  fold {k}: done earlier")
            else:
                trainer = _Trainer(data, params, fe, k, workdir, say)
                result = trainer.train()
                train_s += result.seconds
                oof[frame_rows] = result.oof
                _save_atomic(done, result.oof)
            scores_file = workdir / "precision.json"
            if not scores_file.exists():
                trainer = trainer or _Trainer(data, params, fe, k, workdir, say)
                scores = _precision_scores(trainer, frame_rows, workdir)
                scores_file.write_text(json.dumps(scores))
            for prec, value in json.loads(scores_file.read_text()).items():
                int8_scores.setdefault(prec, {})[k] = value

        report = None
        if fold_ids:
            predicted = ~np.isnan(oof).any(axis=1)
            folds_l = data.folds[data.labelled_rows]
            if data.scored_on != "none":
                report = score_run(store, data.frame, folds_l, oof, data.eval_mask & predicted, params.seed)
            oof_path = store.root / OOF_DIR / f"{cnn_id}.parquet"
            oof_path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet_atomic(oof_table(data.frame.subset(predicted), folds_l[predicted], oof[predicted], cnn_id),
                                 oof_path)
            refresh_oof_view(store)

        metrics = metric_columns(report)
        fold_mean, fold_std, pooled = (float("nan") if metrics[c] is None else metrics[c]
                                       for c in ("fold_mean", "fold_std", "oof_auc"))
        fold_scores = json.loads(metrics["fold_scores"])

        say("  all data: training the model to export")
        full_dir = out / "work" / ALL
        full_dir.mkdir(parents=True, exist_ok=True)
        trainer = _Trainer(data, params, fe, ALL, full_dir, say)
        result = trainer.train()
        train_s += result.seconds
        probe_rows = data.labelled_rows[: min(32, len(data.labelled_rows))]
        probe = np.asarray(data.logmel[probe_rows], np.float32)
        exported = {}
        for precision, name in (("float32", "cnn"), ("float16", "cnn_f16")):
            exported[precision] = export(trainer.model, out, fe, data.class_names, name=name, precision=precision,
                                         teacher=data.teacher_name, cnn_id=cnn_id, probe=probe)
        keep_int8, int8_note = _int8_decision(int8_scores)
        if keep_int8:
            exported["int8"] = export(trainer.model, out, fe, data.class_names, name="cnn_int8", precision="int8",
                                      teacher=data.teacher_name, cnn_id=cnn_id)
        elif (out / "cnn_int8.tflite").exists():
            (out / "cnn_int8.tflite").unlink()
            (out / "cnn_int8.json").unlink(missing_ok=True)
        compare = compare_line(store, data.teacher_name, data.fold_version, fold_mean) if fold_ids else ""
        seconds = time.perf_counter() - t0
        if fold_ids:
            record(store, {
                "head_id": cnn_id, "head": "cnn", "tag": tag or "cnn",
                "features": f"audio logmel {fe.n_mels}x{fe.n_frames} (teacher {data.teacher_name})",
                "params": json.dumps(asdict(params)), "config": json.dumps(config, sort_keys=True, default=str),
                "fold_version": data.fold_version, "data_version": data.data_version,
                "feature_versions": json.dumps({data.teacher_name: data.teacher_version}), "seed": params.seed,
                "eval_rows": SCORED_ON_TEXT[data.scored_on], "n_train_windows": int(len(data.window_ids)),
                "train_seconds": train_s, "predict_seconds": 0.0, "training_version": TRAINING_VERSION,
                "mode": CNN_MODE, "scored_on": data.scored_on, "n_eval_windows": int(data.eval_mask.sum()),
                **metrics})
        summary = {"cnn_id": cnn_id, **{c: metrics[c] for c in ("fold_mean", "fold_std", "oof_auc")},
                   "fold_scores": fold_scores, "precision_fold_scores": int8_scores, "int8": int8_note, "compare": compare,
                   "exported": {k: v.name for k, v in exported.items()}}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return CnnResult(cnn_id, out, exported["float32"], fold_mean, fold_std, pooled, fold_scores, data.scored_on,
                     exported, int8_note, compare, seconds, report)


def _precision_scores(trainer: _Trainer, frame_rows: np.ndarray, workdir: Path) -> dict[str, float]:
    """Held-out fold AUC of this fold's model as exported TFLite float32 and int8 (the int8 gate)."""
    d = trainer.data
    mask = d.eval_mask[frame_rows]
    if not mask.any():
        return {}
    rows = d.labelled_rows[frame_rows[mask]]
    logmel = np.asarray(d.logmel[rows], np.float32)
    scores = {}
    for precision in ("float32", "int8"):
        path = export(trainer.model, workdir / "export", trainer.frontend, d.class_names, name=f"fold_{precision}",
                      precision=precision, trained_on=f"fold {trainer.fold}")
        scores[precision] = trainer.fold_auc(tflite_probs(path, logmel), frame_rows[mask])
    return scores


def _int8_decision(scores: dict[str, dict[int, float]]) -> tuple[bool, str]:
    """(export int8?, why): its TFLite fold mean against float32's, on the held-out folds."""
    f32 = [v for v in scores.get("float32", {}).values() if v is not None and not np.isnan(v)]
    i8 = [v for v in scores.get("int8", {}).values() if v is not None and not np.isnan(v)]
    if not f32 or len(f32) != len(i8):
        return False, ("int8 not exported: no held-out fold score to judge it by (it needs --folds and held-out "
                       "windows with a scorable class)")
    drop = float(np.mean(f32) - np.mean(i8))
    keep = drop <= INT8_MAX_DROP
    return keep, (f"int8 {'kept' if keep else 'not exported'}: fold mean {np.mean(i8):.4f} vs float32 "
                  f"{np.mean(f32):.4f} as TFLite (drop {drop:+.4f}, limit {INT8_MAX_DROP})")
