"""TFLite helpers: read and rewrite a model flatbuffer, and run it with ai-edge-litert (XNNPACK).

The flatbuffer is handled with the schema module shipped inside ai-edge-litert
(``ai_edge_litert.schema_py_generated``) and the ``flatbuffers`` package, so no TensorFlow is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featurestore.errors import ModelError

TFLITE_IDENTIFIER = b"TFL3"


def schema():
    """The TFLite flatbuffer schema module bundled with ai-edge-litert."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is a hard dependency
        raise ModelError("ai-edge-litert is not installed (pip install ai-edge-litert)") from exc
    return schema_py_generated


def tensor_names(buf: bytes, subgraph: int = 0) -> list[str]:
    """Names of every tensor of a subgraph, by tensor index."""
    sg = schema().Model.GetRootAsModel(buf, 0).Subgraphs(subgraph)
    return [sg.Tensors(i).Name().decode() for i in range(sg.TensorsLength())]


def tensor_index(buf: bytes, name: str, subgraph: int = 0) -> int:
    names = tensor_names(buf, subgraph)
    if name not in names:
        raise ModelError(f"model has no tensor named {name!r}")
    return names.index(name)


def with_extra_outputs(buf: bytes, names: list[str]) -> bytes:
    """The model with the named intermediate tensors appended to subgraph 0's outputs."""
    import flatbuffers

    indices = [tensor_index(buf, n) for n in names]
    model = schema().ModelT.InitFromPackedBuf(buf, 0)
    graph = model.subgraphs[0]
    outputs = [int(i) for i in np.asarray(graph.outputs).tolist()]
    graph.outputs = np.asarray(outputs + [i for i in indices if i not in outputs], dtype=np.int32)
    builder = flatbuffers.Builder(len(buf) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def constant(buf: bytes, tensor: int, subgraph: int = 0) -> np.ndarray:
    """The constant data of a float32 tensor (a weight or a bias) as a numpy array of its shape."""
    s = schema()
    model = s.Model.GetRootAsModel(buf, 0)
    t = model.Subgraphs(subgraph).Tensors(tensor)
    if t.Type() != s.TensorType.FLOAT32:
        raise ModelError(f"tensor {t.Name().decode()!r} is not float32")
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, int):  # empty buffer
        raise ModelError(f"tensor {t.Name().decode()!r} has no constant data")
    return data.view(np.float32).reshape(t.ShapeAsNumpy()).copy()


def dense_after(buf: bytes, tensor_name: str, subgraph: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Weights ``W`` (out, in), bias ``b`` and output name of the FULLY_CONNECTED op fed by ``tensor_name``."""
    s = schema()
    model = s.Model.GetRootAsModel(buf, 0)
    sg = model.Subgraphs(subgraph)
    source = tensor_index(buf, tensor_name, subgraph)
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        inputs = op.InputsAsNumpy()
        if builtin == s.BuiltinOperator.FULLY_CONNECTED and int(inputs[0]) == source:
            out_name = sg.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode()
            return constant(buf, int(inputs[1]), subgraph), constant(buf, int(inputs[2]), subgraph), out_name
    raise ModelError(f"no FULLY_CONNECTED layer reads {tensor_name!r}")


def match_output(details: list[dict], role: str, name: str | None, dim: int | None, where: str) -> int:
    """Index of the output tensor called ``name`` (exact, then substring) or with last dimension ``dim``."""
    if name:
        exact = [d for d in details if d["name"] == name]
        loose = [d for d in details if name.lower() in d["name"].lower()]
        for found in (exact, loose):
            if len(found) == 1:
                return int(found[0]["index"])
    if dim:  # prefer [batch, dim] outputs: Perch v2 also has a [batch, h, w, 1536] spatial embedding
        for rank2 in (True, False):
            by_dim = [d for d in details if int(d["shape"][-1]) == dim and (len(d["shape"]) == 2 or not rank2)]
            if len(by_dim) == 1:
                return int(by_dim[0]["index"])
    available = ", ".join(f"{d['name']} {list(d['shape'])}" for d in details)
    raise ModelError(f"{where}: cannot find the {role} output (name={name!r}, dim={dim}); outputs: {available}")


class TFLiteRunner:
    """One ai-edge-litert interpreter (XNNPACK) mapping a batch of inputs to named outputs.

    The input is (n, samples) audio frames by default (``input_rank=2``: BirdNET, user models) or,
    e.g., (n, mels, frames, 1) spectrograms (``input_rank=4``: the CNN student); ``item_shape`` is one
    item's shape. ``outputs`` maps a role (``embedding``, ``logits``) to ``(tensor name or None, last
    dim or None)``. Batches are formed by resizing the input's batch dimension; a model with a fixed
    batch of 1 is run item by item. With ``signature`` (e.g. ``serving_default``) an output name may be the
    signature's own name for it: the TFLite converter names a SavedModel's tensors ``StatefulPartitionedCall:N``
    and keeps ``embedding``, ``label`` only in the signature (read from this interpreter, not a second one).
    """

    def __init__(self, model_path: str | os.PathLike, outputs: dict[str, tuple[str | None, int | None]], *,
                 input_name: str | None = None, threads: int = 1, batch_size: int = 1, input_rank: int = 2,
                 signature: str | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(model_path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=max(1, int(threads)))
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: cannot load TFLite model ({exc})") from exc
        inputs = self.interpreter.get_input_details()
        chosen = [d for d in inputs if d["name"] == input_name] if input_name else inputs
        if len(chosen) != 1:
            names = [d["name"] for d in inputs]
            raise ModelError(f"{self.path}: choose the audio input with input_name (inputs: {names})")
        self.input = chosen[0]
        shape = list(self.input["shape"])
        if len(shape) != input_rank:
            what = "an audio input of shape [batch, samples]" if input_rank == 2 else f"a rank-{input_rank} input"
            raise ModelError(f"{self.path}: expected {what}, got {shape}")
        self.item_shape = [int(d) for d in shape[1:]]
        self.frame_len = int(shape[1])
        self.batch_size = max(1, int(batch_size))
        self._allocated = int(shape[0])
        self.interpreter.allocate_tensors()
        if signature and signature in self.interpreter.get_signature_list():
            by_signature = {name: d["name"] for name, d in
                            self.interpreter.get_signature_runner(signature).get_output_details().items()}
            outputs = {role: (by_signature.get(n, n) if n else n, d) for role, (n, d) in outputs.items()}
        details = self.interpreter.get_output_details()
        self.outputs = {role: match_output(details, role, n, d, str(self.path)) for role, (n, d) in outputs.items()}

    def _resize(self, batch: int) -> None:
        if batch == self._allocated:
            return
        try:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.item_shape])
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self.batch_size = 1  # fixed-shape model: run one item at a time
            self.interpreter.resize_tensor_input(self.input["index"], [1, *self.item_shape])
            self.interpreter.allocate_tensors()
            batch = 1
        self._allocated = batch

    def run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for ``frames`` (n, *item_shape) float32: role -> (n, dim) float32."""
        n = len(frames)
        results: dict[str, list[np.ndarray]] = {role: [] for role in self.outputs}
        i = 0
        while i < n:
            self._resize(min(self.batch_size, n - i))
            chunk = np.ascontiguousarray(frames[i: i + self._allocated], dtype=np.float32)
            self.interpreter.set_tensor(self.input["index"], chunk)
            self.interpreter.invoke()
            for role, index in self.outputs.items():
                results[role].append(self.interpreter.get_tensor(index).reshape(len(chunk), -1)
                                     .astype(np.float32, copy=False))
            i += len(chunk)
        return {role: (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))
                for role, parts in results.items()}
