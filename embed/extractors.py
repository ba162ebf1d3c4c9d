"""What every extractor shares: outputs, versions, frame models, and the contract of an extractor family.

Two outputs exist (``Extractor.output``):

* ``"frames"`` (BirdNET, user-supplied TFLite/ONNX models) run on fixed-length frames placed
  inside each 5-s window (:func:`embed.audio.frame_offsets`) and return one embedding (float16)
  and optionally logits (float32) per frame; windows are pooled later, so the pooling can change
  without re-embedding;
* ``"windows"`` (classical statistics) return one float32 vector per window.

An extractor's ``version`` is a string id that changes whenever its code, parameters or model
change; it is stored with every row it writes. ``params()`` holds everything needed to rebuild the
same extractor elsewhere (:func:`embed.registry.from_params`), e.g. in the Kaggle notebook; its
``"kind"`` key is the family name and is hashed into every stored version, so it never changes.

A family (:class:`Extractor` subclass) also declares what the rest of the toolkit needs to know
about it: its part table and keys, the feature :class:`View` s it produces and how their columns
are named, and any side tables the embed job writes next to its rows. This module imports no
extractor family; :mod:`embed.registry` does, and is the one list of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from embed.audio import Audio, FrameGrid, frame_grid, frame_offsets
from featurestore.errors import ModelError
from featurestore.windows import WINDOW_SECONDS
from featurestore.workers import ONE_THREAD_ENV, environ_set  # noqa: F401 - re-exported (submit, tests, benches)

if TYPE_CHECKING:  # side tables and taxonomies are Arrow tables; the inference path never builds one
    import pyarrow as pa

EMBED_CODE_VERSION = 1
FRAME_CHUNK = 64  # frames cut and run at a time
FRAME_KEYS = ["window_id", "extractor_version", "frame_index"]   # part-table key of "frames" output
WINDOW_KEYS = ["window_id", "extractor_version"]                  # part-table key of "windows" output


OVERLAP_ENV = "BIRDCLEF_STACK_OVERLAP"   # "0": run a file's extractors one after another


def compute_all(audio: Audio, work: Sequence[tuple[Extractor, list[float]]]) -> list:
    """Every ``(extractor, window starts)`` of one file computed; each result is the extractor's output or
    the exception it raised (the caller decides what an error means).

    Frame models run in one background thread beside the other extractors when the file is decoded
    (not streamed) and both kinds are present: their TFLite/ONNX ``invoke`` releases the GIL, so
    decoding-side work - resampling, the classical front end - overlaps the network (measured: a
    2.3-s BirdNET batch beside 0.3 s of Python took 2.0 s together, not 2.6). Outputs are identical
    to the serial order; ``$BIRDCLEF_STACK_OVERLAP=0`` turns it off."""
    results: list = [None] * len(work)

    def one(i: int) -> None:
        ex, starts = work[i]
        try:
            results[i] = ex.compute(audio, starts)
        except Exception as exc:  # handed back to the caller with the others' results
            results[i] = exc

    frame = [i for i, (ex, _) in enumerate(work) if isinstance(ex, FrameModel)]
    rest = [i for i in range(len(work)) if i not in frame]
    if frame and rest and not audio.streamed and os.environ.get(OVERLAP_ENV, "1") != "0":
        thread = threading.Thread(target=lambda: [one(i) for i in frame], name="frame-models")
        thread.start()
        try:
            for i in rest:
                one(i)
        finally:
            thread.join()
    else:
        for i in range(len(work)):
            one(i)
    return results




def pool_env(workers: int) -> dict[str, str]:
    """The environment worker processes start with beside one BLAS thread each
    (:func:`featurestore.workers.worker_pool` sets that): when ``workers`` fill every core, no extractor
    overlap (:func:`compute_all`: with no spare core it only adds switching)."""
    return {OVERLAP_ENV: "0"} if workers >= (os.cpu_count() or 1) else {}

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


@dataclass(frozen=True)
class View:
    """One feature view a family produces, e.g. ``birdnet_logits`` (see :mod:`embed.features`).

    For a family whose extractors carry a member name (``custom:<model>``) the view is
    ``<stem>:<member>``, else ``<stem>``. It reads ``column`` (``embedding`` | ``logits`` |
    ``features``) of the family's part table; its feature columns are ``<names>[:<member>]:<item>``
    where the items are the extractor's ``labels`` list (``logit_labels`` or ``feature_names``, as
    stored in ``extractor_versions``) when that list has one entry per column, else ``0, 1, ...``.
    """

    stem: str
    column: str
    names: str
    labels: str | None = None

    def view_name(self, member: str = "") -> str:
        return f"{self.stem}:{member}" if member else self.stem

    def prefix(self, member: str = "") -> str:
        """What every feature column of this view starts with, e.g. ``"birdnet_logit:"``."""
        return f"{self.names}:{member}:" if member else f"{self.names}:"

    def column_names(self, dim: int, meta: Mapping, member: str = "") -> list[str]:
        """The ``dim`` column names before pooling suffixes; ``meta`` maps ``labels`` to its list."""
        items = list(meta.get(self.labels) or []) if self.labels else []
        if len(items) != dim:
            items = [str(i) for i in range(dim)]
        prefix = self.prefix(member)
        return [f"{prefix}{item}" for item in items]


class Extractor(ABC):
    """The contract of an extractor family; see the module docstring.

    Class attributes (one family = one subclass, registered in :mod:`embed.registry`):
    ``family`` is the registry name and the ``"kind"`` stored in ``params()``; ``output`` is
    ``"frames"`` or ``"windows"``; ``table`` the part table its rows go to (key
    :meth:`part_keys`); ``views`` the feature views it can produce; ``member_named`` says that its
    extractors are named ``<family>:<member>`` (one per user model) rather than ``<family>``.
    """

    family: ClassVar[str]
    output: ClassVar[str]
    table: ClassVar[str]
    views: ClassVar[tuple[View, ...]]
    member_named: ClassVar[bool] = False

    def __init__(self) -> None:
        self.notes: list[str] = []   # facts worth reporting (e.g. unmatched classes), this instance's own

    # ------------------------------------------------------------------ building
    @classmethod
    @abstractmethod
    def build(cls, taxonomy: pa.Table | None, *, presets: Mapping[str, dict], **options) -> Extractor:
        """A new extractor from the embed job's options (``hop_s``, ``full_logits``, ``model``, ...);
        options a family does not use are ignored. ``presets`` are this family's presets from
        :data:`embed.registry.PRESETS` (name -> plain-data config)."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict, **runtime) -> Extractor:
        """The extractor that wrote ``params`` (same version). ``runtime`` holds options that do not
        change the outputs (threads, batch_size, cache_dir, model_path of a moved model file)."""

    @abstractmethod
    def params(self) -> dict:
        """Everything that defines the outputs (and rebuilds the extractor)."""

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """``<family>``, or ``<family>:<member>`` for member-named families."""
        return self.family

    @property
    def member(self) -> str:
        return self.name.partition(":")[2]

    @property
    def version(self) -> str:
        return f"{self.name}-{params_hash(self.params())}"

    # ------------------------------------------------------------------ outputs
    @abstractmethod
    def compute(self, audio: Audio, window_starts: list[float]) -> FrameOutput | WindowOutput:
        """Outputs for the windows of one decoded file starting at ``window_starts`` (seconds)."""

    def feature_names(self) -> list[str]:
        """Names of the per-window feature vector (window extractors)."""
        return []

    def logit_labels(self) -> list[str]:
        """Names of the stored logit columns (frame models with logits)."""
        return []

    def column_labels(self) -> dict[str, list[str]]:
        """The lists that name view columns (:attr:`View.labels`), as ``extractor_versions`` stores them."""
        return {"logit_labels": self.logit_labels(), "feature_names": self.feature_names()}

    def view_names(self) -> list[str]:
        """The views this extractor produces: every declared view, logit views only when it stores logits."""
        return [v.view_name(self.member) for v in self.views if v.column != "logits" or self.logit_labels()]

    # ------------------------------------------------------------------ storage
    @classmethod
    def part_keys(cls) -> list[str]:
        """Key columns of :attr:`table`: rows with equal keys are one row (the latest wins)."""
        return list(FRAME_KEYS if cls.output == "frames" else WINDOW_KEYS)

    def side_tables(self) -> dict[str, tuple[pa.Table, dict]]:
        """Snapshot tables the embed job writes before embedding: name -> (table, version params)."""
        return {}

    def warm_up(self) -> None:
        """Called once by the embed job, in the parent, before worker processes start: build or check
        files the workers share (e.g. BirdNET's patched model in the cache) so they never race to."""
        return None

    def release(self) -> None:
        """Free what :meth:`warm_up` loaded in the parent once worker processes do the work (default: nothing)."""
        return None


class FrameModel(Extractor):
    """A model applied to frames of ``frame_s`` seconds at ``sample_rate``, ``hop_s`` apart in a window.

    Subclasses provide :meth:`_run` mapping (n, samples) frames to ``embedding`` and ``logits``.
    """

    output = "frames"
    sample_rate: int
    frame_s: float
    hop_s: float
    logit_indices: list[int] | None = None   # model logit columns kept (None: no logits)
    model_sha256: str
    _runner: object | None = None            # the loaded model (subclasses load it on first use)

    def release(self) -> None:
        """Drop the loaded model: the parent's copy after :meth:`warm_up` checked it, once worker processes
        load their own (a real Perch v2 held in the parent is ~1 GB for nothing). Loaded again on next use."""
        self._runner = None

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
