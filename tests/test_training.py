"""Heads trained on the demo store: the baseline ladder, no leakage, determinism, tuning, leaderboard."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.store import FeatureStore
from models.frame import FrameSpec, build_frame
from models.training import HEADS_DIR, train_head
from pipelines.leaderboard import leaderboard

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA_LGBM = {"inner_valid_fraction": 0.0, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 7,
                   "feature_fraction": 0.2, "min_child_samples": 10, "n_jobs": 1}


@pytest.fixture(scope="module")
def store(demo_embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("training") / "store"
    shutil.copytree(demo_embedded_store, target)
    return target


@pytest.fixture(scope="module")
def ladder(store: Path) -> dict:
    runs = {
        "prior": train_head(store, "prior", FrameSpec("birdnet")),
        "zeroshot": train_head(store, "zeroshot", FrameSpec("birdnet_logits")),
        "classical": train_head(store, "linear", FrameSpec("classical")),
        "linear": train_head(store, "linear", FrameSpec("birdnet")),
        "lgbm": train_head(store, "lgbm", FrameSpec("birdnet", pooling="max"), overrides=SMALL_DATA_LGBM),
    }
    return runs


def test_baseline_ladder_is_ordered(ladder: dict) -> None:
    auc = {k: r.oof_auc for k, r in ladder.items()}
    assert auc["prior"] < max(auc["zeroshot"], auc["classical"]) < max(auc["linear"], auc["lgbm"])
    assert auc["linear"] > auc["classical"] > auc["prior"]
    assert ladder["lgbm"].fold_mean >= 0.9, ladder["lgbm"].render()
    for run in ladder.values():
        assert run.eval_rows == "labelled soundscape windows"


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
    cmd = [sys.executable, "-m", "pipelines.train", "--store", str(store), "--head", "linear", "--features", "birdnet"]
    first = ladder["linear"].oof_path.read_bytes()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"head {ladder['linear'].head_id} " in result.stdout
    assert ladder["linear"].oof_path.read_bytes() == first


def test_leaderboard_ranks_experiments(store: Path, ladder: dict) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        board = leaderboard(fs).to_pylist()
    aucs = [r["oof_auc"] for r in board]
    assert aucs == sorted(aucs, reverse=True) and board[0]["rank"] == 1
    assert {r["head_id"] for r in board} >= {run.head_id for run in ladder.values()}
    assert any(r["tag"].startswith("baseline/") for r in board)
    out = subprocess.run([sys.executable, "-m", "pipelines.leaderboard", "--store", str(store)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0 and ladder["linear"].head_id in out.stdout


def test_optuna_study_persists_in_the_store(store: Path) -> None:
    from pipelines.tune import run_tune, storage_url

    out = run_tune(store, "linear", 3, "demo-linear", FrameSpec("birdnet"), record_best=True)
    assert out["trials"] == 3 and out["completed"] >= 1 and out["best_head_id"].startswith("linear-")
    code = ("import optuna, sys; s = optuna.load_study(study_name='demo-linear', storage=sys.argv[1]); "
            "print(len(s.trials), s.best_value)")
    fresh = subprocess.run([sys.executable, "-c", code, storage_url(store)], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    n, best = fresh.stdout.split()
    assert int(n) == 3 and float(best) == pytest.approx(out["best_value"])
    with FeatureStore.open(store, read_only=True) as fs:
        assert fs.first("SELECT tag FROM experiments WHERE head_id = ?", [out["best_head_id"]]) == ("tuned",)


def test_bad_requests_are_clear(store: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines.train", "--store", str(store), "--head", "lgbm",
                             "--params", '{"num_leafs": 3}'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown lgbm parameter(s) ['num_leafs']" in result.stderr
