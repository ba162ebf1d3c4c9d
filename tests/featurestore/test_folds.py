"""Frozen grouped folds on the real labels, the group-level stratifier, and the fold SQL audits."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from featurestore.folds import (
    FoldParams,
    Unit,
    assign_group_folds,
    focal_group_key,
    fold_version,
    load_folds,
    load_replay,
    make_folds,
    split_large_sites,
    stable_tiebreak,
)
from featurestore.ingest import run_ingest
from featurestore.sqlfiles import list_sql_files, run_sql_file
from featurestore.store import FeatureStore, StoreError
from pipelines.folds import main as folds_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_store(bc2026_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real shared data ingested, with default folds made (a private copy)."""
    store = tmp_path_factory.mktemp("folds_real") / "store"
    shutil.copytree(bc2026_store, store)
    make_folds(store)
    return store


def _without_written_at(table):
    return table.drop_columns(["written_at"])


# Measured by bench/fold_design.py on the real labels (k=5): site_split gives 139-156 labelled
# windows and 26-36 scorable classes per fold; grouping by site gives 36-477 windows and 17-29.
MIN_FOLD_WINDOWS = 130
MIN_FOLD_SCORABLE = 25


def _real_label_windows(shared_data: Path) -> dict[str, set[str]]:
    """Independent of ingest: the real label CSV read with the csv module, repeats dropped."""
    out: dict[str, set[str]] = {}
    with open(shared_data / "bc2026" / "train_soundscapes_labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            h, m, sec = (int(x) for x in r["start"].split(":"))
            wid = f"train_soundscapes/{r['filename']}@{h * 3600 + m * 60 + sec}"
            out.setdefault(wid, set()).update(x for x in r["primary_label"].split(";") if x)
    return out


def test_real_labels_default_site_split(real_store: Path, shared_data: Path):
    labels = _real_label_windows(shared_data)
    with FeatureStore.open(real_store, read_only=True) as store:
        folds, version = load_folds(store)
        assert version == fold_version(store, "folds")
        rows = store.sql("SELECT window_id, filename, source, fold, group_key FROM folds").to_pylist()
        params = store.version_info("folds", store.current_version("folds")).params["fold_params"]
        n_windows = store.count("windows")
        window_ids = {r[0] for r in store.rows("SELECT window_id FROM windows")}
    assert params["soundscape_group"] == "site_split" and params["date_block_days"] == 7
    # every labelled segment of the 66 files (audio absent) and every window has a fold
    assert len(labels) == 739 and labels.keys() <= folds.keys()
    assert len(folds) == 739 + n_windows and window_ids <= folds.keys()
    assert set(range(5)) == {r["fold"] for r in rows}

    # recount per fold: enough windows and classes with a positive and a negative to score
    classes = sorted({c for v in labels.values() for c in v})
    for f in range(5):
        fold_windows = [v for wid, v in labels.items() if folds[wid] == f]
        pos = {c: sum(c in v for v in fold_windows) for c in classes}
        scorable = [c for c in classes if 0 < pos[c] < len(fold_windows)]
        assert len(fold_windows) >= MIN_FOLD_WINDOWS, (f, len(fold_windows))
        assert len(scorable) >= MIN_FOLD_SCORABLE, (f, len(scorable))

    # nothing near-identical straddles: a group, a file, a site-day, a recording night (noon to noon)
    group_folds: dict[str, set] = defaultdict(set)
    file_folds: dict[str, set] = defaultdict(set)
    for r in rows:
        group_folds[f"{r['source']}/{r['group_key']}"].add(r["fold"])
        file_folds[f"{r['source']}/{r['filename']}"].add(r["fold"])
    assert all(len(f) == 1 for f in group_folds.values())
    assert all(len(f) == 1 for f in file_folds.values())
    site_folds: dict[str, set] = defaultdict(set)
    day_folds: dict[tuple, set] = defaultdict(set)
    night_folds: dict[tuple, set] = defaultdict(set)
    for wid in labels:
        _, site, day, clock = wid.split("/", 1)[1].split("@")[0].removesuffix(".ogg").rsplit("_", 3)
        site_folds[site].add(folds[wid])
        day_folds[(site, day)].add(folds[wid])
        stamp = datetime.strptime(day + clock, "%Y%m%d%H%M%S") - timedelta(hours=12)
        night_folds[(site, stamp.date())].add(folds[wid])
    assert len(site_folds) == 9 and len(day_folds) == 53
    assert all(len(f) == 1 for f in day_folds.values()), day_folds
    assert all(len(f) == 1 for f in night_folds.values()), night_folds
    # only S22 (477 of the 739 windows, > 1/k) is cut into 7-day blocks; every other site stays whole
    assert {s for s, f in site_folds.items() if len(f) > 1} == {"S22"}
    s22_keys = {r["group_key"] for r in rows if "_S22_" in r["filename"]}
    assert len(s22_keys) > 5 and all(k.startswith("site:S22|days:") for k in s22_keys)
    for key in s22_keys:
        first, last = (datetime.strptime(d, "%Y%m%d") for d in key.split("|days:")[1].split("-"))
        assert (last - first).days == 6
    assert {r["group_key"] for r in rows if "_S08_" in r["filename"]} == {"site:S08"}


def test_site_grouping_still_selectable(real_store: Path, tmp_path: Path):
    """``site``: no site in two folds, and S22 (40 of the 66 files) is one fold on its own."""
    store_dir = tmp_path / "store"
    shutil.copytree(real_store, store_dir)
    summary = make_folds(store_dir, soundscape_group="site", new_version=True)
    assert summary.params["soundscape_group"] == "site" and "split_fraction" not in summary.params
    with FeatureStore.open(store_dir, read_only=True) as store:
        labels = store.sql("SELECT filename, site, start_s FROM soundscape_labels").to_pylist()
        folds, _ = load_folds(store)
        rows = store.sql("SELECT filename, group_key FROM folds WHERE source = 'train_soundscapes'").to_pylist()
    site_folds: dict[str, set] = defaultdict(set)
    for r in labels:
        site_folds[r["site"]].add(folds[f"train_soundscapes/{r['filename']}@{int(r['start_s'])}"])
    assert len(site_folds) == 9 and all(len(f) == 1 for f in site_folds.values()), site_folds
    s22 = {r["filename"] for r in labels if r["site"] == "S22"}
    assert len(s22) == 40
    assert {r["group_key"] for r in rows if r["filename"] in s22} == {"site:S22"}
    s22_fold = site_folds["S22"].pop()
    assert sum(folds[f"train_soundscapes/{r['filename']}@{int(r['start_s'])}"] == s22_fold for r in labels) == 477


def test_split_large_sites_keeps_nights_whole():
    """A night recorded across midnight stays in one block even when midnight starts a new block."""
    # 1970-01-01 was a Thursday, so 7-day blocks start on Thursdays: 2022-01-06 starts one
    names = ["BC2026_Train_0001_S22_20220105_220000.ogg", "BC2026_Train_0002_S22_20220106_010000.ogg",
             "BC2026_Train_0003_S22_20220112_200000.ogg", "BC2026_Train_0004_S01_20220105_220000.ogg"]

    def units() -> list[Unit]:
        out = []
        for name in names:
            site = name.split("_")[3]
            u = Unit("train_soundscapes", name, "soundscape", f"site:{site}", {"a": 12}, site=site)
            u.windows = {f"train_soundscapes/{name}@{5 * i}": (False, True) for i in range(12 if site == "S22" else 1)}
            out.append(u)
        return out

    noon = units()
    assert split_large_sites(noon, FoldParams(k=2, soundscape_group="site_split")) == {"S22": 2}
    assert [u.group_key for u in noon] == ["site:S22|days:20211230-20220105", "site:S22|days:20211230-20220105",
                                           "site:S22|days:20220106-20220112", "site:S01"]
    midnight = units()
    assert split_large_sites(midnight, FoldParams(k=2, soundscape_group="site_split", day_start_hour=0)) == {"S22": 2}
    assert [u.group_key for u in midnight] == ["site:S22|days:20211230-20220105", "site:S22|days:20220106-20220112",
                                               "site:S22|days:20220106-20220112", "site:S01"]
    small = units()   # k = 2, split_fraction = 2: only a site above all 37 windows would be cut
    assert split_large_sites(small, FoldParams(k=2, soundscape_group="site_split", split_fraction=2.0)) == {}
    assert {u.group_key for u in small} == {"site:S22", "site:S01"}


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


def test_split_params_are_part_of_the_fold_version(real_store: Path, tmp_path: Path):
    store_dir = tmp_path / "store"
    shutil.copytree(real_store, store_dir)
    with FeatureStore.open(store_dir, read_only=True) as store:
        default = fold_version(store)
    for changed in ({"split_fraction": 0.5}, {"day_start_hour": 0}, {"date_block_days": 14}):
        with pytest.raises(StoreError, match="--new-version"):
            make_folds(store_dir, **changed)
    # split_fraction 0.5 cuts the same single site here: same folds, yet a new version, stored on request
    half = make_folds(store_dir, split_fraction=0.5, new_version=True)
    assert half.status == "created" and half.versions["folds"] != default
    assert half.split_sites == {"S22": 16}
    # the site_split parameters are not part of a site / site_date version (older versions stay valid)
    site = make_folds(store_dir, soundscape_group="site", new_version=True)
    assert make_folds(store_dir, soundscape_group="site", split_fraction=0.5, day_start_hour=3).status == "unchanged"
    assert site.versions["folds"] not in (default, half.versions["folds"])
    with pytest.raises(StoreError, match="split_fraction"):
        make_folds(store_dir, split_fraction=0, new_version=True)


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
    # no soundscape file feeds two folds; S22, cut into date blocks on purpose by site_split, is no leak
    assert results["leakage/soundscape_file_leaks"].to_pylist() == []
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
    # the fold count is --k / -k / --n-folds; --folds (a fold *version* in train/tune) is not accepted here
    old_spelling = subprocess.run([*run, "--folds", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert old_spelling.returncode == 2 and "unrecognized arguments: --folds" in old_spelling.stderr
    with pytest.raises(StoreError, match="frozen"):
        folds_main(["--store", str(store_dir), "--n-folds", "3"])
    assert folds_main(["--store", str(store_dir), "--k", "3", "--new-version"]) == 0
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert set(load_folds(store)[0].values()) == {0, 1, 2}
