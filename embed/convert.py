"""Perch v2's SavedModel folder -> ``.onnx`` / ``.tflite``, then a parity check through the perch extractor.

:func:`convert` writes the converted model atomically (a temporary name in the same folder, then a rename)
and copies the SavedModel's ``assets/labels.csv`` beside it as ``labels.csv`` (what the perch family reads for
a file):

* **TFLite**: TensorFlow's converter from the ``serving_default`` signature, builtin ops only; when that
  fails, again with ``SELECT_TF_OPS`` + custom ops, and then the result is refused if it still needs Flex
  (TensorFlow) or custom ops, named, because the Kaggle runtime (``ai-edge-litert``) cannot run them. The
  converter lowers jax2tf's ``XlaCallModule`` (the whole real Perch v2 graph) to builtin ops.
* **ONNX**: tf2onnx (``pip install 'birdclef-stack[perch]'``), opset :data:`ONNX_OPSET`. tf2onnx 1.17 has no
  handler for ``XlaCallModule`` (nor the other ``Xla*`` ops), so a graph holding one is refused at once,
  before loading it (:func:`saved_model_ops` reads ``saved_model.pb``), with the known route
  (:data:`ONNX_ROUTE`); any other op tf2onnx leaves unconverted is refused after it tried, named.

:func:`parity` runs the SavedModel and the converted file through the perch extractor's own path
(:class:`embed.perch.Perch`: frames of real clips, peak-normalised, float16 embeddings, logits rescaled)
and refuses a conversion past :data:`MIN_COSINE` / :data:`MAX_DLOGIT`; :func:`convert_checked` moves a
refused file aside to ``<out>.failed``. TensorFlow, tf2onnx and onnx are imported inside the functions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.perch import PERCH_EXTRA, SIGNATURE
from featurestore.errors import DataError, ModelError

if TYPE_CHECKING:
    import pyarrow as pa

TARGETS = ("onnx", "tflite")
ONNX_OPSET = 17
# Parity thresholds for float32 conversions of one model (the converters only re-order float32 arithmetic):
# every frame's embedding cosine (of the stored float16 embeddings, whose rounding alone costs < 1e-6) at least
# MIN_COSINE, and no rescaled logit (0.97 x - 10, what the store keeps) further apart than MAX_DLOGIT. A wrong
# conversion (other weights, a dropped op) misses both by far; a float16 / int8 quantised file would not pass.
MIN_COSINE = 0.999
MAX_DLOGIT = 0.05
ONNX_ROUTE = ("use an ONNX conversion made elsewhere (e.g. the public Perch v2 ONNX ports on Kaggle / Hugging "
              "Face): pipelines.embed --extractor perch --model that.onnx accepts it as is (labels.csv beside it), "
              "or convert with --to tflite")
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- the SavedModel
def check_saved_model(saved_model: Path) -> Path:
    """``saved_model`` as a Path when it is a SavedModel folder with ``assets/labels.csv``; else ModelError."""
    path = Path(saved_model).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path}: not a folder; --model is the Perch v2 SavedModel folder (with saved_model.pb)")
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"{path}: a folder but not a SavedModel (no saved_model.pb in it)")
    if not (path / "assets" / "labels.csv").is_file():
        raise ModelError(f"{path}: no assets/labels.csv (Perch v2's class list), which the converted model needs "
                         "beside it")
    return path


def saved_model_ops(saved_model: Path) -> set[str]:
    """Every op type in ``saved_model.pb``: its graphs' nodes and every function of their libraries (the
    signature's body lives there, behind a ``StatefulPartitionedCall``). Parses the protobuf; loads nothing."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(saved_model) / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: one line
        raise ModelError(f"{saved_model}: saved_model.pb is not a SavedModel ({type(exc).__name__})") from exc
    ops: set[str] = set()
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def onnx_blockers(ops: Iterable[str]) -> list[str]:
    """The ops of ``ops`` tf2onnx 1.17 has no handler for, known up front: ``XlaCallModule`` (jax2tf's
    StableHLO module) and every other ``Xla*`` op (onnx/tensorflow-onnx #1601, #1984). Sorted."""
    return sorted(op for op in set(ops) if op.startswith("Xla"))


# ---------------------------------------------------------------------------- writing
def _temp_beside(out: Path) -> Path:
    """A temporary name in ``out``'s folder with ``out``'s suffix (so a runtime still knows the format)."""
    return out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")


def _write_atomic(out: Path, data: bytes) -> None:
    tmp = _temp_beside(out)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert(saved_model: Path, to: str, out: Path, *, say: Say = _quiet) -> Path:
    """Convert the SavedModel folder ``saved_model`` to ``to`` (``onnx`` | ``tflite``) at ``out`` (written
    atomically) and copy its ``assets/labels.csv`` beside it as ``labels.csv``; returns ``out``."""
    if to not in TARGETS:
        raise DataError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    saved_model = check_saved_model(saved_model)
    out = Path(out).expanduser()
    if out.suffix.lower() != f".{to}":
        raise DataError(f"{out}: a {to} model must be named *.{to} (the perch extractor picks its runtime by "
                        "the suffix)")
    if out.resolve().parent == saved_model.resolve() or saved_model.resolve() in out.resolve().parents:
        raise DataError(f"{out}: inside the SavedModel folder; write it elsewhere (the folder's bytes are its "
                        "version)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if to == "tflite":
        data = to_tflite(saved_model, say=say)
        _write_atomic(out, data)
    else:
        to_onnx(saved_model, out, say=say)
    labels = out.parent / "labels.csv"
    source = saved_model / "assets" / "labels.csv"
    if not labels.exists() or labels.read_bytes() != source.read_bytes():
        _write_atomic(labels, source.read_bytes())
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {labels}")
    return out


def to_tflite(saved_model: Path, *, say: Say = _quiet) -> bytes:
    """The ``serving_default`` signature as a TFLite flatbuffer: builtin ops only, else with Select TF ops (then
    refused, naming them, if the result needs Flex or custom ops)."""
    import tensorflow as tf

    def converter():
        c = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
        return c

    say(f"converting {saved_model} to TFLite (TensorFlow {tf.__version__}, builtin ops) ...")
    try:
        return _checked_tflite(converter().convert(), saved_model)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and others: retried once
        first = _first_line(exc)
        say(f"  builtin ops only failed ({first[:160]}); retrying with Select TF ops ...")
    c = converter()
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    c.allow_custom_ops = True
    try:
        data = c.convert()
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{saved_model}: the TFLite converter failed ({_first_line(exc)[:300]})") from exc
    return _checked_tflite(data, saved_model)


def tflite_custom_ops(data: bytes) -> list[str]:
    """The non-builtin ops a TFLite flatbuffer uses (``Flex*`` = TensorFlow ops, others = custom), sorted."""
    from ai_edge_litert import schema_py_generated as s

    model = s.Model.GetRootAs(data, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == s.BuiltinOperator.CUSTOM:
            names.add((code.CustomCode() or b"?").decode())
    return sorted(names)


def _checked_tflite(data: bytes, saved_model: Path) -> bytes:
    custom = tflite_custom_ops(data)
    if custom:
        flex = [name for name in custom if name.startswith("Flex")]
        what = "TensorFlow (Flex) ops" if flex else "custom ops"
        raise ModelError(f"{saved_model}: the TFLite form needs {what} {', '.join(custom)}, which the Kaggle runtime "
                         "(ai-edge-litert) cannot run; use an ONNX form made elsewhere, or the SavedModel with "
                         "TensorFlow")
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=data).allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{saved_model}: ai-edge-litert cannot load the converted model ({_first_line(exc)[:300]})"
                         ) from exc
    return data


def to_onnx(saved_model: Path, out: Path, *, say: Say = _quiet) -> None:
    """The ``serving_default`` signature as ONNX (tf2onnx, opset :data:`ONNX_OPSET`), outputs named as the
    signature's (``embedding``, ``label``, ...), written atomically to ``out``."""
    blockers = onnx_blockers(saved_model_ops(saved_model))
    if blockers:
        raise ModelError(f"{saved_model}: tf2onnx cannot convert op {', '.join(blockers)} (Perch v2's graph is one "
                         f"jax2tf XlaCallModule); {ONNX_ROUTE}")
    try:
        import logging

        import tensorflow as tf
        from tf2onnx import convert as tf2onnx_convert
        from tf2onnx import tf_loader
    except ImportError as exc:
        raise ModelError(f"--to onnx needs tf2onnx, which is not installed: {PERCH_EXTRA}") from exc
    import onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    say(f"converting {saved_model} to ONNX (tf2onnx, opset {ONNX_OPSET}) ...")
    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved_model), None, None, None, [SIGNATURE], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        with tf.device("/cpu:0"):
            # the command line's --saved-model path (outputs named as the signature's); every op tf2onnx cannot
            # map stays in the graph as it was (continue_on_error), so unconverted_onnx_ops names them all
            model, _ = tf2onnx_convert._convert_common(
                graph_def, name=str(saved_model), continue_on_error=True, opset=ONNX_OPSET, input_names=inputs,
                output_names=outputs, tensors_to_rename=renames, initialized_tables=tables)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many kinds
        raise ModelError(f"{saved_model}: tf2onnx failed ({type(exc).__name__}: {_first_line(exc)[:300]})") from exc
    left = unconverted_onnx_ops(model)
    if left:
        raise ModelError(f"{saved_model}: tf2onnx cannot convert op {', '.join(left)}; {ONNX_ROUTE}")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx's ValidationError
        raise ModelError(f"{saved_model}: tf2onnx wrote an invalid ONNX model ({_first_line(exc)[:300]})") from exc
    _write_atomic(out, model.SerializeToString())


def unconverted_onnx_ops(model) -> list[str]:
    """Op types in an ONNX ``model`` (and its subgraphs) that no ONNX operator set defines in their domain:
    the TensorFlow ops tf2onnx left as they were. Sorted."""
    import onnx

    left: set[str] = set()

    def visit(graph) -> None:
        for node in graph.node:
            if not onnx.defs.has(node.op_type, node.domain or ""):
                left.add(node.op_type if not node.domain else f"{node.domain}.{node.op_type}")
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)

    visit(model.graph)
    return sorted(left)


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


# ---------------------------------------------------------------------------- parity
@dataclass(frozen=True)
class ParityResult:
    """How far the converted model is from the SavedModel on real audio, through the extractor: ``frames``
    5-s frames of ``clips`` files; ``min_cosine`` of the embeddings, ``max_dlogit`` of all rescaled logits,
    ``max_dlogit_stored`` of the logits mapped to the taxonomy (None without a taxonomy: never more than
    ``max_dlogit``, each being one logit or a max over some)."""

    clips: int
    frames: int
    min_cosine: float
    max_dlogit: float
    max_dlogit_stored: float | None

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.max_dlogit <= MAX_DLOGIT and (
            self.max_dlogit_stored is None or self.max_dlogit_stored <= MAX_DLOGIT)

    def line(self) -> str:
        stored = ("n/a (no taxonomy)" if self.max_dlogit_stored is None else f"{self.max_dlogit_stored:.3g}")
        return (f"parity on {self.frames} frames of {self.clips} clips: min embedding cosine {self.min_cosine:.6f} "
                f"(>= {MIN_COSINE}), max |dlogit| {self.max_dlogit:.3g} (<= {MAX_DLOGIT}), stored (mapped) "
                f"logits {stored}")


def audio_files(paths: Sequence[Path | str], max_files: int | None = None) -> list[Path]:
    """The audio files of ``paths`` (files as given, folders searched recursively, sorted), the first
    ``max_files``; DataError when a path is missing or none is found."""
    from featurestore.windows import decodable_suffixes

    found: list[Path] = []
    for p in map(lambda x: Path(x).expanduser(), paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in decodable_suffixes()))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such audio file or folder (--check-audio)")
    if not found:
        raise DataError(f"no audio files ({', '.join(decodable_suffixes())}) under {', '.join(map(str, paths))}")
    return found[:max_files] if max_files else found


def parity(saved_model: Path, converted: Path, clips: Sequence[Path], *, say: Say = _quiet,
           taxonomy: pa.Table | None = None) -> ParityResult:
    """Both models through the perch extractor (:class:`embed.perch.Perch`, full rescaled logits; the stored
    mapped logits through :func:`embed.perch_map.mapped_logits` when ``taxonomy`` is given) on every window
    of ``clips``: the :class:`ParityResult`, printed through ``say``; ModelError past the thresholds
    (the file is left where it is: :func:`convert_checked` moves it aside)."""
    from embed import registry
    from embed.audio import Audio
    from embed.perch_map import build_class_map, mapped_logits, mapped_rows
    from featurestore.windows import window_starts

    reference = registry.build("perch", None, model=saved_model, full_logits=True)
    candidate = registry.build("perch", None, model=converted, full_logits=True)
    if reference.labels != candidate.labels:
        raise ModelError(f"{converted}: its labels.csv differs from {saved_model}'s assets/labels.csv")
    rows = mapped_rows(build_class_map(reference.labels, taxonomy)) if taxonomy is not None else None
    cosines: list[np.ndarray] = []
    dlogit, dstored = 0.0, (0.0 if rows is not None else None)
    say(f"parity check: {len(clips)} clips through the SavedModel ({reference.version}) and {converted.name} "
        f"({candidate.version}) ...")
    for clip in clips:
        audio = Audio.open(clip)
        starts = window_starts(audio.duration_s, soundscape=False)
        a, b = reference.compute(audio, starts), candidate.compute(audio, starts)
        ea, eb = a.embedding.astype(np.float64), b.embedding.astype(np.float64)
        norms = np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)
        cosines.append(np.where(norms > 0, (ea * eb).sum(axis=1) / np.where(norms > 0, norms, 1.0),
                                np.where((ea == eb).all(axis=1), 1.0, 0.0)))
        la, lb = a.logits.astype(np.float64), b.logits.astype(np.float64)
        dlogit = max(dlogit, float(np.abs(la - lb).max(initial=0.0)))
        if rows is not None and rows:
            dstored = max(dstored, float(np.abs(mapped_logits(la, rows) - mapped_logits(lb, rows)).max(initial=0.0)))
    all_cos = np.concatenate(cosines) if cosines else np.ones(0)
    result = ParityResult(clips=len(clips), frames=int(all_cos.size), min_cosine=float(all_cos.min(initial=1.0)),
                          max_dlogit=dlogit, max_dlogit_stored=dstored)
    say(result.line())
    if not result.ok:
        raise ModelError(f"{converted}: parity check failed: {result.line()}")
    return result


def convert_checked(saved_model: Path, to: str, out: Path, clips: Sequence[Path] | None, *, say: Say = _quiet,
                    taxonomy: pa.Table | None = None) -> tuple[Path, ParityResult | None]:
    """:func:`convert`, then :func:`check_or_move_aside` on ``clips`` (skipped when None). The conversion is
    checked under a hidden name beside ``out`` (``.<stem>.checking<suffix>``) and renamed to ``out`` only once
    it passed, so ``out`` never holds an unchecked model (an interrupt or a crash mid-check leaves the previous
    ``out``, if any, as it was); one that fails parity is moved to ``<out>.failed`` and refused."""
    out = Path(out).expanduser()
    if clips is None:
        convert(saved_model, to, out, say=say)
        say("parity check skipped (--no-check)")
        return out, None
    checking = out.with_name(f".{out.stem}.checking{out.suffix}")
    try:
        convert(saved_model, to, checking, say=lambda line: say(line.replace(str(checking), str(out))))
        try:
            result = parity(Path(saved_model).expanduser(), checking, clips, say=say, taxonomy=taxonomy)
        except ModelError as exc:
            failed = out.with_name(out.name + ".failed")
            shutil.move(str(checking), failed)
            raise ModelError(f"{str(exc).replace(str(checking), str(out))}; moved to {failed}") from exc
        os.replace(checking, out)
    finally:
        checking.unlink(missing_ok=True)
    return out, result


def check_or_move_aside(saved_model: Path, converted: Path, clips: Sequence[Path], *, say: Say = _quiet,
                        taxonomy: pa.Table | None = None) -> ParityResult:
    """:func:`parity`; when it refuses, ``converted`` is moved to ``<converted>.failed`` first (kept to inspect,
    nothing left under the name a job would load) and the error says so."""
    try:
        return parity(Path(saved_model).expanduser(), converted, clips, say=say, taxonomy=taxonomy)
    except ModelError as exc:
        failed = converted.with_name(converted.name + ".failed")
        if converted.exists():
            shutil.move(str(converted), failed)
            raise ModelError(f"{exc}; moved to {failed}") from exc
        raise
