"""The extractor contract, checked for every family in embed.registry.FAMILIES.

In the manner of scikit-learn's ``parametrize_with_checks``: every check is parametrised over the
registry, so a family added there is checked here for free once :data:`CHANGE` says which of its
output-defining parameters to change (the test that compares the two lists fails until it does).
Each family is built as the embed job builds it (:func:`embed.registry.build` with the job's
options): BirdNET with the real bundled model, classical, a user model (a tiny real TFLite
file, :func:`embed_helpers.build_tiny_tflite`) and Perch (a Perch v2 stand-in converted to TFLite,
:func:`embed_helpers.build_tiny_perch`, passed as ``perch_model`` as the job does beside a custom model). Audio: real clips of the shared data, among them
the 0.29-s one, plus digital silence and an empty file. The CNN student is a seeded, untrained model
exported by :mod:`students.cnn` (TensorFlow, from the ``test`` extra).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from embed_helpers import (
    TINY_PERCH_LABELS,
    birdnet_cache,
    build_tiny_perch,
    build_tiny_tflite,
    convert_tiny_perch_tflite,
    write_perch_labels,
)

from embed import registry
from embed.audio import Audio
from embed.extractors import Extractor, FrameOutput, WindowOutput
from embed.features import embed_file_with_names, load_window_features
from embed.job import run_embed
from featurestore.errors import AudioError, BundleError
from featurestore.store import FeatureStore
from featurestore.windows import window_id
from models.heads import ZERO_SHOT_PREFIX

pytestmark = pytest.mark.tf      # the cnn family's model is built and exported with TensorFlow
REPO = Path(__file__).resolve().parents[2]
SHORT_CLIP = "train_audio/1161364/iNat1264238.ogg"    # 0.29 s: one window, mostly padding
CLIP = "train_audio/1595929/iNat1242529.ogg"          # 26.2 s: six windows, a 1.2-s tail
CLIP_STARTS = [0, 5, 10, 15, 20, 25]

# one output-defining parameter of each family, changed in its stored params (-> a different extractor)
CHANGE: dict[str, Callable[[dict], dict]] = {
    "birdnet": lambda p: {**p, "hop_s": 2.0},
    "classical": lambda p: {**p, "classical": {**p["classical"], "n_mels": 64}},
    "custom": lambda p: {**p, "hop_s": 1.0},
    "cnn": lambda p: {**p, "logits_mode": "none", "logit_indices": [], "logit_labels": []},
    "perch": lambda p: {**p, "config": {**p["config"], "logit_intercept": -9.0}},
}
FAMILIES = list(registry.NAMES)

TINY_RATE, TINY_DIM = 16000, 16
TINY_LABELS = ["Guyalna cuta", "noise", "Lysapsus limellum"]     # two name bc2026 taxonomy classes
TINY_CONFIG = {"name": "tiny", "sample_rate": TINY_RATE, "frame_seconds": 1.0, "hop_seconds": 2.0,
               "embedding_output": "embedding", "logits_output": "logits", "labels_file": "labels.txt"}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embed job's options every family is built with (each uses its own)."""
    folder = tmp_path_factory.mktemp("contract_model")
    build_tiny_tflite(folder / "tiny.tflite", TINY_RATE, TINY_DIM, len(TINY_LABELS))
    (folder / "labels.txt").write_text("\n".join(TINY_LABELS) + "\n")
    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    return {"cache_dir": birdnet_cache(tmp_path_factory), "model": folder / "tiny.tflite",
            "model_config": folder / "tiny.json", "cnn_model": build_tiny_cnn(folder),
            "perch_model": build_tiny_perch_tflite(folder)}


def build_tiny_cnn(folder: Path) -> Path:
    """A real (untrained, seeded) CNN student exported by students.cnn: 32 mels, 3 of the bc2026 classes."""
    import keras

    from embed.cnn import front_end
    from students.cnn import build_model, export, make_cnn_params

    keras.utils.set_random_seed(0)
    fe = front_end({"n_mels": 32, "hop": 1024})
    classes = ["1161364", "1595929", "244024"]
    model = build_model(fe, len(classes), 8, make_cnn_params({"channels": [4, 8]}))
    return export(model, folder, fe, classes, name="tiny_cnn")


def build_tiny_perch_tflite(folder: Path) -> Path:
    """A Perch v2 stand-in (Perch's signature, 32-d embedding, labels.csv) converted to TFLite, for ``perch``."""
    saved = build_tiny_perch(folder / "perch_savedmodel", TINY_PERCH_LABELS)
    (folder / "perch").mkdir()
    write_perch_labels(folder / "perch" / "labels.csv", TINY_PERCH_LABELS)
    return convert_tiny_perch_tflite(saved, folder / "perch" / "perch_v2.tflite")


@pytest.fixture(scope="module")
def runtime(options: dict) -> dict:
    return {"cache_dir": options["cache_dir"]}


@pytest.fixture(scope="module")
def taxonomy(bc2026_store: Path):
    with FeatureStore.open(bc2026_store, read_only=True) as store:
        return store.read_table("taxonomy")


@pytest.fixture(scope="module")
def built(taxonomy, options: dict) -> dict[str, Extractor]:
    return {family: registry.build(family, taxonomy, **options) for family in FAMILIES}


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    return shared_data / "bc2026" / CLIP


@pytest.fixture(scope="module")
def outputs(built: dict, clip: Path) -> dict:
    """Each family's outputs on the six windows of the 26.2-s clip."""
    return {family: ex.compute(Audio.open(clip), CLIP_STARTS) for family, ex in built.items()}


@pytest.fixture(scope="module")
def embedded_store(bc2026_store: Path, tmp_path_factory: pytest.TempPathFactory, options: dict) -> tuple[Path, dict]:
    """The shared clips embedded by every registered family in one job run."""
    store = tmp_path_factory.mktemp("contract_store") / "store"
    shutil.copytree(bc2026_store, store)
    summary = run_embed(store, FAMILIES, workers=1, **options)
    assert summary.errors == []
    return store, summary.versions


def _arrays(out: FrameOutput | WindowOutput) -> dict[str, np.ndarray]:
    if isinstance(out, WindowOutput):
        return {"features": out.features, "valid_fraction": out.valid_fraction}
    arrays = {"embedding": out.embedding, "start_sample": out.grid.start_sample,
              "window_index": out.grid.window_index, "valid_fraction": out.grid.valid_fraction}
    if out.logits is not None:
        arrays["logits"] = out.logits
    return arrays


def _check_output(ex: Extractor, out: FrameOutput | WindowOutput, n_windows: int) -> None:
    """Shapes, dtypes and finiteness of one output, against the names the extractor gives."""
    if ex.output == "windows":
        assert isinstance(out, WindowOutput)
        assert out.features.dtype == np.float32 and out.features.shape == (n_windows, len(ex.feature_names()))
        assert out.valid_fraction.dtype == np.float32 and out.valid_fraction.shape == (n_windows,)
        assert np.all(np.isfinite(out.features))
        return
    assert ex.output == "frames" and isinstance(out, FrameOutput)
    n = len(out.grid.window_index)
    assert sorted(set(out.grid.window_index.tolist())) == list(range(n_windows))   # every window has frames
    assert out.embedding.dtype == np.float16 and out.embedding.shape[0] == n and out.embedding.shape[1] > 0
    assert np.all(np.isfinite(out.embedding))
    if ex.logit_labels():
        assert out.logits.dtype == np.float32 and out.logits.shape == (n, len(ex.logit_labels()))
        assert np.all(np.isfinite(out.logits))
    else:
        assert out.logits is None


# ---------------------------------------------------------------------------- the registry itself
def test_every_family_names_a_parameter_change() -> None:
    assert sorted(CHANGE) == sorted(FAMILIES)


def test_extractors_module_imports_no_family() -> None:
    """The base module and the registry are not an import loop: embed.extractors imports no family."""
    code = ("import sys, embed.extractors\n"
            "print(sorted(m for m in ('embed.birdnet', 'embed.classical', 'embed.custom', 'embed.registry') "
            "if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_zero_shot_columns_are_birdnet_logit_columns(built: dict) -> None:
    """The zero-shot head reads the columns BirdNET's logit view writes (an on-disk name: kept as is)."""
    assert ZERO_SHOT_PREFIX == "birdnet_logit:"
    spec = registry.parse_view("birdnet_logits")
    assert spec.column_names(2, {"logit_labels": ["ashgre1", "banana"]}) == ["birdnet_logit:ashgre1",
                                                                            "birdnet_logit:banana"]
    assert built["birdnet"].logit_labels()[0] == "ashgre1"


# ---------------------------------------------------------------------------- per family
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_and_storage(family: str, built: dict) -> None:
    ex, cls = built[family], registry.FAMILIES[family]
    assert type(ex) is cls and cls.family == family
    assert ex.params()["kind"] == family                           # the stored key, hashed into versions
    assert registry.family_of(ex.name) is cls and ex.version.startswith(f"{ex.name}-")
    assert ex.output in ("frames", "windows")
    keys = registry.PART_TABLES[cls.table]
    assert keys == cls.part_keys() and keys[:2] == ["window_id", "extractor_version"]
    assert ("frame_index" in keys) == (ex.output == "frames")


@pytest.mark.parametrize("family", FAMILIES)
def test_params_round_trip(family: str, built: dict, outputs: dict, clip: Path, runtime: dict) -> None:
    ex = built[family]
    stored = json.loads(json.dumps(ex.params()))                   # as extractor_versions / extractors.json keep it
    rebuilt = registry.from_params(stored, **runtime)
    assert type(rebuilt) is type(ex) and rebuilt.version == ex.version and rebuilt.params() == ex.params()
    assert rebuilt.view_names() == ex.view_names() and rebuilt.column_labels() == ex.column_labels()
    again = _arrays(rebuilt.compute(Audio.open(clip), CLIP_STARTS))
    first = _arrays(outputs[family])
    assert again.keys() == first.keys()
    for key, value in first.items():
        assert again[key].dtype == value.dtype and np.array_equal(again[key], value), key
    # rebuild() gives the same extractor, and names the owner when a version differs or params are missing
    assert [e.version for e in registry.rebuild({ex.name: stored}, {ex.name: ex.version}, owner="head h")] \
        == [ex.version]
    with pytest.raises(BundleError, match=re.escape(f"head h was trained on {ex.name} features version x0, but "
                                                    f"this machine's {ex.name} extractor is version {ex.version}")):
        registry.rebuild({ex.name: stored}, {ex.name: "x0"}, owner="head h", **runtime)
    with pytest.raises(BundleError, match=re.escape(f"head h: no parameters recorded for extractor '{ex.name}'")):
        registry.rebuild({}, {ex.name: ex.version}, owner="head h")


@pytest.mark.parametrize("family", FAMILIES)
def test_version_is_stable_and_follows_the_outputs(family: str, built: dict, outputs: dict, taxonomy,
                                                   options: dict, runtime: dict, clip: Path) -> None:
    ex = built[family]
    assert registry.build(family, taxonomy, **options).version == ex.version
    # runtime options change nothing that is stored
    assert registry.build(family, taxonomy, **options, threads=2, batch_size=4).version == ex.version
    changed = registry.from_params(CHANGE[family](ex.params()), **runtime)
    assert changed.version != ex.version
    before, after = _arrays(outputs[family]), _arrays(changed.compute(Audio.open(clip), CLIP_STARTS))
    assert before.keys() != after.keys() or any(
        before[k].shape != after[k].shape or not np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_names_match_output_widths_and_dtypes(family: str, built: dict, outputs: dict) -> None:
    ex = built[family]
    _check_output(ex, outputs[family], len(CLIP_STARTS))
    assert len(set(ex.feature_names())) == len(ex.feature_names())
    assert len(set(ex.logit_labels())) == len(ex.logit_labels())


@pytest.mark.parametrize("family", FAMILIES)
def test_declared_views_parse_back_and_name_their_columns(family: str, built: dict, clip: Path) -> None:
    ex, cls = built[family], registry.FAMILIES[family]
    views = ex.view_names()
    assert views and len(views) == len(cls.views) - (0 if ex.logit_labels() else
                                                     sum(v.column == "logits" for v in cls.views))
    memory = embed_file_with_names(clip, [ex], soundscape=False, views=views, pooling="meanmax")
    for view in views:
        spec = registry.parse_view(view)
        assert (spec.view, spec.extractor, spec.table) == (view, ex.name, cls.table)
        assert spec.declared in cls.views and spec.frame_level == (ex.output == "frames")
        starts, X, names = memory[view]
        assert starts.tolist() == CLIP_STARTS and X.dtype == np.float32 and X.shape[1] == len(names)
        assert len(set(names)) == len(names) and np.all(np.isfinite(X))
        prefix = spec.declared.prefix(spec.member)
        base = names[: len(names) // 2] if spec.frame_level else names   # meanmax: mean half, then @max
        if spec.frame_level:
            assert names[len(base):] == [f"{n}@max" for n in base]
        labels = ex.column_labels().get(spec.declared.labels or "", [])
        expected = labels if labels else [str(i) for i in range(len(base))]
        assert base == [f"{prefix}{item}" for item in expected]


@pytest.mark.parametrize("family", FAMILIES)
def test_store_views_equal_the_in_memory_path(family: str, built: dict, embedded_store: tuple, clip: Path) -> None:
    """What the job writes into the family's part table reads back, through every view, as the same
    columns and floats as embedding the file in memory; its side tables are in the store."""
    store, versions = embedded_store
    ex = built[family]
    assert versions[ex.name] == ex.version                       # the job built it exactly like registry.build
    ids = [window_id("train_audio", CLIP.removeprefix("train_audio/"), s) for s in CLIP_STARTS]
    memory = embed_file_with_names(clip, [ex], soundscape=False, views=ex.view_names(), pooling="mean")
    with FeatureStore.open(store, read_only=True) as s:
        for view in ex.view_names():
            got_ids, X, names, used = load_window_features(s, view, "mean", window_ids=ids)
            assert got_ids == ids and used == {ex.name: ex.version}
            assert names == memory[view][2] and np.array_equal(X, memory[view][1]), view
        for name, (table, _) in ex.side_tables().items():
            assert s.count(name) == table.num_rows > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_short_clip_silence_and_empty_audio(family: str, built: dict, shared_data: Path, tmp_path: Path) -> None:
    ex = built[family]
    short = Audio.open(shared_data / "bc2026" / SHORT_CLIP)
    assert 0.28 < short.duration_s < 0.30
    out = ex.compute(short, [0])
    _check_output(ex, out, 1)
    valid = out.valid_fraction if isinstance(out, WindowOutput) else out.grid.valid_fraction
    assert np.all(valid < 1.0)                                     # padding is marked as such

    sf.write(tmp_path / "silence.wav", np.zeros(7 * 32000, np.float32), 32000)   # digital silence, 7 s
    _check_output(ex, ex.compute(Audio.open(tmp_path / "silence.wav"), [0, 5]), 2)

    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 32000)              # no samples at all
    with pytest.raises(AudioError, match="empty.wav: decoded to 0 audio frames"):
        ex.compute(Audio.open(tmp_path / "empty.wav"), [0])


@pytest.mark.parametrize("family", FAMILIES)
def test_notes_belong_to_one_extractor(family: str, taxonomy, options: dict) -> None:
    a, b = (registry.build(family, taxonomy, **options) for _ in range(2))
    assert a.notes is not b.notes and a.notes == b.notes
    a.notes.append("only a's")
    assert "only a's" not in b.notes and "notes" not in vars(Extractor)
