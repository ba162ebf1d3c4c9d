"""pipelines.convert / embed.convert: the tiny Perch stand-in's SavedModel (:func:`embed_helpers.build_tiny_perch`)
converted to .tflite and .onnx (tf2onnx), the parity check on real shared clips (the 0.29-s one included)
checked against the float64 reference, a graph holding a real ``XlaCallModule`` op (a StableHLO module
written as text: no JAX needed) refused for ONNX and lowered for TFLite, a parity failure moved aside,
and the command line. Wall time: about 30 s on the 2-core box (8 s of it importing TensorFlow).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from embed_helpers import (
    TINY_PERCH_LABELS,
    build_tiny_perch,
    tiny_perch_reference,
    tiny_perch_weights,
    write_perch_labels,
)

from embed import registry
from embed.audio import Audio
from embed.convert import (
    MAX_DLOGIT,
    MIN_COSINE,
    check_or_move_aside,
    convert,
    convert_checked,
    onnx_blockers,
    parity,
    saved_model_ops,
    tflite_custom_ops,
)
from featurestore.errors import ModelError
from featurestore.store import FeatureStore

pytestmark = pytest.mark.tf
DIM, RATE, FRAME = 32, 32000, 160000
CLIPS = ["train_audio/1595929/iNat1242529.ogg",        # 26.2 s: six windows, a 1.2-s tail
         "train_audio/1161364/iNat1264238.ogg"]        # 0.29 s: one window, mostly padding
SLOPE, INTERCEPT = 0.97, -10.0
ROOT = Path(__file__).resolve().parents[2]


def build_xla_saved_model(folder: Path) -> Path:
    """A SavedModel whose ``serving_default`` is one real ``XlaCallModule`` op (as jax2tf writes): a StableHLO
    module given as text (x + x on [1, 8]), with a Perch labels.csv in its assets."""
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    module = b"""module @jit_f attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<1x8xf32>) -> tensor<1x8xf32> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<1x8xf32>
    return %0 : tensor<1x8xf32>
  }
}"""
    (folder.parent / "labels-source").mkdir(parents=True, exist_ok=True)   # an Asset keeps its file name
    labels = write_perch_labels(folder.parent / "labels-source" / "labels.csv", TINY_PERCH_LABELS)

    class Xla(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.labels = tf.saved_model.Asset(str(labels))

        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="inputs")])
        def serve(self, inputs):
            out, = gen_xla_ops.xla_call_module(
                args=[inputs], version=9, module=module, Sout=[tf.TensorShape([1, 8])], Tout=[tf.float32],
                dim_args_spec=[], platforms=["CPU"], function_list=[], has_token_input_output=False,
                disabled_checks=[])
            return {"embedding": out}

    m = Xla()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert")
    saved = build_tiny_perch(root / "perch_v2_cpu" / "1", TINY_PERCH_LABELS, DIM)
    other = build_tiny_perch(root / "other" / "1", TINY_PERCH_LABELS, DIM, seed=1)
    out = {"savedmodel": saved, "other": other, "xla": build_xla_saved_model(root / "xla" / "1")}
    for to in ("tflite", "onnx"):
        out[to] = convert(saved, to, root / "files" / f"perch_v2.{to}")
    out["other_tflite"] = convert(other, "tflite", root / "other_files" / "perch_v2.tflite")
    return out


@pytest.fixture(scope="module")
def taxonomy(bc2026_store: Path):
    with FeatureStore.open(bc2026_store, read_only=True) as store:
        return store.read_table("taxonomy")


def reference(clip: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float64 embedding and rescaled logits of every window of ``clip`` (independent of embed.custom): 5-s
    frames zero-padded, minus their mean, peak-normalised to 0.25, through the stand-in's float64 twin."""
    audio = Audio.open(clip).at(RATE).astype(np.float64)
    n = max(1, int(np.floor(len(audio) / RATE / 5 + 1e-9)) + (1 if (len(audio) / RATE) % 5 >= 1.0 else 0))
    padded = np.concatenate([audio, np.zeros(FRAME * (n + 1))])
    raw = np.stack([padded[i * FRAME: (i + 1) * FRAME] for i in range(n)])
    centred = raw - raw.mean(axis=1, keepdims=True)
    peak = np.abs(centred).max(axis=1, keepdims=True)
    frames = np.where(peak > 0, centred * 0.25 / np.where(peak > 0, peak, 1), 0.0)
    emb, logits = tiny_perch_reference(frames, tiny_perch_weights(DIM, len(TINY_PERCH_LABELS), seed))
    return emb, logits * SLOPE + INTERCEPT


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_converted_files_embed_as_the_float64_reference(models: dict, shared_data: Path) -> None:
    for to in ("tflite", "onnx"):
        path = models[to]
        assert (path.parent / "labels.csv").read_bytes() == (models["savedmodel"] / "assets/labels.csv").read_bytes()
        assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]            # written atomically
        ex = registry.build("perch", None, model=path, full_logits=True)               # --extractor perch
        assert ex.runtime == to and ex.logit_labels() == TINY_PERCH_LABELS
        assert ex.version != registry.build("perch", None, model=models["savedmodel"], full_logits=True).version
        for clip in CLIPS:
            emb, logits = reference(shared_data / "bc2026" / clip)
            out = ex.compute(Audio.open(shared_data / "bc2026" / clip), list(range(0, 5 * len(emb), 5)))
            np.testing.assert_allclose(out.embedding.astype(np.float64), emb, rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(out.logits, logits, rtol=0, atol=2e-3)
    assert tflite_custom_ops(models["tflite"].read_bytes()) == []


def test_parity_within_thresholds(models: dict, shared_data: Path, taxonomy) -> None:
    clips = [shared_data / "bc2026" / c for c in CLIPS]
    lines: list[str] = []
    for to in ("tflite", "onnx"):
        result = parity(models["savedmodel"], models[to], clips, say=lines.append, taxonomy=taxonomy)
        assert result.ok and result.clips == 2 and result.frames == 6 + 1
        assert result.min_cosine >= MIN_COSINE and result.max_dlogit <= MAX_DLOGIT
        # both sides are within 2e-3 of the float64 reference (test above), so at most 4e-3 apart; a mapped
        # logit is one logit or a max over some, never further apart than the full ones
        assert result.max_dlogit < 4e-3 and result.max_dlogit_stored is not None
        assert result.max_dlogit_stored <= result.max_dlogit + 1e-12
        assert result.min_cosine > 0.99999
    assert lines[-1].startswith("parity on 7 frames of 2 clips: min embedding cosine")


def test_parity_failure_moves_the_file_aside(models: dict, shared_data: Path, tmp_path: Path) -> None:
    clips = [shared_data / "bc2026" / c for c in CLIPS]
    # the numbers of a converted model from DIFFERENT weights (seed 1) match the float64 references' distance
    lines: list[str] = []
    with pytest.raises(ModelError, match="parity check failed"):
        parity(models["savedmodel"], models["other_tflite"], clips, say=lines.append)
    got = float(lines[-1].split("min embedding cosine ")[1].split()[0])
    pairs = [(reference(c)[0], reference(c, seed=1)[0]) for c in clips]
    expected = min(cosine(a, b).min() for a, b in pairs)
    assert expected < MIN_COSINE and got == pytest.approx(expected, abs=2e-3)
    # a converted file from other weights where --out was: moved aside to <out>.failed, nothing left at --out
    out = tmp_path / "perch.tflite"
    shutil.copy(models["other_tflite"], out)
    shutil.copy(models["other_tflite"].parent / "labels.csv", tmp_path / "labels.csv")
    with pytest.raises(ModelError, match=r"parity check failed.*; moved to .*perch\.tflite\.failed"):
        check_or_move_aside(models["savedmodel"], out, clips[1:])
    assert not out.exists() and (tmp_path / "perch.tflite.failed").read_bytes() == models["other_tflite"].read_bytes()
    # and the whole route on a good conversion leaves the file at --out
    # (checked under a hidden name: --out appears only once the check passed; its lines name --out)
    good = tmp_path / "good" / "perch.onnx"
    checking = good.with_name(".perch.checking.onnx")
    seen: list[tuple[str, bool, bool]] = []
    _, result = convert_checked(models["savedmodel"], "onnx", good, clips[1:],
                                say=lambda line: seen.append((line, good.exists(), checking.exists())))
    assert good.is_file() and result is not None and result.ok and result.frames == 1 and not checking.exists()
    assert seen[-1][0].startswith("parity on 1 frames") and seen[-1][1:] == (False, True)
    assert all(str(checking) not in line for line, _, _ in seen) and any(str(good) in line for line, _, _ in seen)

    # Ctrl-C during the check: the previous --out is left as it was, no unchecked file anywhere
    before = good.read_bytes()

    def interrupt(line: str) -> None:
        if line.startswith("parity on"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checked(models["savedmodel"], "onnx", good, clips[1:], say=interrupt)
    assert good.read_bytes() == before and sorted(p.name for p in good.parent.iterdir()) == ["labels.csv",
                                                                                           "perch.onnx"]


def test_xla_call_module_refused_for_onnx_and_lowered_for_tflite(models: dict, tmp_path: Path) -> None:
    ops = saved_model_ops(models["xla"])
    assert "XlaCallModule" in ops and onnx_blockers(ops) == ["XlaCallModule"]
    assert onnx_blockers(saved_model_ops(models["savedmodel"])) == []
    with pytest.raises(ModelError, match=r"tf2onnx cannot convert op XlaCallModule .*pipelines\.embed --extractor "
                                         r"perch --model that\.onnx accepts it as is"):
        convert(models["xla"], "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    # TensorFlow's converter lowers the StableHLO module to builtin ops, which ai-edge-litert runs
    path = convert(models["xla"], "tflite", tmp_path / "x.tflite")
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    x = np.arange(8, dtype=np.float32)[None]
    assert np.array_equal(runner(inputs=x)["embedding"], 2 * x) and tflite_custom_ops(path.read_bytes()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_help_and_error_line(models: dict, tmp_path: Path) -> None:
    help_ = run_cli("--help")
    assert help_.returncode == 0
    assert "python -m pipelines.convert --model ~/models/perch_v2_cpu/1 --to tflite" in help_.stdout
    bad = run_cli("--model", str(models["xla"]), "--to", "onnx", "--out", str(tmp_path / "x.onnx"), "--no-check")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and lines[-1].startswith("error: ") and "XlaCallModule" in lines[-1]
    assert "Traceback" not in bad.stderr
    missing = run_cli("--model", str(models["savedmodel"]), "--to", "tflite", "--out", str(tmp_path / "y.tflite"))
    assert missing.returncode == 2 and "--check-audio" in missing.stderr
