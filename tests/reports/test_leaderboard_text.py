"""The leaderboard as text (models.experiments.render, pipelines.leaderboard): the pooled AUC's CI labelled as the
pooled AUC's, a legend of the base/ tag and the rare column, and no column that is empty in every row."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from models.experiments import BOARD_COLUMNS, leaderboard, render
from models.metrics import FREQUENCY_BUCKETS


def board_rows(text: str) -> dict[str, list[dict[str, str]]]:
    """mode -> rows (header -> cell) of a rendered board; columns are separated by two or more spaces."""
    sections: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\[(\w+)\]", line)
        if not m:
            continue
        header = re.split(r"\s{2,}", lines[i + 1].strip())
        rows = []
        for row in lines[i + 2:]:
            if not row.strip():
                break
            cells = re.split(r"\s{2,}", row.strip())
            assert len(cells) == len(header), (header, row)
            rows.append(dict(zip(header, cells, strict=True)))
        sections[m.group(1)] = rows
    return sections


def _row(**values) -> dict:
    return {c: values.get(c) for c in BOARD_COLUMNS}


def test_empty_columns_are_hidden_per_section_and_the_legend_explains_ci_tags_and_rare() -> None:
    rows = [
        _row(rank=1, head_id="linear-aaaa", head="linear", tag="full", mode="full", features="birdnet", fold_mean=0.81234,
             fold_std=0.02, oof_auc=0.85, calibration_gap=0.03766, ci_low=0.83, ci_high=0.871, n_classes_scored=20,
             n_classes_degenerate=1, scored_on="soundscape", n_eval_windows=300),
        _row(rank=2, head_id="prior-bbbb", head="prior", tag="full", mode="full", features="birdnet", fold_mean=0.5,
             fold_std=0.0, oof_auc=0.61, calibration_gap=0.11, n_classes_scored=20, n_classes_degenerate=1,
             scored_on="soundscape", n_eval_windows=300),
        _row(rank=1, head_id="linear-cccc", head="linear", tag="tuned", mode="fast", features="birdnet", fold_mean=0.7),
    ]
    text = render(pa.Table.from_pylist(rows))
    board = board_rows(text)
    full, fast = board["full"], board["fast"]
    # rare and train seconds are NULL in every row: no column; the pooled AUC carries its own CI
    assert list(full[0]) == ["#", "head_id", "tag", "features", "fold mean", "± std", "pooled [95% CI]", "gap", "cls",
                             "degen", "scored on", "windows"]
    assert full[0]["pooled [95% CI]"] == "0.850 [0.830, 0.871]" and full[0]["fold mean"] == "0.8123"
    assert full[1]["pooled [95% CI]"] == "0.610" and full[1]["tag"] == "base/full"   # no CI: none shown
    assert list(fast[0]) == ["#", "head_id", "tag", "features", "fold mean"] and fast[0]["tag"] == "tuned"
    legend = text.split("\n\n")[-1].splitlines()
    assert legend[0].startswith("tag base/...: a baseline head (prior, zero-shot)")
    assert legend[1].startswith("pooled [95% CI]: ") and "not for the fold mean" in legend[1]
    assert not any(line.startswith("rare:") for line in legend)          # no rare column, no words about it
    with_rare = render(pa.Table.from_pylist([{**rows[0], "rare_auc": 0.4567, "head": "lgbm"}]))
    assert board_rows(with_rare)["full"][0]["rare"] == "0.457"
    legend = with_rare.split("\n\n")[-1].splitlines()
    assert legend[-1] == f"rare: macro AUC over the classes with fewer than {FREQUENCY_BUCKETS[0]} focal training windows"
    assert not any(line.startswith("tag base/") for line in legend)    # no baseline on this board


def test_trained_store_board_shows_each_rows_numbers(demo_trained) -> None:
    store: Path = demo_trained.store
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)     # the table, read without our code
    try:
        recorded = {r[0]: r[1:] for r in con.execute(
            "SELECT head_id, head, fold_mean, oof_auc, ci_low, ci_high, rare_auc FROM experiments").fetchall()}
    finally:
        con.close()
    text = leaderboard(store)
    shown = {r["head_id"]: r for r in board_rows(text)["full"]}
    assert set(shown) == set(recorded)
    for head_id, (head, fold_mean, oof, low, high, rare) in recorded.items():
        r = shown[head_id]
        assert r["fold mean"] == f"{fold_mean:.4f}" and r["rare"] == f"{rare:.3f}"
        assert r["pooled [95% CI]"] == f"{oof:.3f} [{low:.3f}, {high:.3f}]"
        assert low <= oof <= high                   # the interval is the pooled AUC's ...
        assert r["tag"].startswith("base/") == (head in ("prior", "zeroshot"))
    assert any(not low <= fm <= high for _, fm, _, low, high, _ in recorded.values()), \
        "precondition: some fold mean lies outside its row's CI (why the column says it is the pooled AUC's)"
    legend = text.split("\n\n")[-1]
    assert "tag base/...:" in legend and "rare: macro AUC" in legend and "pooled [95% CI]:" in legend
    assert "train s" in text                        # filled here: shown
