"""Helpers for the embedding tests: a shared BirdNET cache folder and a tiny real TFLite model.

The tiny model is built from the flatbuffer schema (no TensorFlow needed). Graph: audio [batch, n] -> RESHAPE [batch, dim, n / dim] -> MEAN over the last axis -> embedding
[batch, dim] -> FULLY_CONNECTED (W, b) -> logits [batch, k]. Its outputs have a closed form, so a
test can recompute them with numpy.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as s


def birdnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patched-model cache per test session, under pytest's temp folder (never the user's cache)."""
    return tmp_path_factory.getbasetemp() / "birdnet-cache"


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
