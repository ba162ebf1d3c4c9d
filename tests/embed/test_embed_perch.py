"""The perch family (embed.perch): one Perch v2 stand-in in its three forms, on real shared audio.

The stand-in (:func:`embed_helpers.build_tiny_perch`) is a real TensorFlow SavedModel with Perch v2's
signature and outputs and ``assets/labels.csv`` (:data:`embed_helpers.TINY_PERCH_LABELS`), its .tflite
made by TensorFlow's converter and an .onnx written by hand with the same weights; its math has a float64
numpy twin (:func:`embed_helpers.tiny_perch_reference`). The models are built once for the module.
Wall time: about 20 s on the 2-core box (8 s of it importing TensorFlow).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from embed_helpers import (
    TINY_PERCH_LABELS,
    build_tiny_perch,
    build_tiny_perch_onnx,
    convert_tiny_perch_tflite,
    tiny_perch_reference,
    tiny_perch_weights,
    write_perch_labels,
)

from embed import registry
from embed.audio import Audio
from embed.features import embed_file_with_names, load_window_features
from embed.job import run_embed
from embed.perch import Perch, SavedModelRunner, check_tensorflow_version, folder_sha256, too_old_error
from featurestore.errors import DataError, ModelError
from featurestore.store import FeatureStore
from featurestore.windows import window_id
from models.heads import make_head
from reports.data_memo import write_memo

pytestmark = pytest.mark.tf
DIM, RATE, FRAME = 32, 32000, 160000
CLIP = "train_audio/1595929/iNat1242529.ogg"          # 26.2 s: six windows, a 1.2-s tail
SHORT_CLIP = "train_audio/1161364/iNat1264238.ogg"    # 0.29 s: one window, mostly padding
STARTS = [0, 5, 10, 15, 20, 25]
SLOPE, INTERCEPT = 0.97, -10.0                         # perch-hoplite's default Perch v2 logit rescaling
# the class map this label list gives against the bc2026 taxonomy, worked out by hand (index: TINY_PERCH_LABELS)
LEPTODACTYLUS = ["1176823", "22930", "22956", "22961", "22967", "22983", "22985", "70711"]   # all but fuscus
SYNALLAXIS = ["cibspi1", "pabspi1", "sofspi1", "spispi1", "whlspi1"]
EXPECTED_MAP = {"1161364": ("exact", [0]), "1595929": ("exact", [2]), "22973": ("exact", [3]),
                **{c: ("genus", [3, 4]) for c in LEPTODACTYLUS}, **{c: ("genus", [6]) for c in SYNALLAXIS}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stand-in as a SavedModel folder, a .tflite and an .onnx (each with Perch's labels.csv beside it)."""
    root = tmp_path_factory.mktemp("perch")
    saved = build_tiny_perch(root / "perch_v2_cpu" / "1", TINY_PERCH_LABELS, DIM)
    files = root / "files"
    files.mkdir()
    write_perch_labels(files / "labels.csv", TINY_PERCH_LABELS)
    return {"savedmodel": saved, "tflite": convert_tiny_perch_tflite(saved, files / "perch_v2.tflite"),
            "onnx": build_tiny_perch_onnx(files / "perch_v2.onnx", len(TINY_PERCH_LABELS), DIM)}


@pytest.fixture(scope="module")
def taxonomy(bc2026_store: Path):
    with FeatureStore.open(bc2026_store, read_only=True) as store:
        return store.read_table("taxonomy")


@pytest.fixture(scope="module")
def built(models: dict, taxonomy) -> dict[str, Perch]:
    return {runtime: registry.build("perch", taxonomy, model=path) for runtime, path in models.items()}


def reference_frames(path: Path, starts: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The 5-s frames at ``starts`` (zero-padded past the end) and, independently of embed.custom, each
    peak-normalised in float64 as perch-hoplite does: minus its mean, times 0.25 / max |x| (zeros if constant)."""
    audio = Audio.open(path).at(RATE).astype(np.float64)
    padded = np.concatenate([audio, np.zeros(FRAME * 2)])
    raw = np.stack([padded[int(s * RATE): int(s * RATE) + FRAME] for s in starts])
    centred = raw - raw.mean(axis=1, keepdims=True)
    peak = np.abs(centred).max(axis=1, keepdims=True)
    return raw, np.where(peak > 0, centred * 0.25 / np.where(peak > 0, peak, 1), 0.0)


def expected_logits(ref_logits: np.ndarray, labels: list[str]) -> np.ndarray:
    """The stored columns: rescaled, then each class's exact logit or its genus max (EXPECTED_MAP)."""
    scaled = ref_logits * SLOPE + INTERCEPT
    return np.stack([scaled[:, EXPECTED_MAP[c][1]].max(axis=1) for c in labels], axis=1)


# ---------------------------------------------------------------------------- numbers
def test_three_runtimes_agree_with_the_float64_reference(built: dict, shared_data: Path) -> None:
    clip = shared_data / "bc2026" / CLIP
    _, frames = reference_frames(clip, STARTS)
    ref_emb, ref_logits = tiny_perch_reference(frames, tiny_perch_weights(DIM, len(TINY_PERCH_LABELS)))
    raw = {}
    for runtime, ex in built.items():
        assert ex.runtime == runtime and ex.params()["runtime"] == runtime
        out = ex.runner.run(frames.astype(np.float32))            # the runtime itself, float32
        assert out["embedding"].shape == (6, DIM) and out["logits"].shape == (6, len(TINY_PERCH_LABELS))
        # float32 graphs against float64: a 320-term dot product, a log, a 500-step mean, two small dense layers
        np.testing.assert_allclose(out["embedding"], ref_emb, rtol=0, atol=2e-4 * (1 + np.abs(ref_emb).max()))
        np.testing.assert_allclose(out["logits"], ref_logits, rtol=0, atol=2e-4 * (1 + np.abs(ref_logits).max()))
        raw[runtime] = out
    for runtime in ("tflite", "onnx"):                            # and with each other, closer still
        assert np.abs(raw[runtime]["embedding"] - raw["savedmodel"]["embedding"]).max() < 1e-4 * (
            1 + np.abs(ref_emb).max())

    # the extractor's own path: frames cut from the decoded clip, peak-normalised, float16 embeddings,
    # logits rescaled by 0.97 x - 10 and mapped to the taxonomy (exact column or genus max)
    for ex in built.values():
        out = ex.compute(Audio.open(clip), STARTS)
        assert out.grid.window_index.tolist() == list(range(6)) and out.embedding.dtype == np.float16
        assert out.grid.valid_fraction[-1] == pytest.approx(1.2 / 5, abs=0.01)
        np.testing.assert_allclose(out.embedding.astype(np.float64), ref_emb, rtol=2e-3, atol=2e-3)
        labels = ex.logit_labels()
        assert sorted(labels) == sorted(EXPECTED_MAP)
        np.testing.assert_allclose(out.logits, expected_logits(ref_logits, labels), rtol=0, atol=2e-3)


def test_class_map_params_and_notes(built: dict, taxonomy) -> None:
    ex = built["onnx"]
    params = ex.params()
    assert params["logits_mode"] == "mapped" and params["logit_indices"] == []
    assert {c: (m, idx) for c, m, idx in params["class_map"]} == EXPECTED_MAP
    assert [c for c, _, _ in params["class_map"]] == ex.logit_labels()
    assert params["config"]["logit_slope"] == SLOPE and params["config"]["logit_intercept"] == INTERCEPT
    note = "\n".join(ex.notes)
    assert "16 of 234 taxonomy classes" in note and "total         234      3           13   218" in note
    table, _ = ex.side_tables()["perch_class_map"]
    assert table.num_rows == taxonomy.num_rows
    rows = {r["primary_label"]: r for r in table.to_pylist()}
    assert rows["22967"]["match"] == "genus" and rows["22967"]["perch_names"] == TINY_PERCH_LABELS[3:5]
    assert rows["116570"]["match"] == "none" and rows["116570"]["perch_indices"] == []   # Caiman yacare
    assert rows["22973"]["match"] == "exact" and rows["22973"]["perch_names"] == ["Leptodactylus fuscus"]


def test_full_logits_keep_every_perch_logit_rescaled(models: dict, taxonomy, shared_data: Path) -> None:
    ex = registry.build("perch", taxonomy, model=models["tflite"], full_logits=True)
    assert ex.logit_labels() == TINY_PERCH_LABELS and ex.params()["logits_mode"] == "full"
    clip = shared_data / "bc2026" / SHORT_CLIP
    _, frames = reference_frames(clip, [0])
    _, ref_logits = tiny_perch_reference(frames, tiny_perch_weights(DIM, len(TINY_PERCH_LABELS)))
    out = ex.compute(Audio.open(clip), [0])
    assert out.grid.valid_fraction[0] < 0.06
    np.testing.assert_allclose(out.logits, ref_logits * SLOPE + INTERCEPT, rtol=0, atol=2e-3)


def test_versions_and_params_round_trip(built: dict, models: dict, shared_data: Path, tmp_path: Path) -> None:
    versions = {runtime: ex.version for runtime, ex in built.items()}
    assert len(set(versions.values())) == 3 and all(v.startswith("perch-") for v in versions.values())
    assert built["savedmodel"].model_sha256 == folder_sha256(models["savedmodel"])
    clip = shared_data / "bc2026" / CLIP
    for ex in built.values():
        stored = json.loads(json.dumps(ex.params()))
        rebuilt = registry.from_params(stored)
        assert rebuilt.version == ex.version and rebuilt.params() == ex.params()
        assert rebuilt.logit_labels() == ex.logit_labels() and rebuilt.view_names() == ["perch", "perch_logits"]
        a, b = ex.compute(Audio.open(clip), STARTS), rebuilt.compute(Audio.open(clip), STARTS)
        assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.logits, b.logits)
        # the embed job's parent drops its checked model once workers load theirs; the next use loads it again
        rebuilt.warm_up()
        assert rebuilt._runner is not None
        rebuilt.release()
        assert rebuilt._runner is None
        c = rebuilt.compute(Audio.open(clip), STARTS)
        assert np.array_equal(a.embedding, c.embedding) and rebuilt._runner is not None
    # a moved model: same version through the model_path override, with no labels file beside it
    moved = tmp_path / "elsewhere" / "perch"
    shutil.copytree(models["savedmodel"], moved)
    (moved / "assets" / "labels.csv").rename(tmp_path / "labels.csv")
    with pytest.raises(ModelError, match="sha256"):                   # the folder hash covers every file
        registry.from_params(built["savedmodel"].params(), model_path=moved)
    (tmp_path / "labels.csv").rename(moved / "assets" / "labels.csv")
    assert registry.from_params(built["savedmodel"].params(), model_path=moved).version == versions["savedmodel"]
    onnx_alone = tmp_path / "onnx" / "perch.onnx"
    onnx_alone.parent.mkdir()
    shutil.copy(models["onnx"], onnx_alone)
    assert registry.from_params(built["onnx"].params(), model_path=onnx_alone).version == versions["onnx"]
    with pytest.raises(ModelError, match="a onnx model, but the stored perch version was written by the tflite"):
        registry.from_params(built["tflite"].params(), model_path=onnx_alone)


def test_store_embed_fills_perch_views(built: dict, models: dict, bc2026_store: Path, shared_data: Path,
                                       tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(bc2026_store, store)
    summary = run_embed(store, ("perch",), model=models["savedmodel"], workers=1)
    assert summary.errors == [] and summary.versions["perch"] == built["savedmodel"].version
    ex = built["savedmodel"]
    ids = [window_id("train_audio", CLIP.removeprefix("train_audio/"), s) for s in STARTS]
    memory = embed_file_with_names(shared_data / "bc2026" / CLIP, [ex], soundscape=False,
                                   views=["perch", "perch_logits"], pooling="mean")
    with FeatureStore.open(store, read_only=True) as s:
        for view in ("perch", "perch_logits"):
            got, X, names, used = load_window_features(s, view, "mean", window_ids=ids)
            assert got == ids and used == {"perch": ex.version}
            assert names == memory[view][2] and np.array_equal(X, memory[view][1]), view
        assert names == [f"perch_logit:{c}" for c in ex.logit_labels()]
        assert s.count("perch_class_map") == 234
        versions = s.sql("SELECT params FROM extractor_versions WHERE extractor_version = ?", [ex.version]).to_pylist()
        assert json.loads(versions[0]["params"])["runtime"] == "savedmodel"
        classes = [r[0] for r in s.rows("SELECT primary_label FROM taxonomy ORDER BY class_index")]
        groups = dict(s.rows("SELECT primary_label, class_name FROM taxonomy"))

    # the zero-shot head reads perch_logit:<class> columns: the sigmoid of the stored (rescaled) logit for the 16
    # mapped classes, the training prior for the other 218 (1/8 = (0 + 1) / (6 + 2) for a class without positives)
    Y = np.zeros((len(ids), len(classes)), np.float32)
    Y[:, classes.index("1595929")] = 1                 # the clip's own label, so one prior is not zero
    head = make_head("zeroshot", classes, names).fit(X, Y)
    P = head.predict_proba(X)
    prior = (Y.sum(axis=0) + 1) / (len(Y) + 2)            # the head's smoothed base rate (pseudocount 1)
    for i, c in enumerate(classes):
        want = 1 / (1 + np.exp(-X[:, names.index(f"perch_logit:{c}")].astype(np.float64))) \
            if f"perch_logit:{c}" in names else np.full(len(ids), prior[i])
        np.testing.assert_allclose(P[:, i], want, rtol=1e-6, atol=1e-6, err_msg=c)
    assert len(head.column_of_class()) == len(EXPECTED_MAP) == 16

    # the data memo's Perch section: counts by taxon group recounted from the hand-worked map, every unmapped class
    page = write_memo(store, tmp_path / "memo.html").read_text()
    section = page.split("<section id='perch-coverage'>")[1].split("</section>")[0]
    assert f"{sum(m == 'exact' for m, _ in EXPECTED_MAP.values())} of 234 classes have their own Perch logit, " \
           f"{sum(m == 'genus' for m, _ in EXPECTED_MAP.values())} a genus proxy" in section
    assert f"No Perch logit ({234 - len(EXPECTED_MAP)})" in section
    for group in sorted(set(groups.values())):
        in_group = [c for c in classes if groups[c] == group]
        exact = sum(EXPECTED_MAP.get(c, ("none",))[0] == "exact" for c in in_group)
        genus = sum(EXPECTED_MAP.get(c, ("none",))[0] == "genus" for c in in_group)
        row = f"<tr><td>{group}</td><td>{len(in_group)}</td><td>{exact}</td><td>{genus}</td>" \
              f"<td>{len(in_group) - exact - genus}</td></tr>"
        assert row in section, (group, row)
    assert "<td>47158son01</td>" in section and "<td>1161364</td>" not in section.split("Genus proxies")[0]


def test_imports_nothing_heavy() -> None:
    import subprocess

    code = ("import sys, embed.perch, embed.registry\n"
            "print(sorted(m for m in ('tensorflow', 'pyarrow', 'duckdb', 'onnxruntime') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- errors
def _save(folder: Path, signatures: dict, module) -> Path:
    import tensorflow as tf

    tf.saved_model.save(module, str(folder), signatures=signatures)
    (folder / "assets").mkdir(exist_ok=True)
    write_perch_labels(folder / "assets" / "labels.csv", TINY_PERCH_LABELS)
    return folder


def test_bad_saved_models(tmp_path: Path, taxonomy) -> None:
    import tensorflow as tf

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty: a folder but not a SavedModel \(no saved_model.pb in it\)"):
        registry.build("perch", taxonomy, model=tmp_path / "empty")

    module = tf.Module()
    good_spec = tf.TensorSpec([None, FRAME], tf.float32, name="inputs")
    module.other = tf.function(lambda inputs: {"embedding": inputs[:, :8]}, input_signature=[good_spec])
    folder = _save(tmp_path / "no_serving", {"other": module.other}, module)
    with pytest.raises(ModelError, match=r"no_serving: the SavedModel has no 'serving_default' signature "
                                         r"\(signatures: \['other'\]\)"):
        registry.build("perch", taxonomy, model=folder).warm_up()

    module = tf.Module()
    module.f = tf.function(lambda inputs: {"embedding": tf.cast(inputs[:, :8], tf.float32)},
                           input_signature=[tf.TensorSpec([None, FRAME], tf.float64, name="inputs")])
    folder = _save(tmp_path / "float64", {"serving_default": module.f}, module)
    with pytest.raises(ModelError, match=r"float64: serving_default input 'inputs' is \(\[None, 160000\], "
                                         r"'float64'\), expected \[None, samples\] float32"):
        registry.build("perch", taxonomy, model=folder).warm_up()

    module = tf.Module()
    module.f = tf.function(lambda inputs: {"embedding": inputs[:, :8], "label": inputs[:, :7]},
                           input_signature=[tf.TensorSpec([None, 16000], tf.float32, name="inputs")])
    folder = _save(tmp_path / "short", {"serving_default": module.f}, module)
    with pytest.raises(ModelError, match=r"short: input takes 16000 samples but the config says 5.0 s at 32000 Hz"):
        registry.build("perch", taxonomy, model=folder).warm_up()

    module = tf.Module()
    module.f = tf.function(lambda inputs: {"features": inputs[:, :8], "label": inputs[:, :7]},
                           input_signature=[good_spec])
    folder = _save(tmp_path / "no_embedding", {"serving_default": module.f}, module)
    with pytest.raises(ModelError, match=r"no_embedding: cannot find the embedding output \(name='embedding', "
                                         r"dim=1536\); outputs: features \[-1, 8\], label \[-1, 7\]"):
        registry.build("perch", taxonomy, model=folder).warm_up()


def test_missing_labels_and_files_that_are_not_models(models: dict, tmp_path: Path, taxonomy) -> None:
    folder = tmp_path / "perch"
    shutil.copytree(models["savedmodel"], folder)
    (folder / "assets" / "labels.csv").unlink()
    with pytest.raises(ModelError, match=rf"Perch labels not found at {folder}/assets/labels.csv .*"
                                         r"--labels FILE overrides"):
        registry.build("perch", taxonomy, model=folder)
    labels = write_perch_labels(tmp_path / "mine.csv", TINY_PERCH_LABELS)
    assert registry.build("perch", taxonomy, model=folder, labels_file=labels).logit_labels()

    for name, what in (("text.onnx", "not an ONNX model onnxruntime can load"),
                       ("text.tflite", "cannot load TFLite model")):
        path = tmp_path / name
        path.write_text("this is not a model\n")
        write_perch_labels(tmp_path / "labels.csv", TINY_PERCH_LABELS)
        with pytest.raises(ModelError, match=rf"{path}: {what}"):
            registry.build("perch", taxonomy, model=path).warm_up()
    with pytest.raises(ModelError, match="expected the Perch v2 SavedModel folder, an .onnx or a .tflite"):
        registry.build("perch", taxonomy, model=labels)
    with pytest.raises(DataError, match="--extractor perch needs --model PATH"):
        registry.build("perch", taxonomy)


def test_tensorflow_missing_or_too_old(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    outputs = {"embedding": ("embedding", 1536)}
    check_tensorflow_version("2.20.0", "m")
    check_tensorflow_version("2.21.0", "m")
    for old in ("2.19.1", "2.16.0rc1", "1.15.5"):
        with pytest.raises(ModelError, match=rf"m: Perch v2 needs TensorFlow >= 2.20 \(this is {old}\)"):
            check_tensorflow_version(old, "m")
    for text in ("XlaCallModuleOp with version 10 is not supported by this build. Must be <= 9 "
                 "[[{{node XlaCallModule}}]]",
                 "Graph execution error:\n\nDetected at node XlaCallModule ... Cannot deserialize computation",
                 "Op type not registered 'XlaCallModule' in binary running on host"):
        error = too_old_error(RuntimeError(text), "2.16.1", "m")
        assert error is not None and str(error).startswith("m: Perch v2 needs TensorFlow >= 2.20 (this is 2.16.1)")
    assert too_old_error(RuntimeError("out of memory"), "2.21.0", "m") is None

    monkeypatch.setattr(tf, "__version__", "2.19.0")    # the one stand-in: the version string, checked before loading
    with pytest.raises(ModelError, match=r"needs TensorFlow >= 2.20 \(this is 2.19.0\)"):
        SavedModelRunner(models["savedmodel"], outputs)
    monkeypatch.setitem(sys.modules, "tensorflow", None)     # not installed: `import tensorflow` raises
    with pytest.raises(ModelError, match=r"needs TensorFlow, which is not installed; "
                                         r"pip install 'birdclef-stack\[perch\]'"):
        SavedModelRunner(models["savedmodel"], outputs)
