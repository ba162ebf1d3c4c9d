"""User-supplied audio models (TFLite or ONNX) described by a small config, e.g. Perch v2.

A config says how to feed and read the model::

    {"name": "perch_v2", "sample_rate": 32000, "frame_seconds": 5.0, "hop_seconds": 5.0,
     "input_name": null, "embedding_output": "embedding", "embedding_dim": 1536,
     "logits_output": "label", "logits_dim": 14795, "labels_file": null}

Outputs are found by name (exact, then case-insensitive substring) and else by their last
dimension, so exported models whose tensor names differ still load. ``labels_file`` (one label
per line, or a CSV whose first column holds the labels) names the logits; logits of labels that
match the taxonomy (primary label, scientific name or common name) are stored, or all of them with
``full_logits``. No model weights ship with this toolkit: pass ``--model path/to/model.tflite``.
ONNX needs onnxruntime (``pip install 'birdclef-stack[onnx]'``), imported only when used.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from embed.extractors import EMBED_CODE_VERSION, FrameModel, file_sha256
from embed.tflite import ModelError, TFLiteRunner

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


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

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise ModelError(f"model config name {self.name!r}: use lower-case letters, digits and _")
        if self.frame_seconds <= 0 or self.frame_seconds > 5:
            raise ModelError(f"model config {self.name}: frame_seconds must be in (0, 5]")


PRESETS: dict[str, ModelConfig] = {
    # Perch v2 (Google, 2025): 5-s frames at 32 kHz, 1,536-d embedding, 14,795 class logits.
    "perch_v2": ModelConfig(name="perch_v2", sample_rate=32000, frame_seconds=5.0, hop_seconds=5.0,
                            embedding_output="embedding", embedding_dim=1536, logits_output="label",
                            logits_dim=14795, labels_file="labels.csv"),
}


def load_config(spec: str | os.PathLike | dict | ModelConfig) -> ModelConfig:
    """A preset name (``perch_v2``), a JSON file path, a dict or a config."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        data = spec
    elif str(spec) in PRESETS:
        return PRESETS[str(spec)]
    else:
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model config {spec!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: invalid JSON ({exc})") from exc
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"model config: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return ModelConfig(**data)
    except TypeError as exc:
        raise ModelError(f"model config: {exc}") from exc


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
        from embed.tflite import _match_output
        self.outputs = {role: _match_output(details, role, n, d, str(model_path)) for role, (n, d) in outputs.items()}
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
    """A user-supplied TFLite (.tflite) or ONNX (.onnx) model run on frames inside each window."""

    table = "custom_frames"

    def __init__(self, model_path: str | os.PathLike, config: str | os.PathLike | dict | ModelConfig = "perch_v2",
                 taxonomy: pa.Table | None = None, *, hop_s: float | None = None, full_logits: bool = False,
                 labels_file: str | os.PathLike | None = None, batch_size: int = 1, threads: int = 1):
        self.model_path = Path(model_path).expanduser().resolve()
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        if self.model_path.suffix.lower() not in (".tflite", ".onnx"):
            raise ModelError(f"{self.model_path}: expected a .tflite or .onnx model")
        self.config = load_config(config)
        self.name = f"custom:{self.config.name}"
        self.sample_rate = int(self.config.sample_rate)
        self.frame_s = float(self.config.frame_seconds)
        self.hop_s = float(hop_s or self.config.hop_seconds or self.frame_s)
        self.batch_size, self.threads = batch_size, threads
        self.model_sha256 = file_sha256(self.model_path)
        self.labels: list[str] = []
        labels_path = Path(labels_file) if labels_file else (
            self.model_path.parent / self.config.labels_file if self.config.labels_file else None)
        if self.config.logits_output or self.config.logits_dim:
            if labels_path is not None and labels_path.is_file():
                self.labels = read_model_labels(labels_path, self.config.labels_column)
            elif labels_file:
                raise ModelError(f"{labels_path}: labels file not found")
        self.notes: list[str] = []
        self.logits_mode, self.logit_indices, self._logit_labels = self._logit_selection(taxonomy, full_logits)
        self._runner: TFLiteRunner | OnnxRunner | None = None

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

    @classmethod
    def from_params(cls, params: dict, *, model_path: str | os.PathLike | None = None, batch_size: int = 1,
                    threads: int = 1, **_) -> CustomModel:
        path = model_path or params["model_path"]
        self = cls(path, params["config"], None, hop_s=params["hop_s"], batch_size=batch_size, threads=threads)
        self.restore_stored(params, str(self.model_path))
        return self

    def params(self) -> dict:
        return {"kind": "custom", "config": asdict(self.config), "model_path": str(self.model_path),
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
            kind = OnnxRunner if self.model_path.suffix.lower() == ".onnx" else TFLiteRunner
            self._runner = kind(self.model_path, outputs, input_name=c.input_name, threads=self.threads,
                                batch_size=self.batch_size)
            expected = int(round(self.frame_s * self.sample_rate))
            if self._runner.frame_len != expected:
                raise ModelError(f"{self.model_path}: input takes {self._runner.frame_len} samples but the config "
                                 f"says {self.frame_s} s at {self.sample_rate} Hz = {expected}")
        return self._runner

    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.run(frames)
