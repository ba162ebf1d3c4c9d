"""Overlapping frame models with the other extractors (embed.extractors.compute_all) changes no number:
real BirdNET + classical on the real CC0 clips, overlapped vs one after another vs each alone; the
per-family default batch sizes; pools that fill every core turn the overlap off."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embed import registry
from embed.audio import Audio
from embed.birdnet import DEFAULT_BATCH
from embed.extractors import OVERLAP_ENV, FrameOutput, compute_all, pool_env
from featurestore.windows import window_starts
from featurestore.workers import worker_pool


@pytest.fixture(scope="module")
def extractors():
    return [registry.build("birdnet", None), registry.build("classical", None)]


def _same(a, b) -> None:
    if isinstance(a, FrameOutput):
        np.testing.assert_array_equal(a.embedding, b.embedding)
        np.testing.assert_array_equal(a.grid.start_sample, b.grid.start_sample)
        if a.logits is not None:
            np.testing.assert_array_equal(a.logits, b.logits)
    else:
        np.testing.assert_array_equal(a.features, b.features)


def test_overlapped_equals_serial_equals_alone_on_real_clips(shared_data: Path, extractors, monkeypatch) -> None:
    clips = sorted((shared_data / "bc2026" / "train_audio").rglob("*.ogg"))
    assert len(clips) >= 3
    assert extractors[0].batch_size == DEFAULT_BATCH == 4 and extractors[1].sample_rate == 32000
    for clip in clips:
        starts = window_starts(Audio.load(clip).duration_s, False)
        monkeypatch.setenv(OVERLAP_ENV, "1")
        overlapped = compute_all(Audio.load(clip), [(ex, starts) for ex in extractors])
        monkeypatch.setenv(OVERLAP_ENV, "0")
        serial = compute_all(Audio.load(clip), [(ex, starts) for ex in extractors])
        alone = [ex.compute(Audio.load(clip), starts) for ex in extractors]
        for o, s, a in zip(overlapped, serial, alone, strict=True):
            assert not isinstance(o, BaseException), o
            _same(o, s)
            _same(o, a)


def test_an_extractor_error_is_handed_back_with_the_other_results(shared_data: Path, extractors) -> None:
    clip = sorted((shared_data / "bc2026" / "train_audio").rglob("*.ogg"))[0]
    audio = Audio.load(clip)
    results = compute_all(audio, [(extractors[0], [0.0]), (extractors[1], "not a list of starts")])
    assert isinstance(results[0], FrameOutput) and isinstance(results[1], BaseException)


def test_pools_that_fill_every_core_run_extractors_serially(monkeypatch) -> None:
    """Real workers: a pool filling every core starts them with no overlap and one BLAS thread; a smaller one
    leaves the overlap on; this process's environment is left as it was."""
    monkeypatch.delenv(OVERLAP_ENV, raising=False)
    cores = os.cpu_count() or 1
    with worker_pool(1, env=pool_env(cores)) as pool:
        assert pool.map(os.getenv, [OVERLAP_ENV, "OMP_NUM_THREADS"]) == ["0", "1"]
    assert OVERLAP_ENV not in os.environ
    if cores > 1:
        with worker_pool(1, env=pool_env(1)) as pool:
            assert pool.map(os.getenv, [OVERLAP_ENV]) == [None]
