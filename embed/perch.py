"""Perch v2 (Google, 2025) as its own extractor family: ``--extractor perch --model PATH``.

``PATH`` is any of three forms of the same model, each run by its own runtime behind one interface
(``frame_len``, ``run(frames) -> {role: (n, dim) float32}``, like :class:`embed.tflite.TFLiteRunner`):

* the official **SavedModel folder** (Kaggle Models ``google/bird-vocalization-classifier/tensorFlow2/
  perch_v2_cpu``; it holds ``saved_model.pb``): :class:`SavedModelRunner`, i.e.
  ``tf.saved_model.load(PATH).signatures["serving_default"](inputs=[B, 160000] float32)``. TensorFlow
  (>= 2.20: the graph is one jax2tf ``XlaCallModule`` op of version 10) comes with
  ``pip install 'birdclef-stack[perch]'`` and is imported only when the model is first run.
  tensorflow_hub is not used: ``hub.load`` of a local folder is this same call, and its 0.16.1
  import needs ``tf_keras`` and ``pkg_resources`` (gone in setuptools >= 82). Labels:
  ``PATH/assets/labels.csv``;
* an **.onnx** file (:class:`embed.custom.OnnxRunner`) or a **.tflite** file (``TFLiteRunner``,
  outputs found through the file's ``serving_default`` signature names when it has one, as the
  TFLite converter's output from the SavedModel does). Labels: ``labels.csv`` beside the file.

``--labels FILE`` overrides the labels file. It is Perch's own format (the header line
``inat2024_fsd50k``, then one name per logit; :func:`embed.perch_map.read_perch_labels`).

The config is the registry's ``perch`` preset (:data:`embed.registry.PRESETS`): 5-s frames at
32 kHz with a 5-s hop, each frame peak-normalised to 0.25, the ``embedding`` output (1,536-d,
stored float16) and the ``label`` logits rescaled as perch-hoplite does by default
(``0.97 * logit - 10``). Only the logits mapped to the taxonomy are stored
(:func:`embed.perch_map.build_class_map`: a class's exact species logit, else the maximum over its
genus's logits), named by primary label; ``--full-logits`` stores all of them, named by Perch.
The map (per mapped class: its Perch logit indices) is part of ``params()``, so
:func:`embed.registry.from_params` rebuilds the extractor without a taxonomy or a labels file,
and its coverage by taxon group is in :attr:`notes`; the job also stores it as the side table
``perch_class_map``.

The version hashes the model bytes (a folder: every file's relative path and bytes), the
``runtime`` (``savedmodel`` | ``onnx`` | ``tflite``) and the config (input scaling, logit rescaling),
so the three forms of one model are three versions and ``extractor_versions`` says which runtime
wrote a row. This module imports neither TensorFlow nor pyarrow nor duckdb at import time.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.custom import CustomModel, ModelConfig, OnnxRunner, load_config
from embed.extractors import View
from embed.perch_map import (
    ClassMapRow,
    build_class_map,
    coverage_summary,
    mapped_logits,
    mapped_rows,
    read_perch_labels,
    to_records,
)
from embed.tflite import TFLiteRunner, match_output
from featurestore.errors import DataError, ModelError

if TYPE_CHECKING:
    import pyarrow as pa

MIN_TENSORFLOW = (2, 20)
PERCH_EXTRA = "pip install 'birdclef-stack[perch]'"
SIGNATURE = "serving_default"
CLASS_MAP_TABLE = "perch_class_map"
# what TensorFlow says when it is too old for the XlaCallModule op of Perch v2's graph (perch-hoplite #35, #133)
XLA_ERRORS = ("XlaCallModuleOp with version", "Cannot deserialize computation", "Op type not registered 'XlaCallModule'")
RUNTIMES = ("savedmodel", "onnx", "tflite")


def folder_sha256(folder: Path) -> str:
    """sha256 over every file of ``folder`` (sorted by relative path): each file's relative POSIX path, its
    size and its bytes (streamed in 1-MiB blocks), so renaming, editing or adding a file changes it."""
    digest = hashlib.sha256()
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    for path in files:
        rel = path.relative_to(folder).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "little") + rel + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_tensorflow_version(version: str, where: str) -> None:
    """:class:`ModelError` when TensorFlow ``version`` (e.g. ``"2.19.1"``) is older than 2.20, which Perch v2's
    XlaCallModule (version 10) needs; checked before loading, since older builds fail only at the first call."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_TENSORFLOW:
        raise ModelError(f"{where}: Perch v2 needs TensorFlow >= {'.'.join(map(str, MIN_TENSORFLOW))} "
                         f"(this is {version}); {PERCH_EXTRA}")


def too_old_error(exc: BaseException, version: str, where: str) -> ModelError | None:
    """The one-line error for ``exc`` when it is TensorFlow ``version`` failing on Perch v2's XLA op, else None."""
    text = str(exc)
    if any(marker in text for marker in XLA_ERRORS):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return ModelError(f"{where}: Perch v2 needs TensorFlow >= {'.'.join(map(str, MIN_TENSORFLOW))} "
                          f"(this is {version}): {first[:200]}")
    return None


class SavedModelRunner:
    """A TensorFlow SavedModel's ``serving_default`` signature with the interface of ``TFLiteRunner``.

    The signature must take one [None or B, samples] float32 input (``input_name`` picks it among several)
    and return a dict of outputs; ``outputs`` maps a role to ``(name or None, last dim or None)``, found by
    :func:`embed.tflite.match_output`. Frames go ``batch_size`` at a time; a short last batch is zero-padded
    to ``batch_size`` (the XLA graph compiles once per batch shape), its padding rows dropped.
    """

    def __init__(self, model_path: str | os.PathLike, outputs: dict[str, tuple[str | None, int | None]], *,
                 input_name: str | None = None, threads: int = 1, batch_size: int = 1):
        self.path = Path(model_path)
        where = str(self.path)
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise ModelError(f"{where}: a SavedModel folder needs TensorFlow, which is not installed; "
                             f"{PERCH_EXTRA} (or pass the model's .onnx / .tflite form)") from exc
        self.tf_version = str(tf.__version__)
        check_tensorflow_version(self.tf_version, where)
        try:  # only possible before TensorFlow's runtime starts (else it keeps its thread pools)
            tf.config.threading.set_intra_op_parallelism_threads(max(1, int(threads)))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
        try:
            loaded = tf.saved_model.load(where)
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds; all become one line
            raise too_old_error(exc, self.tf_version, where) or ModelError(
                f"{where}: cannot load the SavedModel ({type(exc).__name__}: {str(exc).strip()[:300]})") from exc
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        if SIGNATURE not in signatures:
            raise ModelError(f"{where}: the SavedModel has no {SIGNATURE!r} signature "
                             f"(signatures: {sorted(signatures) or 'none'})")
        self._loaded, self.fn = loaded, signatures[SIGNATURE]
        _, specs = self.fn.structured_input_signature
        chosen = {k: v for k, v in specs.items() if k == input_name} if input_name else dict(specs)
        shapes = {k: (v.shape.as_list() if v.shape.rank is not None else None, v.dtype.name) for k, v in specs.items()}
        if len(chosen) != 1:
            raise ModelError(f"{where}: choose the audio input with input_name ({SIGNATURE} inputs: {shapes})")
        (self.input_name, spec), = chosen.items()
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        if shape is None or len(shape) != 2 or shape[1] is None or spec.dtype != tf.float32:
            raise ModelError(f"{where}: {SIGNATURE} input {self.input_name!r} is {shapes[self.input_name]}, "
                             "expected [None, samples] float32 (Perch v2: [None, 160000] float32)")
        self.frame_len = int(shape[1])
        self.batch_size = int(shape[0]) if shape[0] is not None else max(1, int(batch_size))
        structured = self.fn.structured_outputs
        if not isinstance(structured, Mapping):
            raise ModelError(f"{where}: {SIGNATURE} returns {type(structured).__name__}, expected named outputs")
        self.output_names = sorted(structured)
        details = [{"name": name, "shape": [-1 if d is None else int(d) for d in structured[name].shape.as_list()],
                    "index": i} for i, name in enumerate(self.output_names)]
        self.outputs = {role: match_output(details, role, n, d, where) for role, (n, d) in outputs.items()}
        self._tf = tf

    def run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for ``frames`` (n, samples) float32: role -> (n, dim) float32."""
        results: dict[str, list[np.ndarray]] = {role: [] for role in self.outputs}
        for i in range(0, len(frames), self.batch_size):
            chunk = np.ascontiguousarray(frames[i: i + self.batch_size], dtype=np.float32)
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, chunk.shape[1]), np.float32)])
            try:
                out = self.fn(**{self.input_name: self._tf.constant(chunk)})
            except Exception as exc:  # noqa: BLE001 - an XLA build too old fails here, at the first call
                too_old = too_old_error(exc, self.tf_version, str(self.path))
                if too_old is not None:
                    raise too_old from exc
                raise
            for role, index in self.outputs.items():
                value = np.asarray(out[self.output_names[index]].numpy(), dtype=np.float32)
                results[role].append(value[:n].reshape(n, -1))
        return {role: (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))
                for role, parts in results.items()}


class Perch(CustomModel):
    """Perch v2 from its SavedModel folder, .onnx or .tflite (module docstring); the extractor ``perch``."""

    family = "perch"
    member_named = False
    table = "perch_frames"
    views = (View("perch", "embedding", "perch"), View("perch_logits", "logits", "perch_logit", "logit_labels"))
    PRESET = "perch"                      # its config in embed.registry.PRESETS

    def __init__(self, model_path: str | os.PathLike, config: str | os.PathLike | dict | ModelConfig,
                 taxonomy: pa.Table | None = None, *, hop_s: float | None = None, full_logits: bool = False,
                 labels_file: str | os.PathLike | None = None, batch_size: int | None = None, threads: int = 1,
                 require_labels: bool = True):
        self._require_labels = require_labels
        self.class_rows: list[ClassMapRow] = []       # the taxonomy classes with a Perch signal, in column order
        self._all_rows: list[ClassMapRow] = []        # every taxonomy class (for the side table)
        super().__init__(model_path, config, taxonomy, hop_s=hop_s, full_logits=full_logits,
                         labels_file=labels_file, batch_size=batch_size, threads=threads)

    # ------------------------------------------------------------------ the model and its labels
    def _check_model_path(self) -> str:
        path = self.model_path
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ModelError(f"{path}: a folder but not a SavedModel (no saved_model.pb in it); pass the "
                                 "Perch v2 SavedModel folder, or its .onnx / .tflite file")
            return "savedmodel"
        if not path.exists():
            raise ModelError(f"{path}: Perch model not found (expected a SavedModel folder, .onnx or .tflite)")
        suffix = path.suffix.lower()
        if suffix not in (".onnx", ".tflite"):
            raise ModelError(f"{path}: expected the Perch v2 SavedModel folder, an .onnx or a .tflite file")
        return suffix[1:]

    def _model_digest(self) -> str:
        if self.runtime == "savedmodel":
            return folder_sha256(self.model_path)
        return super()._model_digest()

    def _default_labels_path(self) -> Path | None:
        name = self.config.labels_file or "labels.csv"
        return self.model_path / "assets" / name if self.runtime == "savedmodel" else self.model_path.parent / name

    def _labels_missing(self, looked_at: Path | None) -> None:
        if self._require_labels:
            raise ModelError(f"{self.model_path}: Perch labels not found at {looked_at} (Perch v2's class list: "
                             "the header inat2024_fsd50k, then one name per logit); --labels FILE overrides")

    def _read_labels(self, path: Path) -> list[str]:
        return read_perch_labels(path)

    def _logit_selection(self, taxonomy: pa.Table | None, full: bool) -> tuple[str, list[int] | None, list[str]]:
        if not self.labels:
            return "none", None, []     # rebuilt from params without a labels file: restore_stored sets them
        if full:
            return "full", list(range(len(self.labels))), list(self.labels)
        if taxonomy is None:
            if self._require_labels:   # (not when rebuilt from params: restore_stored sets the selection)
                self.notes.append(f"{self.name}: logits not stored (no taxonomy to map them to; use full logits)")
            return "none", None, []
        self._all_rows = build_class_map(self.labels, taxonomy)
        self.class_rows = mapped_rows(self._all_rows)
        self.notes.append(f"{self.name}: {len(self.class_rows)} of {len(self._all_rows)} taxonomy classes read "
                          f"Perch's {len(self.labels)} logits (exact species, else genus max):\n"
                          + "\n".join(f"        {line}" for line in coverage_summary(self._all_rows).splitlines()))
        return "mapped", list(range(len(self.class_rows))), [r.primary_label for r in self.class_rows]

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.family

    @classmethod
    def build(cls, taxonomy: pa.Table | None, *, presets: Mapping[str, dict] | None = None,
              model: str | os.PathLike | None = None, perch_model: str | os.PathLike | None = None,
              hop_s: float | None = None, full_logits: bool = False, labels_file: str | os.PathLike | None = None,
              batch_size: int | None = None, threads: int = 1, **_) -> Perch:
        """``--extractor perch --model PATH`` (``--perch-model`` when a custom model runs beside it);
        ``--model-config`` is the custom family's and is not read: the config is the ``perch`` preset."""
        path = perch_model or model
        if path is None:
            raise DataError("--extractor perch needs --model PATH: the Perch v2 SavedModel folder "
                            "(with saved_model.pb), or its .onnx / .tflite file")
        presets = presets or {}
        if cls.PRESET not in presets:
            raise ModelError(f"no {cls.PRESET!r} preset for the perch family")
        return cls(path, load_config(presets[cls.PRESET]), taxonomy, hop_s=hop_s, full_logits=full_logits,
                   labels_file=labels_file, batch_size=batch_size, threads=threads)

    @classmethod
    def from_params(cls, params: dict, *, model_path: str | os.PathLike | None = None, batch_size: int | None = None,
                    threads: int = 1, **_) -> Perch:
        path = model_path or params["model_path"]
        self = cls(path, params["config"], None, hop_s=params["hop_s"], batch_size=batch_size, threads=threads,
                   require_labels=False)
        if self.runtime != params["runtime"]:
            raise ModelError(f"{self.model_path}: a {self.runtime} model, but the stored perch version was "
                             f"written by the {params['runtime']} form (sha256 {params['model_sha256'][:12]})")
        self.restore_stored(params, str(self.model_path))
        if self.logits_mode == "mapped":
            self.class_rows = [ClassMapRow(primary_label=label, scientific_name="", class_name="", match=match,
                                           perch_indices=tuple(indices), perch_names=("",) * len(indices))
                               for label, match, indices in params["class_map"]]
            self.logit_indices = list(range(len(self.class_rows)))
        return self

    def params(self) -> dict:
        params = {**super().params(), "runtime": self.runtime}
        if self.logits_mode == "mapped":   # columns are classes: per class its Perch logits (max over a genus)
            params["logit_indices"] = []
            params["class_map"] = [[r.primary_label, r.match, [int(i) for i in r.perch_indices]]
                                   for r in self.class_rows]
        return params

    def side_tables(self) -> dict[str, tuple[pa.Table, dict]]:
        """``perch_class_map``: every taxonomy class, its match (exact / genus / none) and Perch logits."""
        if not self._all_rows:
            return {}
        import pyarrow as pa

        from featurestore.store import utc_now

        table = pa.Table.from_pylist(to_records(self._all_rows))
        n = table.num_rows
        table = table.append_column("model_sha256", pa.array([self.model_sha256] * n)) \
            .append_column("created_at", pa.array([utc_now()] * n, pa.timestamp("us")))
        return {CLASS_MAP_TABLE: (table, {"model_sha256": self.model_sha256})}

    # ------------------------------------------------------------------ running
    def _make_runner(self, outputs: dict[str, tuple[str | None, int | None]]):
        c = self.config
        if self.runtime == "savedmodel":
            return SavedModelRunner(self.model_path, outputs, input_name=c.input_name, threads=self.threads,
                                    batch_size=self.batch_size)
        if self.runtime == "tflite":
            return TFLiteRunner(self.model_path, outputs, input_name=c.input_name, threads=self.threads,
                                batch_size=self.batch_size, signature=SIGNATURE)
        try:
            return OnnxRunner(self.model_path, outputs, input_name=c.input_name, threads=self.threads,
                              batch_size=self.batch_size)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            raise ModelError(f"{self.model_path}: not an ONNX model onnxruntime can load "
                             f"({type(exc).__name__}: {str(exc).strip()[:200]})") from exc

    def warm_up(self) -> None:
        """Load the model once in the parent, before workers start, so a wrong signature, a file that is not a
        model or a TensorFlow too old is one error line rather than one per worker."""
        _ = self.runner

    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        out = super()._run(frames)          # scaled frames in, rescaled logits out (CustomModel's path)
        if "logits" in out and self.logits_mode == "mapped":
            out["logits"] = mapped_logits(out["logits"], self.class_rows)
        return out
