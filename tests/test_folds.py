"""Frozen grouped folds on the real labels, the group-level stratifier, and the fold SQL audits."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from featurestore.folds import (
    assign_group_folds,
    focal_group_key,
    fold_version,
    load_folds,
    load_replay,
    make_folds,
    stable_tiebreak,
)
from featurestore.ingest import run_ingest
from featurestore.sqlfiles import list_sql_files, run_sql_file
from featurestore.store import FeatureStore, StoreError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_store(bc2026_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real shared data ingested, with default folds made (a private copy)."""
    store = tmp_path_factory.mktemp("folds_real") / "store"
    shutil.copytree(bc2026_store, store)
    make_folds(store)
    return store


def _without_written_at(table):
    return table.drop_columns(["written_at"])


def test_real_labels_grouped_by_site(real_store: Path):
    with FeatureStore.open(real_store, read_only=True) as store:
        labels = store.sql("SELECT filename, site, start_s FROM soundscape_labels").to_pylist()
        folds, version = load_folds(store)
        assert version == fold_version(store, "folds")
        rows = store.sql("SELECT window_id, filename, source, fold, group_key FROM folds").to_pylist()
        n_windows = store.count("windows")
        window_ids = {r[0] for r in store.rows("SELECT window_id FROM windows")}
    # every labelled segment of the 66 files (audio absent) and every window has a fold
    assert len(labels) == 739
    assert len(folds) == 739 + n_windows
    assert window_ids <= folds.keys()
    site_folds: dict[str, set] = defaultdict(set)
    file_folds: dict[str, set] = defaultdict(set)
    for r in labels:
        wid = f"train_soundscapes/{r['filename']}@{int(r['start_s'])}"
        site_folds[r["site"]].add(folds[wid])
        file_folds[r["filename"]].add(folds[wid])
    assert len(site_folds) == 9 and len(file_folds) == 66
    assert all(len(f) == 1 for f in site_folds.values()), site_folds       # no site in two folds
    window_folds: dict[str, set] = defaultdict(set)
    for r in rows:
        window_folds[f"{r['source']}/{r['filename']}"].add(r["fold"])
    assert all(len(f) == 1 for f in window_folds.values())                  # every window of a file in one fold
    assert all(len(f) == 1 for f in file_folds.values())
    s22 = {r["filename"] for r in labels if r["site"] == "S22"}
    assert len(s22) == 40
    assert set(range(5)) == {r["fold"] for r in rows}
    assert {r["group_key"] for r in rows if r["filename"] in s22} == {"site:S22"}


def test_frozen_versions_and_explicit_new_version(real_store: Path, tmp_path: Path):
    store_dir = tmp_path / "store"
    shutil.copytree(real_store, store_dir)
    with FeatureStore.open(store_dir, read_only=True) as store:
        first = _without_written_at(store.read_table("folds"))
        first_versions = {n: store.current_version(n) for n in ("folds", "shadow_folds", "replay_windows")}

    again = make_folds(store_dir)
    assert again.status == "unchanged"
    with pytest.raises(StoreError, match="--new-version"):
        make_folds(store_dir, k=4)
    with pytest.raises(StoreError, match="frozen"):
        make_folds(store_dir, soundscape_group="site_date")
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert len(store.versions("folds")) == 1                        # the refusals wrote nothing

    k4 = make_folds(store_dir, k=4, new_version=True)
    assert k4.status == "created" and k4.versions["folds"] != again.versions["folds"]
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert len(store.versions("folds")) == 2
        assert set(load_folds(store)[0].values()) == {0, 1, 2, 3}
        old, old_version = load_folds(store, version=again.versions["folds"])
        assert old_version == again.versions["folds"] and set(old.values()) == set(range(5))
    # back to the original parameters: the same version id and byte-identical content come back
    back = make_folds(store_dir, new_version=True)
    assert back.versions == again.versions
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert {n: store.current_version(n) for n in first_versions} == first_versions
        assert _without_written_at(store.read_table("folds")).equals(first)
        assert len(store.versions("folds")) == 2


def test_shadow_and_replay(real_store: Path):
    with FeatureStore.open(real_store, read_only=True) as store:
        shadow = store.sql("SELECT f.fold, l.site FROM shadow_folds f JOIN soundscape_labels l "
                           "ON f.filename = l.filename AND f.source = 'train_soundscapes'").to_pylist()
        folds, _ = load_folds(store)
        replay = load_replay(store)
        replay_files = store.rows("SELECT count(DISTINCT source || filename) FROM replay_windows")[0][0]
        all_files = store.rows("SELECT count(DISTINCT source || filename) FROM folds WHERE fold >= 0")[0][0]
    by_fold: dict[int, set] = defaultdict(set)
    for r in shadow:
        by_fold[r["fold"]].add(r["site"])
    assert len(by_fold) == 9 and all(len(s) == 1 for s in by_fold.values())   # leave one site out
    assert replay <= folds.keys()
    assert 0.08 <= replay_files / all_files <= 0.25


def test_greedy_group_stratifier_spreads_rare_classes():
    rng = np.random.default_rng(0)
    n_groups, k = 40, 5
    counts = (rng.random((n_groups, 12)) < 0.3) * rng.integers(1, 6, (n_groups, 12))
    counts[:, 0] = 0
    counts[[3, 17, 29], 0] = [5, 1, 2]          # a rare class in 3 groups must reach 3 folds
    counts[:, 1] = 0
    counts[8, 1] = 4                             # a class in one group reaches 1 fold
    sizes = rng.integers(5, 60, n_groups)
    keys = [f"g{i}" for i in range(n_groups)]
    fold = assign_group_folds(counts, sizes, k, stable_tiebreak(keys, 0))
    assert set(fold) == set(range(k))
    assert len(set(fold[[3, 17, 29]])) == 3
    for c in range(counts.shape[1]):
        holders = np.flatnonzero(counts[:, c])
        if len(holders):
            assert len(set(fold[holders])) >= min(len(holders), k) - 1, c
    fold_sizes = np.bincount(fold, weights=sizes, minlength=k)
    assert fold_sizes.max() / fold_sizes.min() < 1.6
    np.testing.assert_array_equal(fold, assign_group_folds(counts, sizes, k, stable_tiebreak(keys, 0)))
    # the seed only breaks ties: equal groups get reshuffled by a new seed
    flat, ones = (counts > 0).astype(int), np.ones(n_groups)
    assert not np.array_equal(assign_group_folds(flat, ones, k, stable_tiebreak(keys, 0)),
                              assign_group_folds(flat, ones, k, stable_tiebreak(keys, 1)))


def test_focal_group_keys():
    assert focal_group_key("Ana", -19.87, -43.96, 1.0, "a/x.ogg") == "author:Ana|cell:-20.00,-44.00"
    assert focal_group_key(None, -19.87, -43.96, 0.5, "a/x.ogg") == "author:?|cell:-20.00,-44.00"
    assert focal_group_key(" ", None, None, 1.0, "a/x.ogg") == "file:a/x.ogg"


@pytest.fixture(scope="module")
def leaky_store(demo_data: Path, demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo with one clip copied under a second label and author (a planted leak), folds made."""
    root = tmp_path_factory.mktemp("leaky")
    data, store = root / "data", root / "store"
    shutil.copytree(demo_data, data)
    shutil.copytree(demo_store, store)
    with open(data / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    victim = rows[0]
    other = next(r for r in rows if r["primary_label"] != victim["primary_label"] and r["author"] != victim["author"])
    copy = dict(victim, primary_label=other["primary_label"], author="Copy Cat",
                latitude=other["latitude"], longitude=other["longitude"],
                filename=f"{other['primary_label']}/leak_copy.ogg")
    shutil.copy(data / "train_audio" / victim["filename"], data / "train_audio" / copy["filename"])
    with open(data / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(victim))
        writer.writeheader()
        writer.writerows([*rows, copy])
    summary = run_ingest(data, store, workers=1)
    assert summary.audio_read == 1            # only the planted copy is decoded again
    make_folds(store)
    return store


def test_planted_duplicate_is_found_and_kept_in_one_fold(leaky_store: Path):
    with FeatureStore.open(leaky_store, read_only=True) as store:
        dups = run_sql_file(store, "leakage/duplicate_audio").to_pylist()
        across = run_sql_file(store, "leakage/duplicate_audio_across_folds")
        copies = store.rows("SELECT DISTINCT filename, fold FROM folds WHERE filename IN (SELECT unnest(paths) "
                            "FROM (SELECT list(filename) AS paths FROM audio_inventory GROUP BY sha256_pcm "
                            "HAVING count(*) > 1))")
    assert len(dups) == 1
    dup = dups[0]
    assert dup["n_files"] == 2 and dup["label_conflict"] and dup["n_authors"] == 2
    assert any(p.endswith("leak_copy.ogg") for p in dup["paths"])
    assert len(copies) == 2 and len({f for _, f in copies}) == 1    # folds merged the two groups
    assert across.num_rows == 0


def test_session_split_across_folds_is_found(leaky_store: Path, tmp_path: Path):
    """Doctor the folds table so one author+place session straddles two folds: the SQL must see it."""
    store_dir = tmp_path / "store"
    shutil.copytree(leaky_store, store_dir)
    with FeatureStore.open(store_dir) as store:
        assert run_sql_file(store, "leakage/author_place_across_folds").num_rows == 0
        victim = store.rows("SELECT r.filename FROM recordings r WHERE (author, round(latitude, 2), "
                            "round(longitude, 2)) IN (SELECT (author, round(latitude, 2), round(longitude, 2)) "
                            "FROM recordings GROUP BY ALL HAVING count(*) > 1) ORDER BY 1 LIMIT 1")[0][0]
        folds = store.read_table("folds")
        hit = pc.equal(folds.column("filename"), victim)
        moved = pc.if_else(hit, pc.add(pc.bit_wise_and(pc.add(folds.column("fold"), 1), 3), 0),
                           folds.column("fold")).cast("int32")
        store.write_table("folds", folds.set_column(folds.schema.get_field_index("fold"), "fold", moved))
        found = run_sql_file(store, "leakage/author_place_across_folds").to_pylist()
    assert len(found) == 1 and len(found[0]["folds"]) == 2


def test_every_sql_file_runs_on_the_real_store(real_store: Path):
    names = list_sql_files()
    assert {"eda/class_counts", "eda/long_tail", "eda/clip_durations", "eda/labels_per_site_hour",
            "eda/label_cooccurrence", "eda/metadata_missingness", "eda/rating_distribution",
            "leakage/duplicate_audio", "leakage/author_place_across_folds", "leakage/soundscape_file_leaks",
            "leakage/fold_audit", "leakage/fold_class_coverage"} <= set(names)
    with FeatureStore.open(real_store, read_only=True) as store:
        results = {name: run_sql_file(store, name) for name in names}
    per_site = {r["site"]: r["n_files"] for r in results["eda/labels_per_site_hour"].to_pylist()}
    assert len(per_site) == 9
    assert results["eda/long_tail"].num_rows == 234
    audit = results["leakage/fold_audit"].to_pylist()
    assert [r["fold"] for r in audit] == [0, 1, 2, 3, 4]
    assert sum(r["n_windows"] for r in audit) == 739 + 19
    assert results["leakage/soundscape_file_leaks"].num_rows == 0
    coverage = {r["primary_label"]: r for r in results["leakage/fold_class_coverage"].to_pylist()}
    assert all(r["n_folds"] <= r["n_folds_possible"] for r in coverage.values())
    assert coverage["1161364"]["cannot_validate"]                     # one focal clip: one group


@pytest.mark.slow
def test_cli_refuses_to_regenerate(real_store: Path, tmp_path: Path):
    store_dir = tmp_path / "store"
    shutil.copytree(real_store, store_dir)
    run = [sys.executable, "-m", "pipelines.folds", "--store", str(store_dir)]
    ok = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "folds unchanged" in ok.stdout
    refused = subprocess.run([*run, "-k", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: folds are frozen") and "--new-version" in refused.stderr
