"""The spectrogram CNN student as an extractor: the toolkit's numpy log-mel front end + a TFLite CNN.

A CNN trained by ``python -m pipelines.cnn`` (:mod:`students.cnn`, TensorFlow) is exported as
``<name>.tflite`` with a sidecar ``<name>.json`` beside it that carries everything needed to feed
and read it: the front-end parameters (:class:`FrontEnd`), the class list of its logits, the names
and widths of its two outputs (``embedding``: the penultimate layer, distilled from the teacher
embedding; ``logits``: one per class) and the sha256 of the ``.tflite`` it belongs to, so a
sidecar never silently describes another model.

The front end runs here, in numpy, at training time (the training cache is made by
:func:`FrontEnd.logmel` on the same 5-s frames) and at inference, so the CNN sees the same floats
in both. One frame per window: the whole 5-s window at ``sample_rate`` (zero-padded past the end
of a file), like Perch. ``--extractor cnn --model path/to/cnn.tflite`` stores its embedding
(float16) and logits (float32) in ``cnn_frames``; views ``cnn`` and ``cnn_logits``. This module
imports neither TensorFlow nor pyarrow: the Kaggle notebook runs it with ai-edge-litert only.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.classical import mel_basis, power_to_db, stft_power
from embed.extractors import EMBED_CODE_VERSION, FrameModel, View, one_blas_thread
from embed.tflite import TFLiteRunner
from featurestore.errors import DataError, ModelError
from featurestore.files import file_sha256
from featurestore.params import params_from, read_json_object
from featurestore.windows import WINDOW_SECONDS

if TYPE_CHECKING:
    import pyarrow as pa

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class FrontEnd:
    """Log-mel front end of the CNN: one ``window_s`` frame -> (n_mels, n_frames) dB, float32.

    Centred STFT frames (zero padding of ``n_fft // 2`` at both ends, periodic Hann), power,
    Slaney mel filters (== librosa's), ``10 log10(max(1e-10, power))``. 64 mels x 313 frames for a
    5-s window at 32 kHz with the defaults: small enough for a CNN that is several times faster than
    BirdNET per window on one CPU thread.
    """

    sample_rate: int = 32000
    window_s: float = float(WINDOW_SECONDS)
    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float | None = None            # None: sample_rate / 2

    def __post_init__(self):
        if self.n_fft <= 0 or self.hop <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            raise ModelError(f"front end {asdict(self)}: sizes and rate must be positive")
        if self.window_s != WINDOW_SECONDS:
            raise ModelError(f"front end window_s={self.window_s}: the CNN sees whole {WINDOW_SECONDS}-s windows")

    @property
    def frame_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return 1 + self.frame_samples // self.hop

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The CNN's input per window: (mels, STFT frames, 1 channel)."""
        return (self.n_mels, self.n_frames, 1)

    def logmel(self, frames: np.ndarray) -> np.ndarray:
        """(n, frame_samples) audio -> (n, n_mels, n_frames) float32 dB.

        The classical extractor's STFT, mel basis and dB (equal to librosa, tested), with the frames
        batched into one FFT call; the mel product runs on one BLAS thread so results do not depend on
        the machine's thread count.
        """
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != self.frame_samples:
            raise ValueError(f"expected (n, {self.frame_samples}) frames, got {frames.shape}")
        power = stft_power(frames, self.n_fft, self.hop)               # (n, frames, bins)
        with one_blas_thread():
            mel = power @ _mel(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax).T
        return np.ascontiguousarray(power_to_db(mel).transpose(0, 2, 1), dtype=np.float32)

    def to_json(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=8)
def _mel(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """The mel basis of a front end, built once per process (never written to)."""
    return mel_basis(sr, n_fft, n_mels, fmin, fmax)


def front_end(overrides: Mapping | None = None) -> FrontEnd:
    """A :class:`FrontEnd` from a JSON-able dict; unknown keys are a :class:`ModelError` naming them."""
    return params_from(FrontEnd, dict(overrides or {}), "CNN front-end", ModelError)


# ---------------------------------------------------------------------------- the sidecar
def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``cnn.tflite`` -> ``cnn.json``: the sidecar that describes a CNN model file."""
    return Path(model_path).with_suffix(".json")


@dataclass(frozen=True)
class Sidecar:
    """What ``<model>.json`` holds (written by :func:`students.cnn.export`)."""

    format: int
    model_sha256: str
    frontend: dict
    class_names: list
    embedding_output: str
    embedding_dim: int
    logits_output: str
    teacher: str = ""
    precision: str = "float32"
    cnn_id: str = ""
    trained_on: str = ""       # "all" (the model to use) or "fold <k>"

    @classmethod
    def read(cls, model_path: Path) -> Sidecar:
        path = sidecar_path(model_path)
        if not path.is_file():
            raise ModelError(f"{model_path}: no {path.name} beside it; a CNN model is used with the sidecar "
                             "pipelines.cnn wrote next to it (copy both files)")
        side = params_from(cls, read_json_object(path, "CNN sidecar", ModelError), f"{path.name} sidecar", ModelError)
        if side.format != SIDECAR_FORMAT:
            raise ModelError(f"{path}: sidecar format {side.format}, this toolkit reads {SIDECAR_FORMAT}")
        return side


# ---------------------------------------------------------------------------- the extractor
class CnnModel(FrameModel):
    """A CNN made by ``pipelines.cnn``: the numpy front end then the ``.tflite``, one 5-s frame per window."""

    family = "cnn"
    table = "cnn_frames"
    views = (View("cnn", "embedding", "cnn"), View("cnn_logits", "logits", "cnn_logit", "logit_labels"))

    def __init__(self, model_path: str | os.PathLike, *, logits: bool = True, batch_size: int | None = None,
                 threads: int = 1):
        super().__init__()
        self.model_path = Path(model_path).expanduser().resolve()
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        if self.model_path.suffix.lower() != ".tflite":
            raise ModelError(f"{self.model_path}: expected a .tflite file written by pipelines.cnn")
        self.sidecar = Sidecar.read(self.model_path)
        self.model_sha256 = file_sha256(self.model_path)
        if self.model_sha256 != self.sidecar.model_sha256:
            raise ModelError(f"{sidecar_path(self.model_path)} describes another model (sha256 "
                             f"{self.sidecar.model_sha256[:12]}, this file {self.model_sha256[:12]})")
        self.frontend = front_end(self.sidecar.frontend)
        self.sample_rate = self.frontend.sample_rate
        self.frame_s = self.hop_s = float(self.frontend.window_s)
        self.batch_size, self.threads = batch_size or 16, threads
        self.logits_mode = "all" if logits else "none"
        self.logit_indices = list(range(len(self.sidecar.class_names))) if logits else None
        self._logit_labels = list(self.sidecar.class_names) if logits else []
        self._runner: TFLiteRunner | None = None

    @classmethod
    def build(cls, taxonomy: pa.Table | None, *, presets: Mapping[str, dict] | None = None,
              model: str | os.PathLike | None = None, cnn_model: str | os.PathLike | None = None,
              batch_size: int | None = None, threads: int = 1, **_) -> CnnModel:
        """``--extractor cnn --model cnn.tflite`` (``cnn_model`` wins when a custom model is embedded too)."""
        path = cnn_model or model
        if path is None:
            raise DataError("--extractor cnn needs --model path/to/cnn.tflite (written by python -m pipelines.cnn)")
        return cls(path, batch_size=batch_size, threads=threads)

    @classmethod
    def from_params(cls, params: dict, *, cnn_model_path: str | os.PathLike | None = None,
                    batch_size: int | None = None, threads: int = 1, **_) -> CnnModel:
        self = cls(cnn_model_path or params["model_path"], logits=params["logits_mode"] != "none",
                   batch_size=batch_size, threads=threads)
        self.restore_stored(params, str(self.model_path))
        if self.sidecar.frontend != params["frontend"]:
            raise ModelError(f"{self.model_path}: front end {self.sidecar.frontend} differs from the stored "
                             f"{params['frontend']}")
        return self

    def params(self) -> dict:
        return {"kind": self.family, "model_path": str(self.model_path), "model_sha256": self.model_sha256,
                "frontend": self.frontend.to_json(), "sample_rate": self.sample_rate, "frame_s": self.frame_s,
                "hop_s": self.hop_s, "embedding_dim": self.sidecar.embedding_dim, "embedding_dtype": "float16",
                "logits_mode": self.logits_mode, "logit_indices": self.logit_indices or [],
                "logit_labels": self._logit_labels, "code_version": EMBED_CODE_VERSION}

    def logit_labels(self) -> list[str]:
        return list(self._logit_labels)

    @property
    def runner(self) -> TFLiteRunner:
        if self._runner is None:
            side = self.sidecar
            outputs = {"embedding": (side.embedding_output, side.embedding_dim),
                       "logits": (side.logits_output, len(side.class_names))}
            self._runner = TFLiteRunner(self.model_path, outputs, threads=self.threads, batch_size=self.batch_size,
                                        input_rank=4)
            if tuple(self._runner.item_shape) != self.frontend.input_shape:
                raise ModelError(f"{self.model_path}: input takes {list(self._runner.item_shape)} but the front "
                                 f"end makes {list(self.frontend.input_shape)}")
        return self._runner

    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.run(self.frontend.logmel(frames)[..., None])
