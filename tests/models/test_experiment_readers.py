"""Every read of the ``experiments`` table goes through models.experiments: its small readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore.store import FeatureStore
from models.experiments import (
    best_on,
    fold_means,
    heads_on_fold_version,
    latest_row,
    record,
    resolve_head_id,
    rows_with_tag,
)


def _row(head_id: str, fold_mean: float | None, *, head: str = "linear", tag: str = "full",
         fold_version: str = "folds-a", features: str = "birdnet") -> dict:
    return {"head_id": head_id, "head": head, "tag": tag, "features": features, "mode": "full",
            "fold_version": fold_version, "fold_mean": fold_mean, "fold_std": 0.01, "oof_auc": 0.9,
            "config": json.dumps({"head": head, "seed": 0})}


def test_readers_of_an_empty_store_return_nothing(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "store") as store:
        assert latest_row(store, "x") == {} and fold_means(store, ["x"]) == {} and rows_with_tag(store, "t") == []
        assert heads_on_fold_version(store, "folds-a") == [] and best_on(store, head="linear", features="birdnet",
                                                                           fold_version="folds-a") is None


def test_readers_return_the_recorded_rows(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "store") as store:
        record(store, _row("linear-1", 0.80))
        record(store, _row("linear-2", 0.85, tag="selftrain-r1"))
        record(store, _row("lgbm-3", None, head="lgbm"))
        record(store, _row("linear-4", 0.95, fold_version="folds-b"))
        row = latest_row(store, "linear-2")
        assert row["fold_mean"] == pytest.approx(0.85) and row["tag"] == "selftrain-r1" and "per_class" in row
        assert fold_means(store, ["linear-1", "lgbm-3", "nope"]) == {"linear-1": pytest.approx(0.80), "lgbm-3": None}
        assert [(r["head_id"], json.loads(r["config"])["head"]) for r in rows_with_tag(store, "selftrain-r1")] == \
            [("linear-2", "linear")]
        assert heads_on_fold_version(store, "folds-a") == ["linear-2", "linear-1", "lgbm-3"]   # unscored last
        assert best_on(store, head="linear", features="birdnet", fold_version="folds-a") == \
            ("linear-2", pytest.approx(0.85))
        assert resolve_head_id(store, "best") == "linear-4" and resolve_head_id(store, "lgbm-3") == "lgbm-3"
