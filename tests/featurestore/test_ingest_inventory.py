"""Ingest from given inventory rows (what ``bench/competition_scale.py`` builds its store with): the real
competition CSVs are read as always, the audio folders never are, and every table matches the CSVs."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np

from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore

BENCH = Path(__file__).resolve().parents[2] / "bench" / "competition_scale.py"


def _rehearsal():
    spec = importlib.util.spec_from_file_location("competition_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_focal_counts_are_long_tailed_and_exact():
    counts = _rehearsal().long_tail_counts(35_549, 234)
    assert counts.sum() == 35_549 and counts.min() == 1 and 500 <= counts.max() <= 1_500
    assert np.all(np.diff(counts) <= 0) and (counts < 10).sum() >= 20     # rank order; many rare classes
    small = _rehearsal().long_tail_counts(355, 234)
    assert small.sum() == 355 and small.min() == 1


def test_ingest_from_inventory_rows_matches_the_real_csvs(tmp_path, shared_data):
    bench = _rehearsal()
    comp = bench.write_data(tmp_path / "data", 0.01, seed=3)
    summary = run_ingest(tmp_path / "data", tmp_path / "store", inventory_rows=comp.inventory, batch_size=100)
    assert not (tmp_path / "data" / "train_audio").exists()     # nothing to read: the rows stood for the audio
    assert summary.audio_read == len(comp.inventory) and not [p for p in summary.problems if p["severity"] == "error"]
    with open(shared_data / "bc2026" / "train_soundscapes_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labelled = {(r["filename"], r["start"]) for r in rows}
    focal = [r for r in comp.inventory if r["source"] == "train_audio"]
    expected_windows = sum(int(np.ceil(r["duration_s"] / 5 - 1e-9)) if r["duration_s"] % 5 >= 1 or r["duration_s"] < 5
                           else int(r["duration_s"] // 5) for r in focal)
    with FeatureStore.open(tmp_path / "store", read_only=True) as store:
        assert store.count("taxonomy") == 234
        assert store.count("recordings") == len(focal) == round(35_549 * 0.01)
        assert store.first("SELECT count(*), count(DISTINCT filename) FROM soundscape_labels") == (len(labelled), 66)
        n_scapes = sum(r["source"] == "train_soundscapes" for r in comp.inventory)
        assert store.first("SELECT count(*) FROM windows WHERE source = 'train_soundscapes'")[0] == 12 * n_scapes
        assert store.first("SELECT count(*) FROM windows WHERE source = 'train_audio'")[0] == expected_windows
        # a re-run with the same rows reads nothing again
    again = run_ingest(tmp_path / "data", tmp_path / "store", inventory_rows=comp.inventory)
    assert again.audio_read == 0 and again.audio_skipped == len(comp.inventory)
