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
