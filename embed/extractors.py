"""What every extractor shares: outputs, versions, frame models, and building one from a name or params.

Two kinds of extractor exist:

* **frame models** (BirdNET, user-supplied TFLite/ONNX models) run on fixed-length frames placed
  inside each 5-s window (:func:`embed.audio.frame_offsets`) and return one embedding (float16)
  and optionally logits (float32) per frame; windows are pooled later, so the pooling can change
  without re-embedding;
* **window features** (classical statistics) return one float32 vector per window.

An extractor's ``version`` is a string id that changes whenever its code, parameters or model
change; it is stored with every row it writes. ``params()`` holds everything needed to rebuild the
same extractor elsewhere (:func:`extractor_from_params`), e.g. in the Kaggle notebook.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from embed.audio import Audio, FrameGrid, frame_grid, frame_offsets
from embed.tflite import ModelError

EMBED_CODE_VERSION = 1
WINDOW_SECONDS = 5
FRAME_CHUNK = 64  # frames cut and run at a time



@contextlib.contextmanager
def single_threaded_children():
    """Processes spawned inside read one BLAS/OpenMP thread each from the environment (we parallelise by
    process); this process's own environment is restored on exit, so later work here is unaffected."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v

@dataclass
class FrameOutput:
    """Per-frame outputs of a frame model for one file."""

    grid: FrameGrid
    embedding: np.ndarray           # (n, d) float16
    logits: np.ndarray | None       # (n, k) float32


@dataclass
class WindowOutput:
    """Per-window features for one file."""

    features: np.ndarray            # (n_windows, d) float32
    valid_fraction: np.ndarray      # (n_windows,) float32


_BLAS: list = []


def one_blas_thread():
    """Context running BLAS on one thread. Used around matrix products so that results do not depend
    on the caller's thread count (the store and in-memory paths stay bit-identical), and because
    OpenBLAS threads competing for busy cores were measured ~3x slower than one thread here."""
    try:
        from threadpoolctl import ThreadpoolController  # ships with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def params_hash(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def file_sha256(path) -> str:
    """sha256 of a file, computed once per process for an unchanged file (same size and mtime)."""
    stat = os.stat(path)
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Extractor(ABC):
    """Common interface; see the module docstring."""

    name: str          # "birdnet", "classical", "custom:<model name>"
    kind: str          # "frames" | "windows"
    table: str         # part table the rows go to
    notes: list[str] = []  # facts worth reporting (e.g. unmatched classes), set per instance

    @abstractmethod
    def params(self) -> dict:
        """Everything that defines the outputs (and rebuilds the extractor)."""

    @property
    def version(self) -> str:
        return f"{self.name}-{params_hash(self.params())}"

    @abstractmethod
    def compute(self, audio: Audio, window_starts: list[float]) -> FrameOutput | WindowOutput:
        """Outputs for the windows of one decoded file starting at ``window_starts`` (seconds)."""

    def feature_names(self) -> list[str]:
        """Names of the per-window feature vector (window extractors)."""
        return []

    def logit_labels(self) -> list[str]:
        """Names of the stored logit columns (frame models with logits)."""
        return []


class FrameModel(Extractor):
    """A model applied to frames of ``frame_s`` seconds at ``sample_rate``, ``hop_s`` apart in a window.

    Subclasses provide :meth:`_run` mapping (n, samples) frames to ``embedding`` and ``logits``.
    """

    kind = "frames"
    sample_rate: int
    frame_s: float
    hop_s: float
    logit_indices: list[int] | None = None   # model logit columns kept (None: no logits)
    model_sha256: str

    @property
    def version(self) -> str:
        """``<name>-<model sha256[:8]>-h<hop>-<params hash>``; moving the model file keeps it."""
        params = {k: v for k, v in self.params().items() if k != "model_path"}
        return f"{self.name}-{self.model_sha256[:8]}-h{self.hop_s:g}-{params_hash(params)}"

    def restore_stored(self, params: dict, what: str) -> None:
        """Adopt a stored version's logit selection after checking the model file is the same one."""
        if self.model_sha256 != params["model_sha256"]:
            raise ModelError(f"{what}: sha256 {self.model_sha256[:12]} differs from the stored "
                             f"{params['model_sha256'][:12]}")
        self.logits_mode = params["logits_mode"]
        self.logit_indices = params["logit_indices"] if self.logits_mode != "none" else None
        self._logit_labels = list(params["logit_labels"])

    @abstractmethod
    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        ...

    def compute(self, audio: Audio, window_starts: list[float]) -> FrameOutput:
        """Frames of every window, streaming the file: a window's grid is fixed once the audio is known
        to reach past its last frame (or has ended), frames are cut as they arrive and run in the
        same ``FRAME_CHUNK`` batches, in grid order, as over a decoded signal. Windows out of time
        order decode the file whole."""
        rate = self.sample_rate
        frame_len = int(round(self.frame_s * rate))
        in_order = all(a <= b for a, b in zip(window_starts[:-1], window_starts[1:], strict=True))
        if not in_order:
            audio.at(rate)                        # random access: decode whole (streams only go forward)
        stream = audio.stream(rate)
        last_offset = frame_offsets(self.frame_s, self.hop_s, WINDOW_SECONDS)[-1]
        grids: list[FrameGrid] = []
        pending: list[np.ndarray] = []            # cut frames not yet run, in grid order
        embedding, logits = [], []

        def run(frames: np.ndarray) -> None:
            out = self._run(frames)
            embedding.append(out["embedding"].astype(np.float16))
            if self.logit_indices is not None and "logits" in out:
                logits.append(np.ascontiguousarray(out["logits"][:, self.logit_indices], dtype=np.float32))

        for w, start in enumerate(window_starts):
            # frame_grid reads the duration only to compare it with this window's frame ends
            stream.fill_past(int(round((float(start) + last_offset) * rate)) + frame_len)
            duration = stream.duration_s if stream.eof else stream.samples_known() / rate
            g = frame_grid([start], duration, rate, self.frame_s, self.hop_s, WINDOW_SECONDS)
            grids.append(FrameGrid(np.full(len(g.window_index), w, np.int32), g.frame_index, g.start_s,
                                   g.start_sample, g.valid_fraction))
            pending += [stream.take(s0, s0 + frame_len).copy() for s0 in g.start_sample.tolist()]
            while len(pending) >= FRAME_CHUNK:
                run(np.stack(pending[:FRAME_CHUNK]))
                del pending[:FRAME_CHUNK]
            if in_order and w + 1 < len(window_starts):
                stream.release(int(round(float(window_starts[w + 1]) * rate)))
        if pending:
            run(np.stack(pending))
        stream.drain()   # every block decoded and checked, as a whole-file decode would
        grid = FrameGrid(*(np.concatenate([getattr(g, f) for g in grids]) if grids else
                           getattr(frame_grid([], 0.0, rate, self.frame_s, self.hop_s), f)
                           for f in ("window_index", "frame_index", "start_s", "start_sample", "valid_fraction")))
        if not embedding:
            raise ValueError("no frames to embed (no windows given)")
        return FrameOutput(grid, np.concatenate(embedding), np.concatenate(logits) if logits else None)


def extractor_from_params(params: dict, **runtime) -> Extractor:
    """Rebuild an extractor from its stored ``params`` (``extractor_versions.params``).

    ``runtime`` passes options that do not change the outputs (threads, batch_size, cache_dir,
    model_path for a user model that moved).
    """
    kind = params.get("kind")
    if kind == "birdnet":
        from embed.birdnet import BirdNet
        return BirdNet.from_params(params, **runtime)
    if kind == "classical":
        from embed.classical import Classical
        return Classical.from_params(params)
    if kind == "custom":
        from embed.custom import CustomModel
        return CustomModel.from_params(params, **runtime)
    raise ValueError(f"unknown extractor kind {kind!r} in params")
