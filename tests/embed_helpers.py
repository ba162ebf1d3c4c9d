"""Helpers for the embedding tests: a shared BirdNET cache folder and tiny real TFLite / ONNX models.

The tiny model is built from the flatbuffer schema (no TensorFlow needed). Graph: audio [batch, n] -> RESHAPE [batch, dim, n / dim] -> MEAN over the last axis -> embedding
[batch, dim] -> FULLY_CONNECTED (W, b) -> logits [batch, k]. Its outputs have a closed form, so a
test can recompute them with numpy. :func:`build_tiny_onnx` writes the same graph (same ``W``,
``b`` for the same seed) as ONNX, so the two runtimes can be compared.

:func:`build_band_power_onnx` writes a small Perch-shaped ONNX embedder ("inputs" [batch, n] ->
"embedding" = log mean power of a bank of windowed cosine/sine filters over 8-ms sub-frames,
"label" = a dense layer on it, plus a rank-3 "spatial_embedding" distractor output); its numpy
float64 twin is :func:`band_power_reference`. ONNX helpers import ``onnx`` when called, so a
missing package fails the ONNX tests (it is in the ``test`` extra) and only those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as s


def birdnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patched-model cache per test session, under pytest's temp folder (never the user's cache)."""
    return tmp_path_factory.getbasetemp() / "birdnet-cache"


def damage_payload(part: Path, column: str = "embedding") -> None:
    """Overwrite 40 bytes inside the first data page of ``column`` in Parquet file ``part``, footer intact: the
    file opens and its other columns read, only reading that column's values fails."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(part)
    chunk = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                 if meta.row_group(0).column(i).path_in_schema.startswith(column))
    with open(part, "r+b") as fh:
        fh.seek(chunk.data_page_offset + 20)
        fh.write(b"\xff" * 40)


def _buffer(array: np.ndarray | None) -> s.BufferT:
    b = s.BufferT()
    if array is not None:
        b.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
    return b


def _tensor(name: str, shape: list[int], dtype: int, buffer: int, signature: list[int] | None = None) -> s.TensorT:
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer = name, np.asarray(shape, np.int32), dtype, buffer
    if signature is not None:
        t.shapeSignature = np.asarray(signature, np.int32)
    return t


def _op(opcode: int, inputs: list[int], outputs: list[int], options_type: int, options) -> s.OperatorT:
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def build_tiny_tflite(path: Path, n_samples: int, dim: int, n_logits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the model to ``path``; returns its dense layer ``W`` (k, dim) and ``b`` (k,)."""
    assert n_samples % dim == 0
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_logits, dim)).astype(np.float32)
    b = rng.normal(size=n_logits).astype(np.float32)
    F32, I32 = s.TensorType.FLOAT32, s.TensorType.INT32

    codes = []
    for builtin in (s.BuiltinOperator.RESHAPE, s.BuiltinOperator.MEAN, s.BuiltinOperator.FULLY_CONNECTED):
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, builtin, 1
        codes.append(c)
    new_shape = np.asarray([-1, dim, n_samples // dim], np.int32)
    buffers = [_buffer(None), _buffer(None), _buffer(new_shape), _buffer(None), _buffer(np.asarray([2], np.int32)),
               _buffer(None), _buffer(W), _buffer(b), _buffer(None)]
    tensors = [
        _tensor("audio", [1, n_samples], F32, 1, [-1, n_samples]),
        _tensor("new_shape", [3], I32, 2),
        _tensor("reshaped", [1, dim, n_samples // dim], F32, 3, [-1, dim, n_samples // dim]),
        _tensor("axis", [1], I32, 4),
        _tensor("embedding", [1, dim], F32, 5, [-1, dim]),
        _tensor("dense/W", [n_logits, dim], F32, 6),
        _tensor("dense/b", [n_logits], F32, 7),
        _tensor("logits", [1, n_logits], F32, 8, [-1, n_logits]),
    ]
    reshape = s.ReshapeOptionsT()
    reshape.newShape = new_shape
    mean = s.ReducerOptionsT()
    mean.keepDims = False
    dense = s.FullyConnectedOptionsT()
    dense.fusedActivationFunction = s.ActivationFunctionType.NONE
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs = tensors, np.asarray([0], np.int32), np.asarray([4, 7], np.int32)
    graph.name = "main"
    graph.operators = [
        _op(0, [0, 1], [2], s.BuiltinOptions.ReshapeOptions, reshape),
        _op(1, [2, 3], [4], s.BuiltinOptions.ReducerOptions, mean),
        _op(2, [4, 5, 6], [7], s.BuiltinOptions.FullyConnectedOptions, dense),
    ]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    model.description = "birdclef-stack test model"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(bytes(builder.Output()))
    return W, b


def tiny_reference(frames: np.ndarray, dim: int, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 recomputation of the tiny model's embedding and logits."""
    emb = frames.astype(np.float64).reshape(len(frames), dim, -1).mean(axis=2)
    return emb, emb @ W.T.astype(np.float64) + b


def build_tiny_onnx(path: Path, n_samples: int, dim: int, n_logits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The graph of :func:`build_tiny_tflite` (same ``W``, ``b`` for the same seed) as an ONNX model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert n_samples % dim == 0
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_logits, dim)).astype(np.float32)
    b = rng.normal(size=n_logits).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["audio", "new_shape"], ["reshaped"]),
         helper.make_node("ReduceMean", ["reshaped", "axis"], ["embedding"], keepdims=0),
         helper.make_node("Gemm", ["embedding", "dense_W", "dense_b"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", n_samples])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_logits])],
        [numpy_helper.from_array(np.asarray([-1, dim, n_samples // dim], np.int64), "new_shape"),
         numpy_helper.from_array(np.asarray([2], np.int64), "axis"),
         numpy_helper.from_array(W, "dense_W"), numpy_helper.from_array(b, "dense_b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="birdclef-stack tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return W, b


@dataclass(frozen=True)
class BandPower:
    """Weights of the band-power ONNX model: filters ``F`` (sub, 2 * bands), dense ``W`` (2 * bands, k), ``b``."""

    F: np.ndarray
    W: np.ndarray
    b: np.ndarray
    eps: float


def build_band_power_onnx(path: Path, n_samples: int, sample_rate: int, n_logits: int, *, sub: int = 256,
                          bands: int = 16, seed: int = 0) -> BandPower:
    """Write the band-power embedder (see the module docstring); embedding dim ``2 * bands``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert n_samples % sub == 0
    t = np.arange(sub) / sample_rate
    freqs = np.geomspace(250.0, 12000.0, bands)
    window = np.hanning(sub)
    F = np.concatenate([window[:, None] * np.cos(2 * np.pi * freqs * t[:, None]),
                        window[:, None] * np.sin(2 * np.pi * freqs * t[:, None])], axis=1) / np.sqrt(sub)
    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(2 * bands, n_logits)) / np.sqrt(2 * bands)).astype(np.float32)
    b = rng.normal(size=n_logits).astype(np.float32)
    F = F.astype(np.float32)
    eps = 1e-6
    n_sub = n_samples // sub
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["inputs", "sub_frames"], ["framed"]),
         helper.make_node("MatMul", ["framed", "filters"], ["projected"]),
         helper.make_node("Mul", ["projected", "projected"], ["spatial_embedding"]),
         helper.make_node("ReduceMean", ["spatial_embedding", "time_axis"], ["band_power"], keepdims=0),
         helper.make_node("Add", ["band_power", "eps"], ["band_power_eps"]),
         helper.make_node("Log", ["band_power_eps"], ["embedding"]),
         helper.make_node("Gemm", ["embedding", "dense_W", "dense_b"], ["label"])],
        "band_power", [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", n_samples])],
        [helper.make_tensor_value_info("spatial_embedding", TensorProto.FLOAT, ["batch", n_sub, 2 * bands]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2 * bands]),
         helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", n_logits])],
        [numpy_helper.from_array(np.asarray([-1, n_sub, sub], np.int64), "sub_frames"),
         numpy_helper.from_array(F, "filters"),
         numpy_helper.from_array(np.asarray([1], np.int64), "time_axis"),
         numpy_helper.from_array(np.asarray(eps, np.float32), "eps"),
         numpy_helper.from_array(W, "dense_W"), numpy_helper.from_array(b, "dense_b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="birdclef-stack tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return BandPower(F, W, b, float(np.float32(eps)))


def band_power_reference(frames: np.ndarray, model: BandPower) -> tuple[np.ndarray, np.ndarray]:
    """float64 recomputation of the band-power model's embedding and label logits."""
    sub = model.F.shape[0]
    x = frames.astype(np.float64).reshape(len(frames), -1, sub)
    power = (x @ model.F.astype(np.float64)) ** 2
    emb = np.log(power.mean(axis=1) + model.eps)
    return emb, emb @ model.W.astype(np.float64) + model.b.astype(np.float64)


# ---------------------------------------------------------------------------- a tiny Perch v2 stand-in
PERCH_SAMPLES, PERCH_STEPS, PERCH_BINS = 160000, 500, 128     # 5 s at 32 kHz; spectrogram [500, 128] as Perch v2's


@dataclass(frozen=True)
class TinyPerch:
    """Weights of the tiny Perch stand-in (:func:`build_tiny_perch`), seeded: spectrogram filters ``F`` (320,
    128), embedding ``W`` (128, dim) + ``c``, label head ``H`` (dim, n_labels) + ``h``; float32."""

    F: np.ndarray
    W: np.ndarray
    c: np.ndarray
    H: np.ndarray
    h: np.ndarray
    eps: float = 1e-6


def tiny_perch_weights(dim: int, n_labels: int, seed: int = 0) -> TinyPerch:
    rng = np.random.default_rng(seed)
    sub = PERCH_SAMPLES // PERCH_STEPS
    return TinyPerch(F=(rng.normal(size=(sub, PERCH_BINS)) / np.sqrt(sub)).astype(np.float32),
                     W=(rng.normal(size=(PERCH_BINS, dim)) / np.sqrt(PERCH_BINS)).astype(np.float32),
                     c=rng.normal(size=dim).astype(np.float32),
                     H=(rng.normal(size=(dim, n_labels)) / np.sqrt(dim)).astype(np.float32),
                     h=rng.normal(size=n_labels).astype(np.float32))


def tiny_perch_reference(frames: np.ndarray, w: TinyPerch) -> tuple[np.ndarray, np.ndarray]:
    """float64 recomputation of the stand-in's embedding and label logits for (n, 160000) frames:
    spectrogram = log((frames as [n, 500, 320]) @ F)^2 + eps), embedding = its time mean @ W + c,
    label = embedding @ H + h."""
    x = frames.astype(np.float64).reshape(len(frames), PERCH_STEPS, -1)
    spec = np.log((x @ w.F.astype(np.float64)) ** 2 + np.float64(np.float32(w.eps)))
    emb = spec.mean(axis=1) @ w.W.astype(np.float64) + w.c.astype(np.float64)
    return emb, emb @ w.H.astype(np.float64) + w.h.astype(np.float64)


def write_perch_labels(path: Path, labels: list[str]) -> Path:
    """Perch v2's labels.csv: the header ``inat2024_fsd50k``, then one name per logit."""
    path.write_text("inat2024_fsd50k\n" + "".join(f"{name}\n" for name in labels), encoding="utf-8")
    return path


def build_tiny_perch(folder: Path, labels: list[str], dim: int = 32, seed: int = 0) -> Path:
    """A real TensorFlow SavedModel in ``folder`` with Perch v2's interface: signature ``serving_default``,
    input ``inputs`` [None, 160000] float32, outputs ``embedding`` [B, dim], ``label`` [B, len(labels)],
    ``spatial_embedding`` [B, 16, 4, dim] and ``spectrogram`` [B, 500, 128]; ``assets/labels.csv`` as Perch's.
    The math is :func:`tiny_perch_reference` with :func:`tiny_perch_weights` (``dim``, ``seed``); no XLA op."""
    import tensorflow as tf

    w = tiny_perch_weights(dim, len(labels), seed)
    source = Path(folder).parent / f".{Path(folder).name}-labels"
    source.mkdir(parents=True, exist_ok=True)

    class StandIn(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.labels = tf.saved_model.Asset(str(write_perch_labels(source / "labels.csv", labels)))
            self.F, self.W, self.c = tf.Variable(w.F), tf.Variable(w.W), tf.Variable(w.c)
            self.H, self.h = tf.Variable(w.H), tf.Variable(w.h)

        @tf.function(input_signature=[tf.TensorSpec([None, PERCH_SAMPLES], tf.float32, name="inputs")])
        def serve(self, inputs):
            b = tf.shape(inputs)[0]
            projected = tf.matmul(tf.reshape(inputs, [b, PERCH_STEPS, -1]), self.F)
            spectrogram = tf.math.log(projected * projected + w.eps)
            embedding = tf.matmul(tf.reduce_mean(spectrogram, axis=1), self.W) + self.c
            spatial = tf.reshape(embedding, [b, 1, 1, dim]) + tf.zeros([1, 16, 4, 1])
            return {"embedding": embedding, "label": tf.matmul(embedding, self.H) + self.h,
                    "spatial_embedding": spatial, "spectrogram": spectrogram}

    module = StandIn()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return Path(folder)


def convert_tiny_perch_tflite(saved_model: Path, path: Path) -> Path:
    """The SavedModel converted by TensorFlow's TFLite converter (builtin ops only), as the official one is."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    Path(path).write_bytes(converter.convert())
    return Path(path)


def build_tiny_perch_onnx(path: Path, n_labels: int, dim: int = 32, seed: int = 0) -> Path:
    """:func:`build_tiny_perch`'s math and weights (same ``dim``, ``seed``) written with onnx.helper (tf2onnx is
    not installed): input ``inputs`` [batch, 160000], the same four outputs by name."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = tiny_perch_weights(dim, n_labels, seed)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["inputs", "steps"], ["framed"]),
         helper.make_node("MatMul", ["framed", "F"], ["projected"]),
         helper.make_node("Mul", ["projected", "projected"], ["power"]),
         helper.make_node("Add", ["power", "eps"], ["power_eps"]),
         helper.make_node("Log", ["power_eps"], ["spectrogram"]),
         helper.make_node("ReduceMean", ["spectrogram", "time_axis"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["pooled_W"]),
         helper.make_node("Add", ["pooled_W", "c"], ["embedding"]),
         helper.make_node("MatMul", ["embedding", "H"], ["embedding_H"]),
         helper.make_node("Add", ["embedding_H", "h"], ["label"]),
         helper.make_node("Reshape", ["embedding", "spatial_shape"], ["embedding_4d"]),
         helper.make_node("Add", ["embedding_4d", "spatial_zeros"], ["spatial_embedding"])],
        "tiny_perch", [helper.make_tensor_value_info("inputs", f32, ["batch", PERCH_SAMPLES])],
        [helper.make_tensor_value_info("embedding", f32, ["batch", dim]),
         helper.make_tensor_value_info("label", f32, ["batch", n_labels]),
         helper.make_tensor_value_info("spatial_embedding", f32, ["batch", 16, 4, dim]),
         helper.make_tensor_value_info("spectrogram", f32, ["batch", PERCH_STEPS, PERCH_BINS])],
        [numpy_helper.from_array(np.asarray([-1, PERCH_STEPS, PERCH_SAMPLES // PERCH_STEPS], np.int64), "steps"),
         numpy_helper.from_array(w.F, "F"), numpy_helper.from_array(np.asarray(w.eps, np.float32), "eps"),
         numpy_helper.from_array(np.asarray([1], np.int64), "time_axis"),
         numpy_helper.from_array(w.W, "W"), numpy_helper.from_array(w.c, "c"),
         numpy_helper.from_array(w.H, "H"), numpy_helper.from_array(w.h, "h"),
         numpy_helper.from_array(np.asarray([-1, 1, 1, dim], np.int64), "spatial_shape"),
         numpy_helper.from_array(np.zeros((1, 16, 4, 1), np.float32), "spatial_zeros")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="birdclef-stack tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


# Perch-style labels of the tiny stand-in against the bc2026 taxonomy: three exact species (an insect, two frogs),
# a second Leptodactylus (the genus proxy of the other eight Leptodactylus classes), a Synallaxis absent from the
# taxonomy (proxy of its five Synallaxis), an FSD50K sound event and a species of no taxonomy genus
TINY_PERCH_LABELS = ["Guyalna cuta", "Speech_synthesizer", "Lysapsus limellum", "Leptodactylus fuscus",
                     "Leptodactylus notoaktites", "Rana temporaria", "Synallaxis brachyura"]
