"""User-supplied models: tiny real TFLite and ONNX models through the custom path, configs, Perch v2 preset.

The ONNX tests need onnx + onnxruntime (both in the ``test`` extra) and fail, not skip, without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import soundfile as sf
from embed_helpers import (
    band_power_reference,
    build_band_power_onnx,
    build_tiny_onnx,
    build_tiny_tflite,
    tiny_reference,
)
from scipy.signal import resample_poly

from embed.audio import Audio
from embed.custom import CustomModel, load_config, match_labels, scale_frames
from embed.extractors import FRAME_CHUNK
from embed.features import embed_file_with_names, load_window_features
from embed.job import run_embed
from embed.registry import PRESETS, from_params, model_config
from embed.tflite import ModelError
from featurestore.folds import make_folds
from featurestore.store import FeatureStore
from models.bundle import HEADS_DIR
from models.frame import FrameSpec, class_names_of
from models.metrics import competition_score
from models.training import train_head
from submit.predict import predict_audio
from submit.submission import expected_ids_for_audio, read_header, validate_submission, write_submission

REPO = Path(__file__).resolve().parents[2]

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
    rebuilt = from_params(model.params())
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
    perch = model_config("perch_v2")                       # the preset, as plain data in the registry
    assert PRESETS["perch_v2"].family == "custom" and perch.name == "perch_v2"
    assert (perch.sample_rate, perch.frame_seconds, perch.embedding_dim, perch.logits_dim) == (32000, 5.0, 1536, 14795)
    # perch-hoplite peak-normalises every 5-s frame to 0.25 before Perch v2 (zoo_interface.normalize_audio)
    assert (perch.input_scaling, perch.target_peak) == ("peak_normalize", 0.25)
    # the preset applied to a model with a different input length names both sizes
    wrong = CustomModel(tiny["model"], perch)
    with pytest.raises(ModelError, match="input takes 16000 samples but the config says 5.0 s at 32000 Hz = 160000"):
        wrong.runner  # noqa: B018 - building the runner checks the model against the config
    with pytest.raises(ModelError, match="unknown key"):
        load_config({"name": "x", "sample_rate": 1, "frame_seconds": 1, "bogus": 1})
    with pytest.raises(ModelError, match=r"not a preset \(perch_v2\) nor a JSON file"):
        model_config(tmp_path / "missing.json")
    with pytest.raises(ModelError, match="not a preset"):
        load_config("perch_v2")                               # embed.custom itself knows no preset names
    with pytest.raises(ModelError, match="model file not found"):
        CustomModel(tmp_path / "perch_v2.tflite", perch)
    bad_output = dict(TINY_CONFIG, embedding_output="nope", embedding_dim=999)
    with pytest.raises(ModelError, match="cannot find the embedding output"):
        CustomModel(tiny["model"], bad_output).runner  # noqa: B018




# ---------------------------------------------------------------------------- input scaling (Perch v2)
def _peak_normalise(frames: np.ndarray, target_peak: float) -> np.ndarray:
    """Independent float64 version of hoplite-style peak normalisation, for the reference paths."""
    x = frames.astype(np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    return x * (target_peak / np.abs(x).max(axis=-1, keepdims=True))


def test_peak_normalize_matches_a_hand_worked_case(tiny: dict, shared_data: Path) -> None:
    frames = np.array([[1.0, 2.0, 3.0, 6.0],            # mean 3 -> [-2, -1, 0, 3]; peak 3 -> times 0.25 / 3
                       [0.1, -0.3, 0.5, -0.3],          # mean 0; peak 0.5 -> times 0.5
                       [0.0, 0.0, 0.0, 0.0],            # digital silence stays silent
                       [0.2, 0.2, 0.2, 0.2]], np.float32)  # constant: nothing left after the mean -> zeros
    expected = np.array([[-1 / 6, -1 / 12, 0.0, 0.25], [0.05, -0.15, 0.25, -0.15], [0.0] * 4, [0.0] * 4])
    out = scale_frames(frames, "peak_normalize", 0.25)
    assert out.dtype == np.float32 and frames[0, 0] == 1.0        # a copy: the caller's frames are untouched
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(scale_frames(frames, "peak_normalize", 1.0), 4 * expected, rtol=0, atol=1e-7)
    assert np.array_equal(scale_frames(frames, "none"), frames)

    # applied inside the extractor: frames of a real clip are normalised before the model runs
    clip = shared_data / "bc2026/train_audio/1595929/iNat1242529.ogg"
    config = dict(TINY_CONFIG, input_scaling="peak_normalize", target_peak=0.5)
    out = CustomModel(tiny["model"], config, batch_size=4).compute(Audio.load(clip), [0, 5])
    assert out.grid.start_s.tolist() == [0, 2, 4, 5, 7, 9]
    y, rate = sf.read(str(clip), dtype="float32")
    y16 = resample_poly(y, 1, 2)
    raw = np.stack([y16[int(t * RATE): int(t * RATE) + RATE] for t in out.grid.start_s])
    emb, _ = tiny_reference(_peak_normalise(raw, 0.5), DIM, tiny["W"], tiny["b"])
    # float16 storage: half an ulp is 2**-11 of the value; plus float32 arithmetic in the model
    np.testing.assert_allclose(out.embedding.astype(np.float64), emb, rtol=2**-11, atol=1e-7)
    unscaled, _ = tiny_reference(raw, DIM, tiny["W"], tiny["b"])
    assert not np.allclose(out.embedding.astype(np.float64), unscaled, rtol=1e-2, atol=1e-4)


def test_input_scaling_changes_the_version_and_survives_params(tiny: dict) -> None:
    plain = CustomModel(tiny["model"], TINY_CONFIG)
    peak = CustomModel(tiny["model"], dict(TINY_CONFIG, input_scaling="peak_normalize"))
    louder = CustomModel(tiny["model"], dict(TINY_CONFIG, input_scaling="peak_normalize", target_peak=0.5))
    assert len({plain.version, peak.version, louder.version}) == 3
    assert plain.config.input_scaling == "none"
    stored = json.loads(json.dumps(louder.params()))              # as extractor_versions / extractors.json keep it
    assert (stored["config"]["input_scaling"], stored["config"]["target_peak"]) == ("peak_normalize", 0.5)
    rebuilt = from_params(stored)
    assert rebuilt.config == louder.config and rebuilt.version == louder.version


@pytest.mark.parametrize(("change", "key"), [
    ({"input_scaling": "peak"}, "input_scaling"),
    ({"input_scaling": None}, "input_scaling"),
    ({"input_scaling": "peak_normalize", "target_peak": 0}, "target_peak"),
    ({"input_scaling": "peak_normalize", "target_peak": "0.25"}, "target_peak"),
    ({"input_scaling": "peak_normalize", "target_peak": float("inf")}, "target_peak"),
    ({"target_peak": 0.5}, "target_peak"),                    # no effect without peak_normalize: refused
    ({"sample_rate": 0}, "sample_rate"),
    ({"sample_rate": 32000.5}, "sample_rate"),
    ({"frame_seconds": 6}, "frame_seconds"),
    ({"hop_seconds": -1}, "hop_seconds"),
    ({"embedding_dim": "1536"}, "embedding_dim"),
    ({"labels_file": 3}, "labels_file"),
    ({"target_peek": 0.25}, "target_peek"),                   # unknown key
])
def test_bad_config_values_name_the_key(change: dict, key: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=key):
        load_config(dict(TINY_CONFIG, **change))
    path = tmp_path / "bad.json"                               # the same through a JSON file
    path.write_text(json.dumps(dict(TINY_CONFIG, **change), allow_nan=True))
    with pytest.raises(ModelError, match=key):
        load_config(path)


def test_missing_config_keys_are_named() -> None:
    with pytest.raises(ModelError, match=r"missing key\(s\) \['frame_seconds', 'sample_rate'\]"):
        load_config({"name": "x"})


# ---------------------------------------------------------------------------- ONNX
def test_onnx_and_tflite_twins_agree_on_a_real_clip(tmp_path: Path, shared_data: Path) -> None:
    n = int(RATE * FRAME_S)
    W, b = build_tiny_onnx(tmp_path / "tiny.onnx", n, DIM, len(LABELS))
    assert all(np.array_equal(a, c) for a, c in zip((W, b), build_tiny_tflite(tmp_path / "tiny.tflite", n, DIM,
                                                                                 len(LABELS)), strict=True))
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = dict(TINY_CONFIG, input_scaling="peak_normalize")
    audio = Audio.load(shared_data / "bc2026/train_audio/1595929/iNat1242532.ogg")     # 35.1 s
    starts = list(range(0, 40, 5))                                     # the last window is 0.1 s + padding
    outs = {}
    for suffix in ("onnx", "tflite"):
        model = CustomModel(tmp_path / f"tiny.{suffix}", config, TAXONOMY, batch_size=4)
        assert model.logit_labels() == ["1161364", "banana", "baymac"]
        outs[suffix] = model.compute(audio, starts)
    onnx_out, tflite_out = outs["onnx"], outs["tflite"]
    assert np.array_equal(onnx_out.grid.start_sample, tflite_out.grid.start_sample)
    # two runtimes, two summation orders: float32 logits agree closely, float16 embeddings to one ulp
    np.testing.assert_allclose(onnx_out.logits, tflite_out.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnx_out.embedding.astype(np.float64), tflite_out.embedding.astype(np.float64),
                               rtol=2**-10, atol=1e-8)
    # and both equal the float64 recomputation on independently decoded, resampled, normalised audio
    y, _ = sf.read(str(audio.path), dtype="float32")
    y16 = resample_poly(y, 1, 2)
    raw = np.zeros((len(onnx_out.grid.start_s), RATE))
    for i, t in enumerate(onnx_out.grid.start_s):
        piece = y16[int(round(t * RATE)): int(round(t * RATE)) + RATE]
        raw[i, : len(piece)] = piece
    emb, logits = tiny_reference(_peak_normalise(raw, 0.25), DIM, W, b)
    np.testing.assert_allclose(onnx_out.embedding.astype(np.float64), emb, rtol=2**-11, atol=1e-7)
    np.testing.assert_allclose(onnx_out.logits, logits[:, [4, 0, 2]], rtol=1e-4, atol=1e-5)


def test_onnx_without_onnxruntime_says_how_to_install(tmp_path: Path) -> None:
    """A Python that cannot import onnxruntime (blocked in a fresh interpreter) gets the install hint."""
    build_tiny_onnx(tmp_path / "tiny.onnx", int(RATE * FRAME_S), DIM, len(LABELS))
    (tmp_path / "tiny.json").write_text(json.dumps(dict(TINY_CONFIG, labels_file=None)))
    script = ("import sys\nsys.modules['onnxruntime'] = None\n"
              "from embed.custom import CustomModel\nfrom embed.tflite import ModelError\n"
              f"model = CustomModel({str(tmp_path / 'tiny.onnx')!r}, {str(tmp_path / 'tiny.json')!r})\n"
              "try:\n    model.runner\nexcept ModelError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ONNX models need onnxruntime, which is not installed; pip install 'birdclef-stack[onnx]'" in result.stdout


# A Perch-shaped ONNX model (5-s frames at 32 kHz in "inputs", "embedding" + "label" + a rank-3 extra output)
# with labels that name real taxonomy classes by scientific name, primary label and common name.
PERCH_LIKE_LABELS = ["Coereba flaveola", "baymac", "Turdus merula", "Wrestler Frog", "Noise", "Giant Cicada"]
PERCH_LIKE_MATCHED = ["banana", "baymac", "1176823", "244024"]         # taxonomy (class_index) order
PERCH_LIKE_INDICES = [0, 1, 3, 5]
SR, BANDS = 32000, 16


@pytest.fixture(scope="module")
def perch_like(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("perch_like")
    weights = build_band_power_onnx(folder / "perch_like.onnx", 5 * SR, SR, len(PERCH_LIKE_LABELS), bands=BANDS)
    (folder / "labels.csv").write_text("classes\n" + "\n".join(PERCH_LIKE_LABELS) + "\n")
    config = {"name": "perch_like", "sample_rate": SR, "frame_seconds": 5.0, "hop_seconds": 5.0,
              "input_scaling": "peak_normalize", "target_peak": 0.25, "input_name": "inputs",
              "embedding_output": "embedding", "embedding_dim": 2 * BANDS, "logits_output": "label",
              "logits_dim": len(PERCH_LIKE_LABELS), "labels_file": "labels.csv"}
    (folder / "perch_like.json").write_text(json.dumps(config))
    return {"model": folder / "perch_like.onnx", "config": folder / "perch_like.json", "weights": weights}


def test_onnx_model_end_to_end_store_embed_train_predict(perch_like: dict, demo_store: Path, demo_data: Path,
                                                         tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    make_folds(store)
    summary = run_embed(store, "custom", model=perch_like["model"], model_config=perch_like["config"], workers=1)
    assert summary.errors == [] and summary.windows_now == {"custom:perch_like": 526}
    assert "custom:perch_like: 4 of 14 taxonomy classes matched the model's labels" in summary.notes

    dim = 2 * BANDS
    with FeatureStore.open(store, read_only=True) as fs:
        n_windows = fs.first("SELECT count(*) FROM windows")[0]
        ids, X, names, _ = load_window_features(fs, "custom:perch_like,custom_logits:perch_like")
        assert len(ids) == n_windows == 526 and X.shape == (n_windows, dim + len(PERCH_LIKE_MATCHED))
        assert names[dim:] == [f"custom_logit:perch_like:{c}" for c in PERCH_LIKE_MATCHED]
        # one full soundscape window and one zero-padded focal window, as stored (one 5-s frame each)
        picked = fs.sql(
            "SELECT w.window_id, w.source, w.filename, w.start_s, f.embedding, f.logits, f.valid_fraction "
            "FROM custom_frames f JOIN windows w USING (window_id) WHERE (w.source = 'train_soundscapes' "
            "AND w.start_s = 10) OR (w.source = 'train_audio' AND f.valid_fraction < 0.5) "
            "ORDER BY w.source, w.window_id").to_pylist()
    scape = next(r for r in picked if r["source"] == "train_soundscapes")
    padded = next(r for r in picked if r["source"] == "train_audio")
    for row in (scape, padded):
        y, rate = sf.read(str(demo_data / row["source"] / row["filename"]), dtype="float32")
        assert rate == SR
        frame = np.zeros(5 * SR)
        piece = y[int(row["start_s"]) * SR: (int(row["start_s"]) + 5) * SR]
        frame[: len(piece)] = piece
        assert row["valid_fraction"] == pytest.approx(len(piece) / (5 * SR), abs=1e-6)
        emb, logits = band_power_reference(_peak_normalise(frame[None], 0.25), perch_like["weights"])
        # stored float16: within half an ulp (2**-11 relative) plus float32 model arithmetic
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float64), emb[0], rtol=2**-11, atol=1e-5)
        np.testing.assert_allclose(row["logits"], logits[0, PERCH_LIKE_INDICES], rtol=0, atol=5e-5)  # float32

    result = train_head(store, "linear", FrameSpec(features="custom:perch_like"))
    assert result.oof_auc > 0.65, result.render()                   # the band powers carry signal (0.76 here)
    head_dir = store / HEADS_DIR / result.head_id
    params = json.loads((head_dir / "extractors.json").read_text())["custom:perch_like"]
    assert (params["config"]["input_scaling"], params["config"]["target_peak"]) == ("peak_normalize", 0.25)

    # inference rebuilds the ONNX extractor from extractors.json, re-embeds the test audio, writes the file
    columns = read_header(demo_data / "sample_submission.csv")[1:]
    with FeatureStore.open(store, read_only=True) as fs:
        assert sorted(columns) == sorted(class_names_of(fs))
    row_ids, probs, errors = predict_audio(head_dir, demo_data / "test_soundscapes", columns, workers=1)
    assert errors == []
    out = write_submission(tmp_path / "submission.csv", row_ids, probs, columns)
    expected = expected_ids_for_audio(demo_data / "test_soundscapes")
    assert validate_submission(out, demo_data / "sample_submission.csv", expected) == len(expected) == 48
    as_text = pacsv.ConvertOptions(column_types={"row_id": "string"})
    score = competition_score(pacsv.read_csv(demo_data.parent / "test_solution.csv", convert_options=as_text),
                              pacsv.read_csv(out, convert_options=as_text))
    assert score > 0.65, score                                         # 0.77 here
