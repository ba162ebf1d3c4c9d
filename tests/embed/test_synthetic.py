"""Synthetic features (embed/synthetic.py) through the store's own writers: what the readers see, that
they carry the labels' signal, and that writing them is deterministic and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embed.features import load_window_features
from embed.synthetic import SyntheticExtractor, SyntheticParams, class_directions, write_synthetic_features
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from models.frame import FrameSpec, build_frame

PARAMS = SyntheticParams(dim=32, frames_per_window=3, seed=11)      # what conftest.synthetic_store wrote


def test_every_window_gets_frames_that_the_feature_readers_pool(synthetic_store: Path) -> None:
    version = SyntheticExtractor(PARAMS).version
    with FeatureStore.open(synthetic_store, read_only=True) as fs:
        windows = [r[0] for r in fs.rows("SELECT window_id FROM windows ORDER BY window_id")]
        frames = fs.rows("SELECT window_id, count(*), min(extractor_version), max(extractor_version) "
                         "FROM birdnet_frames GROUP BY window_id ORDER BY window_id")
        ids, X, names, got_version = load_window_features(fs, "birdnet", "mean", window_ids=windows[:40])
        versions = fs.rows("SELECT extractor_version, params FROM extractor_versions")
    assert [f[0] for f in frames] == windows and {f[1] for f in frames} == {3}
    assert {f[2] for f in frames} == {f[3] for f in frames} == {version} and version.startswith("birdnet-synthetic-")
    assert [v for v, _ in versions] == [version] and '"kind": "synthetic"' in versions[0][1]
    assert sorted(ids) == sorted(windows[:40]) and X.shape == (40, 32) and len(names) == 32
    assert got_version == {"birdnet": version}
    # the mean over a window's frames equals the float64 mean of the stored float16 rows
    table = pq.read_table(sorted((synthetic_store / "parts" / "birdnet_frames").glob("*.parquet"))[0])
    first = table.column("window_id")[0].as_py()
    rows = np.array([e.as_py() for w, e in zip(table.column("window_id"), table.column("embedding"), strict=True)
                     if w.as_py() == first], np.float64)
    with FeatureStore.open(synthetic_store, read_only=True) as fs:
        _, X1, _, _ = load_window_features(fs, "birdnet", "mean", window_ids=[first])
    np.testing.assert_allclose(X1[0], rows.mean(axis=0), rtol=1e-6, atol=1e-6)


def test_features_carry_the_labels_signal(synthetic_store: Path) -> None:
    """A labelled window's mean embedding projects on its classes' directions (signal 1.5, noise 1/sqrt(3))."""
    with FeatureStore.open(synthetic_store, read_only=True) as fs:
        frame = build_frame(fs, FrameSpec("birdnet"))
    D = class_directions(frame.class_names, PARAMS.dim, PARAMS.signal, PARAMS.seed)
    proj = frame.X @ np.array([D[c] for c in frame.class_names]).T / PARAMS.signal
    positive, negative = proj[frame.Y > 0], proj[frame.Y == 0]
    assert positive.mean() > 1.2 and abs(negative.mean()) < 0.4


def test_writing_is_deterministic_and_a_rerun_writes_nothing(demo_store: Path, synthetic_store: Path,
                                                             store_copy) -> None:
    store = store_copy(demo_store, "synthetic_again")
    assert write_synthetic_features(store, SyntheticParams(dim=32, frames_per_window=3, seed=11, files_per_part=7)) > 0
    assert write_synthetic_features(store, SyntheticParams(dim=32, frames_per_window=3, seed=11)) == 0
    with FeatureStore.open(store, read_only=True) as a, FeatureStore.open(synthetic_store, read_only=True) as b:
        q = "SELECT window_id, frame_index, embedding FROM birdnet_frames ORDER BY window_id, frame_index"
        mine, theirs = a.rows(q), b.rows(q)
    assert mine == theirs                              # other part grouping, same bytes per window
    with pytest.raises(UserInputError, match="not a frame extractor family"):
        write_synthetic_features(store, SyntheticParams(name="classical"))
