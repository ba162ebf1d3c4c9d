"""User-supplied models: a tiny real TFLite model through the custom path, configs, Perch v2 preset, ONNX."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from embed_helpers import build_tiny_tflite, tiny_reference
from scipy.signal import resample_poly

from embed.audio import Audio
from embed.custom import PRESETS, CustomModel, load_config, match_labels
from embed.extractors import FRAME_CHUNK, extractor_from_params
from embed.features import embed_file_with_names
from embed.tflite import ModelError

RATE, FRAME_S, DIM = 16000, 1.0, 16
LABELS = ["Coereba flaveola", "Noise", "Ara ararauna_Blue-and-yellow Macaw", "Unknown bird", "Guyalna cuta"]
TAXONOMY = pa.table({
    "primary_label": ["1161364", "banana", "baymac", "barant1"],
    "scientific_name": ["Guyalna cuta", "Coereba flaveola", "Ara ararauna", "Thamnophilus doliatus"],
    "common_name": ["Guyalna cuta", "Bananaquit", "Blue-and-yellow Macaw", "Barred Antshrike"],
    "class_index": pa.array([0, 1, 2, 3], pa.int32()),
})
TINY_CONFIG = {"name": "tiny", "sample_rate": RATE, "frame_seconds": FRAME_S, "hop_seconds": 2.0,
               "embedding_output": "embedding", "logits_output": "logits", "labels_file": "labels.txt"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("tiny_model")
    W, b = build_tiny_tflite(folder / "tiny.tflite", int(RATE * FRAME_S), DIM, len(LABELS))
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    return {"model": folder / "tiny.tflite", "config": folder / "tiny.json", "W": W, "b": b}


def test_labels_match_the_taxonomy_in_class_order() -> None:
    indices, names = match_labels(LABELS, TAXONOMY)
    assert names == ["1161364", "banana", "baymac"] and indices == [4, 0, 2]


def test_tiny_tflite_through_the_custom_path(tiny: dict, shared_data: Path) -> None:
    clip = shared_data / "bc2026/train_audio/1595929/iNat1242529.ogg"   # 26.2 s at 32 kHz
    model = CustomModel(tiny["model"], tiny["config"], TAXONOMY, batch_size=4)
    assert model.name == "custom:tiny" and model.logit_labels() == ["1161364", "banana", "baymac"]
    out = embed_file_with_names(clip, [model], soundscape=False, pooling="meanmax")
    starts, X, names = out["custom:tiny"]
    assert starts.tolist() == [0, 5, 10, 15, 20, 25]
    # independent recomputation: scipy polyphase 32 -> 16 kHz, 1-s frames at 0, 2, 4 s of each window
    y, rate = sf.read(str(clip), dtype="float32")
    y16 = resample_poly(y, 1, 2).astype(np.float32)
    duration = len(y) / rate
    expected_emb, expected_logits = [], []
    for start in starts:
        offsets = [o for o in (0, 2, 4) if o == 0 or start + o < duration]
        frames = np.zeros((len(offsets), RATE), np.float32)
        for i, o in enumerate(offsets):
            piece = y16[int((start + o) * RATE): int((start + o) * RATE) + RATE]
            frames[i, : len(piece)] = piece
        emb, logits = tiny_reference(frames, DIM, tiny["W"], tiny["b"])
        emb16 = emb.astype(np.float16).astype(np.float64)               # stored precision
        expected_emb.append(np.r_[emb16.mean(0), emb16.max(0)])
        kept = logits[:, [4, 0, 2]]
        expected_logits.append(np.r_[kept.mean(0), kept.max(0)])
    np.testing.assert_allclose(X, np.array(expected_emb), rtol=1e-5, atol=1e-7)
    _, L, logit_names = out["custom_logits:tiny"]
    np.testing.assert_allclose(L, np.array(expected_logits), rtol=1e-4, atol=1e-5)
    assert names[:2] == ["custom:tiny:0", "custom:tiny:1"] and names[-1] == "custom:tiny:15@max"
    assert logit_names[:3] == ["custom_logit:tiny:1161364", "custom_logit:tiny:banana", "custom_logit:tiny:baymac"]
    rebuilt = extractor_from_params(model.params())
    assert rebuilt.version == model.version and rebuilt.logit_labels() == model.logit_labels()
    full = CustomModel(tiny["model"], tiny["config"], TAXONOMY, full_logits=True)
    assert full.logit_labels() == LABELS and full.version != model.version


def test_many_frames_are_run_in_chunks_in_order(tiny: dict, shared_data: Path) -> None:
    audio = Audio.load(shared_data / "bc2026/train_audio/1595929/iNat1242532.ogg")   # 35.1 s
    model = CustomModel(tiny["model"], tiny["config"], hop_s=0.25, batch_size=8)
    out = model.compute(audio, [0, 5, 10, 15, 20, 25, 30])
    assert len(out.grid.start_s) == 7 * 17 > FRAME_CHUNK                 # 1-s frames at 0, 0.25, ... 4 s
    y16 = resample_poly(audio.signal, 1, 2).astype(np.float32)
    frames = np.stack([y16[int(round(t * RATE)): int(round(t * RATE)) + RATE] for t in out.grid.start_s])
    emb, _ = tiny_reference(frames, DIM, tiny["W"], tiny["b"])
    np.testing.assert_allclose(out.embedding.astype(np.float64), emb, rtol=2e-3, atol=1e-6)
    assert out.grid.start_s[17] == 5.0 and out.grid.frame_index[:3].tolist() == [0, 1, 2]


def test_perch_v2_preset_and_config_errors(tiny: dict, tmp_path: Path) -> None:
    perch = load_config("perch_v2")
    assert perch is PRESETS["perch_v2"]
    assert (perch.sample_rate, perch.frame_seconds, perch.embedding_dim, perch.logits_dim) == (32000, 5.0, 1536, 14795)
    # the preset applied to a model with a different input length names both sizes
    wrong = CustomModel(tiny["model"], "perch_v2")
    with pytest.raises(ModelError, match="input takes 16000 samples but the config says 5.0 s at 32000 Hz = 160000"):
        wrong.runner  # noqa: B018 - building the runner checks the model against the config
    with pytest.raises(ModelError, match="unknown key"):
        load_config({"name": "x", "sample_rate": 1, "frame_seconds": 1, "bogus": 1})
    with pytest.raises(ModelError, match="not a preset"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ModelError, match="model file not found"):
        CustomModel(tmp_path / "perch_v2.tflite")
    bad_output = dict(TINY_CONFIG, embedding_output="nope", embedding_dim=999)
    with pytest.raises(ModelError, match="cannot find the embedding output"):
        CustomModel(tiny["model"], bad_output).runner  # noqa: B018


def test_onnx_without_onnxruntime_says_how_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("onnxruntime") is not None:
        pytest.skip("onnxruntime is installed")
    path = tmp_path / "perch_v2.onnx"
    path.write_bytes(b"not really onnx")
    model = CustomModel(path, "perch_v2")
    with pytest.raises(ModelError, match=r"onnxruntime, which is not installed; pip install 'birdclef-stack\[onnx\]'"):
        model.runner  # noqa: B018


def test_tiny_onnx_model_if_available(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    W = rng.normal(size=(DIM, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["audio", "shape"], ["r"]),
         helper.make_node("ReduceMean", ["r", "axes"], ["embedding"], keepdims=0),
         helper.make_node("MatMul", ["embedding", "W"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", RATE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [-1, DIM, RATE // DIM]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
         helper.make_tensor("W", TensorProto.FLOAT, W.shape, W.ravel())])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    model = CustomModel(path, dict(TINY_CONFIG, labels_file=None), full_logits=False)
    frames = rng.normal(size=(3, RATE)).astype(np.float32)
    out = model.runner.run(frames)
    emb = frames.astype(np.float64).reshape(3, DIM, -1).mean(axis=2)
    np.testing.assert_allclose(out["embedding"], emb, atol=1e-6)
