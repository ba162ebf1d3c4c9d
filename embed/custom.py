"""User-supplied audio models (TFLite or ONNX) described by a small config, e.g. Perch v2.

A config says how to feed and read the model::

    {"name": "perch_v2", "sample_rate": 32000, "frame_seconds": 5.0, "hop_seconds": 5.0,
     "input_scaling": "peak_normalize", "target_peak": 0.25,
     "input_name": null, "embedding_output": "embedding", "embedding_dim": 1536,
     "logits_output": "label", "logits_dim": 14795, "labels_file": null}

``input_scaling`` says what each frame (``frame_seconds`` of mono audio at ``sample_rate``,
zero-padded past the end of a file) goes through before the model sees it:

* ``"none"`` (the default): the decoded waveform as is;
* ``"peak_normalize"``: per frame, subtract the frame's mean, then scale it so that its largest
  absolute sample equals ``target_peak`` (default 0.25); a frame that is constant (e.g. digital
  silence or pure padding) becomes all zeros. This is what Perch models expect: perch-hoplite
  (``perch_hoplite/zoo/zoo_interface.py``, ``EmbeddingModel.normalize_audio``) applies it with
  ``target_peak=0.25`` to every 5-s, 32 kHz frame before Perch v2 (TF and ONNX presets), so the
  ``perch_v2`` preset (:data:`embed.registry.PRESETS`) states it. ``target_peak`` may only be set
  with ``"peak_normalize"``.

``logit_slope`` and ``logit_intercept`` (default 1 and 0) map the model's logits affinely before they
are stored (perch-hoplite rescales Perch v2's by 0.97 and -10: the ``perch`` family's preset).

These fields are part of the extractor's parameters, so changing them changes its version. Unknown
keys and bad values raise :class:`~featurestore.errors.ModelError` naming the key. This module
knows no preset by name: :func:`embed.registry.model_config` resolves ``perch_v2`` and passes the
presets to :func:`load_config`.

Outputs are found by name (exact, then case-insensitive substring) and else by their last
dimension, so exported models whose tensor names differ still load. ``labels_file`` (one label
per line, or a CSV whose first column holds the labels) names the logits; logits of labels that
match the taxonomy (primary label, scientific name or common name) are stored, or all of them with
``full_logits``. No model weights ship with this toolkit: pass ``--model path/to/model.tflite``.
ONNX needs onnxruntime (``pip install 'birdclef-stack[onnx]'``), imported only when used.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.extractors import EMBED_CODE_VERSION, FrameModel, View
from embed.tflite import TFLiteRunner
from featurestore.errors import DataError, ModelError
from featurestore.files import file_sha256
from featurestore.params import read_json_object

if TYPE_CHECKING:  # taxonomy tables come from a store; predicting from a head folder needs no pyarrow
    import pyarrow as pa

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
INPUT_SCALINGS = ("none", "peak_normalize")
DEFAULT_TARGET_PEAK = 0.25


@dataclass(frozen=True)
class ModelConfig:
    name: str
    sample_rate: int
    frame_seconds: float
    hop_seconds: float | None = None     # default: the frame length (capped by the window)
    input_name: str | None = None
    embedding_output: str | None = "embedding"
    embedding_dim: int | None = None
    logits_output: str | None = None
    logits_dim: int | None = None
    labels_file: str | None = None       # relative to the model file's folder
    labels_column: str | None = None     # CSV column holding the labels (default: the first)
    input_scaling: str = "none"          # one of INPUT_SCALINGS, applied to every frame (module docstring)
    target_peak: float = DEFAULT_TARGET_PEAK  # peak after "peak_normalize"
    logit_slope: float = 1.0             # stored logits = model logits * logit_slope + logit_intercept
    logit_intercept: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ModelError(f"model config name {self.name!r}: use lower-case letters, digits and _")
        where = f"model config {self.name}"
        if not _is_int(self.sample_rate) or self.sample_rate <= 0:
            raise ModelError(f"{where}: sample_rate must be a positive integer (Hz), got {self.sample_rate!r}")
        if not _is_number(self.frame_seconds) or not 0 < self.frame_seconds <= 5:
            raise ModelError(f"{where}: frame_seconds must be in (0, 5], got {self.frame_seconds!r}")
        if self.hop_seconds is not None and (not _is_number(self.hop_seconds) or self.hop_seconds <= 0):
            raise ModelError(f"{where}: hop_seconds must be > 0 or null, got {self.hop_seconds!r}")
        for key in ("embedding_dim", "logits_dim"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ModelError(f"{where}: {key} must be a positive integer or null, got {value!r}")
        for key in ("input_name", "embedding_output", "logits_output", "labels_file", "labels_column"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ModelError(f"{where}: {key} must be a string or null, got {value!r}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ModelError(f"{where}: input_scaling must be one of {list(INPUT_SCALINGS)}, "
                             f"got {self.input_scaling!r}")
        if not _is_number(self.target_peak) or not 0 < self.target_peak < math.inf:
            raise ModelError(f"{where}: target_peak must be a positive number, got {self.target_peak!r}")
        for key in ("logit_slope", "logit_intercept"):
            if not _is_number(getattr(self, key)):
                raise ModelError(f"{where}: {key} must be a finite number, got {getattr(self, key)!r}")
        if self.logit_slope == 0:
            raise ModelError(f"{where}: logit_slope must not be 0 (it would erase every logit)")
        if self.input_scaling == "none" and self.target_peak != DEFAULT_TARGET_PEAK:
            raise ModelError(f"{where}: target_peak={self.target_peak!r} has no effect with input_scaling "
                             "'none'; set input_scaling to 'peak_normalize' or drop target_peak")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) \
        and math.isfinite(value)


def scale_frames(frames: np.ndarray, scaling: str, target_peak: float = DEFAULT_TARGET_PEAK) -> np.ndarray:
    """``frames`` (n, samples) after a config's ``input_scaling``, as float32 (see the module docstring).

    ``"peak_normalize"`` removes each frame's mean (computed in float64) and scales the frame so
    that max |x| = ``target_peak``; constant frames become zeros.
    """
    if scaling == "none":
        return np.asarray(frames, dtype=np.float32)
    if scaling != "peak_normalize":
        raise ModelError(f"input_scaling must be one of {list(INPUT_SCALINGS)}, got {scaling!r}")
    out = np.array(frames, dtype=np.float32)            # a copy: the caller's frames stay untouched
    out -= out.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    peak = np.abs(out).max(axis=-1, keepdims=True)
    gain = np.zeros_like(peak, dtype=np.float64)
    np.divide(float(target_peak), peak, out=gain, where=peak > 0)
    out *= gain.astype(np.float32)
    return out


def load_config(spec: str | os.PathLike | dict | ModelConfig, presets: Mapping[str, dict] | None = None,
                ) -> ModelConfig:
    """A config from a preset name (a key of ``presets``: name -> config as plain data), a JSON file
    path, a dict or a config; unknown keys, missing keys and bad values raise :class:`ModelError`."""
    presets = presets or {}
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        data = spec
    elif isinstance(spec, str) and spec in presets:
        data = presets[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model config {spec!r}: not a preset ({', '.join(presets) or 'none known'}) "
                             "nor a JSON file")
        data = read_json_object(path, "model config", ModelError)
    if not isinstance(data, dict):
        raise ModelError(f"model config {spec!r}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"model config: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = sorted(f.name for f in fields(ModelConfig) if f.name not in data and f.default is MISSING)
    if missing:
        raise ModelError(f"model config: missing key(s) {missing}")
    return ModelConfig(**data)


def read_model_labels(path: Path, column: str | None = None) -> list[str]:
    """Labels, one per logit: a text file with one per line, or a CSV (first column or ``column``)."""
    if not path.is_file():
        raise ModelError(f"{path}: labels file not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise ModelError(f"{path}: empty labels file")
        header, body = rows[0], rows[1:]
        index = header.index(column) if column in header else 0
        if column and column not in header:
            raise ModelError(f"{path}: no column {column!r} (columns: {header})")
        return [r[index].strip() for r in body if r]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _norm(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().lower())


def match_labels(labels: list[str], taxonomy: pa.Table) -> tuple[list[int], list[str]]:
    """Model logit indices and taxonomy labels for taxonomy classes found among ``labels``.

    A model label matches a class by primary label, scientific name or common name (a
    BirdNET-style ``"Scientific_Common"`` label is split first), in taxonomy order.
    """
    lookup: dict[str, int] = {}
    for i, label in enumerate(labels):
        sci, _, common = label.partition("_")
        for key in (label, sci, common):
            if key:
                lookup.setdefault(_norm(key), i)
    indices, names = [], []
    rows = taxonomy.select(["primary_label", "scientific_name", "common_name"]).to_pylist()
    if "class_index" in taxonomy.column_names:
        order = np.argsort(taxonomy.column("class_index").to_numpy(zero_copy_only=False), kind="stable")
        rows = [rows[i] for i in order]
    for r in rows:
        for key in (r["primary_label"], r["scientific_name"], r["common_name"]):
            if _norm(key) in lookup:
                indices.append(lookup[_norm(key)])
                names.append(r["primary_label"])
                break
    return indices, names


class OnnxRunner:
    """onnxruntime session with the same interface as :class:`embed.tflite.TFLiteRunner`."""

    def __init__(self, model_path: Path, outputs: dict[str, tuple[str | None, int | None]], *,
                 input_name: str | None = None, threads: int = 1, batch_size: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(f"{model_path}: ONNX models need onnxruntime, which is not installed; "
                             "pip install 'birdclef-stack[onnx]' (or pip install onnxruntime)") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        chosen = [i for i in inputs if i.name == input_name] if input_name else inputs
        if len(chosen) != 1:
            raise ModelError(f"{model_path}: choose the audio input with input_name (inputs: {[i.name for i in inputs]})")
        self.input_name = chosen[0].name
        shape = chosen[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise ModelError(f"{model_path}: expected an audio input of shape [batch, samples], got {shape}")
        self.frame_len = int(shape[1])
        self.batch_size = max(1, int(batch_size)) if not isinstance(shape[0], int) else int(shape[0])
        details = [{"name": o.name, "shape": [d if isinstance(d, int) else -1 for d in o.shape], "index": i}
                   for i, o in enumerate(self.session.get_outputs())]
        from embed.tflite import match_output
        self.outputs = {role: match_output(details, role, n, d, str(model_path)) for role, (n, d) in outputs.items()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        results: dict[str, list[np.ndarray]] = {role: [] for role in self.outputs}
        for i in range(0, len(frames), self.batch_size):
            chunk = np.ascontiguousarray(frames[i: i + self.batch_size], dtype=np.float32)
            values = self.session.run([self.output_names[j] for j in self.outputs.values()], {self.input_name: chunk})
            for role, value in zip(self.outputs, values, strict=True):
                results[role].append(np.asarray(value, dtype=np.float32).reshape(len(chunk), -1))
        return {role: np.concatenate(parts) for role, parts in results.items()}


class CustomModel(FrameModel):
    """A user-supplied TFLite (.tflite) or ONNX (.onnx) model run on frames inside each window.

    ``config``: a :class:`ModelConfig`, a dict or a JSON file (a preset by name through
    :func:`embed.registry.model_config`). The extractor is named ``custom:<config name>``.
    """

    family = "custom"
    member_named = True
    table = "custom_frames"
    views = (View("custom", "embedding", "custom"), View("custom_logits", "logits", "custom_logit", "logit_labels"))

    def __init__(self, model_path: str | os.PathLike, config: str | os.PathLike | dict | ModelConfig,
                 taxonomy: pa.Table | None = None, *, hop_s: float | None = None, full_logits: bool = False,
                 labels_file: str | os.PathLike | None = None, batch_size: int | None = None, threads: int = 1):
        super().__init__()
        self.model_path = Path(model_path).expanduser().resolve()
        self.runtime = self._check_model_path()
        self.config = load_config(config)
        self.sample_rate = int(self.config.sample_rate)
        self.frame_s = float(self.config.frame_seconds)
        self.hop_s = float(hop_s or self.config.hop_seconds or self.frame_s)
        self.batch_size, self.threads = batch_size or 1, threads
        self.model_sha256 = self._model_digest()
        self.labels: list[str] = []
        labels_path = Path(labels_file) if labels_file else self._default_labels_path()
        if self.config.logits_output or self.config.logits_dim:
            if labels_path is not None and labels_path.is_file():
                self.labels = self._read_labels(labels_path)
            elif labels_file:
                raise ModelError(f"{labels_path}: labels file not found")
            else:
                self._labels_missing(labels_path)
        self.logits_mode, self.logit_indices, self._logit_labels = self._logit_selection(taxonomy, full_logits)
        self._runner: TFLiteRunner | OnnxRunner | None = None

    # hooks a family built on this one (embed.perch) overrides
    def _check_model_path(self) -> str:
        """The runtime that runs :attr:`model_path` (``"tflite"`` | ``"onnx"``); :class:`ModelError` if none."""
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        if self.model_path.suffix.lower() not in (".tflite", ".onnx"):
            raise ModelError(f"{self.model_path}: expected a .tflite or .onnx model")
        return self.model_path.suffix.lower()[1:]

    def _model_digest(self) -> str:
        return file_sha256(self.model_path)

    def _default_labels_path(self) -> Path | None:
        return self.model_path.parent / self.config.labels_file if self.config.labels_file else None

    def _read_labels(self, path: Path) -> list[str]:
        return read_model_labels(path, self.config.labels_column)

    def _labels_missing(self, looked_at: Path | None) -> None:
        """No labels file found where the config says (and none given): custom models then store no logits."""

    def _make_runner(self, outputs: dict[str, tuple[str | None, int | None]]):
        kind = OnnxRunner if self.runtime == "onnx" else TFLiteRunner
        return kind(self.model_path, outputs, input_name=self.config.input_name, threads=self.threads,
                    batch_size=self.batch_size)

    def _logit_selection(self, taxonomy: pa.Table | None, full: bool) -> tuple[str, list[int] | None, list[str]]:
        if not (self.config.logits_output or self.config.logits_dim):
            return "none", None, []
        if full:
            n = len(self.labels) or int(self.config.logits_dim or 0)
            if n == 0:
                raise ModelError(f"{self.name}: full logits need a labels file or logits_dim in the config")
            names = self.labels or [f"logit{i}" for i in range(n)]
            return "full", list(range(n)), names
        if taxonomy is not None and self.labels:
            indices, names = match_labels(self.labels, taxonomy)
            self.notes.append(f"{self.name}: {len(indices)} of {taxonomy.num_rows} taxonomy classes matched "
                              "the model's labels")
            return "matched", indices, names
        self.notes.append(f"{self.name}: logits not stored (no labels file; pass one or use full logits)")
        return "none", None, []

    @property
    def name(self) -> str:
        return f"{self.family}:{self.config.name}"

    @classmethod
    def build(cls, taxonomy: pa.Table | None, *, presets: Mapping[str, dict] | None = None,
              model: str | os.PathLike | None = None, model_config: str | os.PathLike | dict = "perch_v2",
              hop_s: float | None = None, full_logits: bool = False, labels_file: str | os.PathLike | None = None,
              batch_size: int | None = None, threads: int = 1, **_) -> CustomModel:
        """``--extractor custom --model FILE [--model-config NAME|FILE]`` (``presets``: configs by name)."""
        if model is None:
            raise DataError("--extractor custom needs --model path/to/model.tflite (or .onnx)")
        return cls(model, load_config(model_config, presets), taxonomy, hop_s=hop_s, full_logits=full_logits,
                   labels_file=labels_file, batch_size=batch_size, threads=threads)

    @classmethod
    def from_params(cls, params: dict, *, model_path: str | os.PathLike | None = None, batch_size: int | None = None,
                    threads: int = 1, **_) -> CustomModel:
        path = model_path or params["model_path"]
        self = cls(path, params["config"], None, hop_s=params["hop_s"], batch_size=batch_size, threads=threads)
        self.restore_stored(params, str(self.model_path))
        return self

    def params(self) -> dict:
        config = asdict(self.config)
        if config["input_scaling"] == "none":  # the pre-scaling config: same params, same version as before
            config.pop("input_scaling")
            config.pop("target_peak")
        if (config["logit_slope"], config["logit_intercept"]) == (1.0, 0.0):  # likewise before logit rescaling
            config.pop("logit_slope")
            config.pop("logit_intercept")
        return {"kind": self.family, "config": config, "model_path": str(self.model_path),
                "model_sha256": self.model_sha256, "sample_rate": self.sample_rate, "frame_s": self.frame_s,
                "hop_s": self.hop_s, "embedding_dtype": "float16", "logits_mode": self.logits_mode,
                "logit_indices": self.logit_indices or [], "logit_labels": self._logit_labels,
                "code_version": EMBED_CODE_VERSION}

    def logit_labels(self) -> list[str]:
        return list(self._logit_labels)

    @property
    def runner(self) -> TFLiteRunner | OnnxRunner:
        if self._runner is None:
            c = self.config
            outputs: dict[str, tuple[str | None, int | None]] = {"embedding": (c.embedding_output, c.embedding_dim)}
            if self.logits_mode != "none":
                outputs["logits"] = (c.logits_output, c.logits_dim)
            self._runner = self._make_runner(outputs)
            expected = int(round(self.frame_s * self.sample_rate))
            if self._runner.frame_len != expected:
                raise ModelError(f"{self.model_path}: input takes {self._runner.frame_len} samples but the config "
                                 f"says {self.frame_s} s at {self.sample_rate} Hz = {expected}")
        return self._runner

    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        out = self.runner.run(scale_frames(frames, self.config.input_scaling, self.config.target_peak))
        return rescale_logits(out, self.config)


def rescale_logits(out: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """``out`` with its ``logits`` mapped by the config's ``logit_slope`` and ``logit_intercept`` (computed in
    float64, stored float32); unchanged when they are 1 and 0."""
    slope, intercept = float(config.logit_slope), float(config.logit_intercept)
    if "logits" in out and (slope, intercept) != (1.0, 0.0):
        out = {**out, "logits": (out["logits"].astype(np.float64) * slope + intercept).astype(np.float32)}
    return out
