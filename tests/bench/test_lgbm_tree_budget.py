"""bench/lgbm_tree_budget.py on the demo's trained LightGBM head: with every tree kept it reproduces the fold mean
training recorded (so the cut models are scored as training scores them), and fewer trees mean fewer trees."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("lgbm_tree_budget", REPO / "bench" / "lgbm_tree_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_all_trees_reproduce_the_recorded_fold_mean(demo_trained, capsys) -> None:
    result = demo_trained.results["lgbm"]
    assert _bench().main(["--store", str(demo_trained.store), "--head-id", result.head_id,
                          "--trees", "1,10,100000", "--teacher-s", "100"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"K=\s*(\d+): +([\d,]+) trees a fold .*fold mean ([\d.]+) \+/- [\d.]+; teacher +(\d+) s", out)
    assert [int(k) for k, *_ in rows] == [1, 10, 100000]
    trees = [float(t.replace(",", "")) for _, t, _, _ in rows]
    assert trees[0] < trees[1] < trees[2]
    assert float(rows[-1][2]) == pytest.approx(result.fold_mean, abs=5e-5) and rows[-1][3] == "100"
    assert float(rows[0][2]) != float(rows[-1][2])
