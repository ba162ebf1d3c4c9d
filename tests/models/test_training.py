"""Heads trained on the demo store: the baseline ladder, no leakage, determinism, tuning, leaderboard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.errors import BundleError
from featurestore.store import FeatureStore
from models.bundle import HEADS_DIR, HeadConfig, load_bundle, write_record
from models.experiments import BoardFilter, best_head_id, ranked
from models.frame import FrameSpec, build_frame
from models.training import train_head

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store (its heads included)."""
    return store_copy(demo_trained.store, "training")


@pytest.fixture(scope="module")
def ladder(demo_trained) -> dict:
    """The baseline ladder, trained once for the session (conftest.demo_trained)."""
    return {k: demo_trained.results[k] for k in ("prior", "zeroshot", "classical", "linear", "lgbm")}


def test_baseline_ladder_is_ordered(ladder: dict) -> None:
    auc = {k: r.fold_mean for k, r in ladder.items()}
    assert auc["prior"] < auc["zeroshot"] < min(auc["classical"], auc["linear"], auc["lgbm"])
    assert min(auc["linear"], auc["lgbm"]) >= 0.9, {k: r.render() for k, r in ladder.items()}
    for run in ladder.values():
        assert run.eval_rows == "labelled soundscape windows" and run.scored_on == "soundscape"
        assert run.mode == "full" and run.n_classes_degenerate == 0


def test_constant_prior_headline_is_exactly_one_half(ladder: dict) -> None:
    """One constant score per class and fold: every fold's AUC is 0.5, so the headline is 0.5 +/- 0."""
    prior = ladder["prior"]
    assert prior.fold_mean == pytest.approx(0.5, abs=1e-12) and prior.fold_std == pytest.approx(0.0, abs=1e-12)
    assert all(v == pytest.approx(0.5) for v in prior.report.fold_scores.values())
    # pooled, the same constant head is punished for calibration differences between fold models
    assert prior.oof_auc < 0.5 and prior.calibration_gap == pytest.approx(prior.oof_auc - 0.5)


def test_fold_mean_equals_sklearn_per_held_out_fold(store: Path, ladder: dict) -> None:
    run = ladder["lgbm"]
    oof = pq.read_table(run.oof_path)
    with FeatureStore.open(store, read_only=True) as fs:
        frame = build_frame(fs, FrameSpec("birdnet", pooling="max"))
    fold = np.array(oof.column("fold").to_pylist())
    scape = np.array(oof.column("source").to_pylist()) == "train_soundscapes"
    P = np.column_stack([oof.column(c).to_numpy() for c in frame.class_names])
    scores = []
    for f in sorted(set(fold[scape].tolist())):
        m = scape & (fold == f)
        Y = frame.Y[m]
        keep = (Y.sum(axis=0) > 0) & (Y.sum(axis=0) < m.sum())
        scores.append(roc_auc_score(Y[:, keep], P[m][:, keep], average="macro"))
    assert run.fold_mean == pytest.approx(np.mean(scores), abs=1e-9)
    assert run.fold_std == pytest.approx(np.std(scores), abs=1e-9)


def test_oof_metric_equals_sklearn_on_the_written_file(store: Path, ladder: dict) -> None:
    run = ladder["linear"]
    oof = pq.read_table(run.oof_path)
    with FeatureStore.open(store, read_only=True) as fs:
        frame = build_frame(fs, FrameSpec("birdnet"))
    assert oof.column("window_id").to_pylist() == frame.window_ids.tolist()
    mask = np.array(oof.column("source").to_pylist()) == "train_soundscapes"
    P = np.column_stack([oof.column(c).to_numpy() for c in frame.class_names])[mask]
    Y = frame.Y[mask]
    scored = Y.sum(axis=0) > 0
    assert run.oof_auc == pytest.approx(roc_auc_score(Y[:, scored], P[:, scored], average="macro"), abs=1e-12)


def test_each_oof_row_comes_from_a_model_that_never_saw_its_group(store: Path, ladder: dict) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        group_of = dict(fs.rows("SELECT window_id, group_key FROM folds"))
    for run in (ladder["linear"], ladder["lgbm"]):
        oof = pq.read_table(run.oof_path).select(["window_id", "fold"]).to_pylist()
        for fold in {r["fold"] for r in oof}:
            trained_on = pq.read_table(store / HEADS_DIR / run.head_id / f"fold_{fold}" / "train_windows.parquet")
            train_groups = {group_of[w] for w in trained_on.column("window_id").to_pylist()}
            held = [r["window_id"] for r in oof if r["fold"] == fold]
            assert held and not ({group_of[w] for w in held} & train_groups)
            assert not set(held) & set(trained_on.column("window_id").to_pylist())


def test_same_command_twice_gives_identical_oof_bytes(store: Path, ladder: dict) -> None:
    cmd = [sys.executable, "-m", "pipelines.train", "--store", str(store), "--head-kind", "linear", "--features",
           "birdnet"]
    first = ladder["linear"].oof_path.read_bytes()          # the session's first run, in another store
    copy = store / "oof" / ladder["linear"].oof_path.name
    copy.unlink()                                           # the command must write it again
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"head {ladder['linear'].head_id} " in result.stdout
    assert copy.read_bytes() == first


def test_leaderboard_ranks_experiments(store: Path, ladder: dict) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        board = ranked(fs, BoardFilter(mode="full")).to_pylist()
    means = [r["fold_mean"] for r in board]
    assert means == sorted(means, reverse=True) and board[0]["rank"] == 1
    assert {r["head_id"] for r in board} >= {run.head_id for run in ladder.values()}
    assert all(r["scored_on"] == "soundscape" and r["n_classes_scored"] > 0 for r in board)
    out = subprocess.run([sys.executable, "-m", "pipelines.leaderboard", "--store", str(store)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0 and ladder["linear"].head_id in out.stdout
    assert "[full]" in out.stdout and "base/full" in out.stdout
    nosuch = subprocess.run([sys.executable, "-m", "pipelines.leaderboard", "--store", str(store), "--tag", "nosuch"],
                            cwd=REPO, capture_output=True, text=True)
    assert nosuch.returncode == 0 and "no experiments with tag 'nosuch'" in nosuch.stdout
    assert "tags present: full" in nosuch.stdout


def test_replay_rows_rank_apart_from_full_rows(store: Path, ladder: dict) -> None:
    replay = train_head(store, "linear", FrameSpec("birdnet"), replay=True)
    assert replay.mode == "replay"
    with FeatureStore.open(store, read_only=True) as fs:
        board = ranked(fs).to_pylist()
        assert best_head_id(fs) != replay.head_id
    modes = [r["mode"] for r in board]
    assert modes == sorted(modes, key=["full", "fast", "replay"].index)
    assert [r["rank"] for r in board if r["mode"] == "replay"][0] == 1


def test_bad_requests_are_clear(store: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines.train", "--store", str(store), "--head-kind", "lgbm",
                             "--params", '{"num_leafs": 3}'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown lgbm parameter(s) ['num_leafs']" in result.stderr
    assert "Traceback" not in result.stderr


def test_bundle_files_round_trip_and_name_their_folder(store: Path, ladder: dict, tmp_path: Path) -> None:
    """config.json is HeadConfig.to_json byte for byte (so head ids stay stable), with the flat
    feature_versions; extractors.json holds the stored parameters of exactly those extractor versions."""
    stored = {}
    for part in sorted((store / "parts" / "extractor_versions").glob("*.parquet")):
        for row in pq.read_table(part).select(["extractor_version", "params"]).to_pylist():
            stored[row["extractor_version"]] = json.loads(row["params"])
    with FeatureStore.open(store, read_only=True) as fs:
        rows = dict((r[0], r[1:]) for r in fs.rows("SELECT head_id, config, feature_versions FROM experiments"))
    for run in ladder.values():
        folder = store / HEADS_DIR / run.head_id
        text = (folder / "config.json").read_text()
        config = HeadConfig.from_json(json.loads(text))
        assert json.dumps(config.to_json(), indent=1, sort_keys=True) == text
        assert config.head_id == run.head_id == folder.name and config.kind == run.kind
        flat = json.loads(text)["feature_versions"]
        assert flat == {**config.feature_versions.extractors, "pooling": config.frame.pooling}
        assert list(flat)[-1] == "pooling" and config.feature_versions.extractors
        params = json.loads((folder / "extractors.json").read_text())
        assert params == {name: stored[v] for name, v in config.feature_versions.extractors.items()}
        bundle = load_bundle(folder)
        assert bundle.config == config and bundle.extractor_params == params and len(bundle.folds) == 5
        row_config, row_versions = rows[run.head_id]
        assert json.loads(row_config) == json.loads(text) and json.loads(row_versions) == flat
    broken = tmp_path / "broken"
    shutil.copytree(store / HEADS_DIR / ladder["linear"].head_id, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "poolng": "mean"}))
    with pytest.raises(BundleError, match=r"broken: config.json changed since training"):
        load_bundle(broken)                               # the record sees the edit first
    write_record(broken, broken.name, range(5))           # as if training had written it so
    with pytest.raises(BundleError, match=r"broken/config.json: unknown key\(s\) \['poolng'\]"):
        load_bundle(broken)
    (broken / "extractors.json").unlink()
    with pytest.raises(BundleError, match="not a trained head folder"):
        load_bundle(broken)
