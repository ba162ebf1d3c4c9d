"""The search log (issue 29): a run's question stored on its experiments rows, pipelines.answer's answer and verdict
beside it, a question of a run that writes no row (pseudo-labels), and what is refused.

Everything on a tiny hand-made store (rows written by models.experiments.record, as every writer does), except the
answer job, run once as a subprocess (and through run_main in-process for its errors). Wall time: ~4 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.errors import StoreError, UserInputError
from featurestore.store import FeatureStore, utc_now
from models.experiments import (
    latest_row,
    record,
    record_answer,
    record_question,
    record_run_question,
    search_log,
    stack_bases,
)

REPO = Path(__file__).resolve().parents[2]


def _row(head_id: str, head: str = "linear", config: dict | None = None) -> dict:
    return {"head_id": head_id, "head": head, "tag": "full", "features": "birdnet", "mode": "full",
            "fold_mean": 0.8, "fold_std": 0.01, "config": json.dumps(config or {"head": head})}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with FeatureStore.open(root) as fs:
        record(fs, _row("linear-a"))
        record(fs, _row("lgbm-b", "lgbm"))
        record(fs, _row("stack-c", "stack", {"head": "stack", "base_heads": ["linear-a", "lgbm-b"]}))
        record(fs, _row("linear-d"))
    return root


def test_question_answer_round_trip_and_a_rerun_keeps_them(store: Path) -> None:
    with FeatureStore.open(store) as fs:
        assert stack_bases(fs, "stack-c") == ["linear-a", "lgbm-b"] and stack_bases(fs, "linear-a") == []
        # a stack's question stays on the stack; with_bases (selftrain's re-trained bases) reaches its bases
        assert record_question(fs, ["stack-c"], "  does ridge beat blend?  ") == ["stack-c"]
        assert latest_row(fs, "linear-a")["question"] is None
        assert record_question(fs, ["stack-c"], "does ridge beat blend?", with_bases=True) == \
            ["stack-c", "linear-a", "lgbm-b"]
        assert latest_row(fs, "lgbm-b")["question"] == "does ridge beat blend?"
        before = utc_now()
        got = record_answer(fs, "stack-c", "ridge +0.012 over blend", "reproduced")
        assert got["question"] == "does ridge beat blend?" and got["verdict"] == "reproduced"
        row = latest_row(fs, "stack-c")
        assert (row["question"], row["answer"], row["verdict"]) == ("does ridge beat blend?", "ridge +0.012 over blend",
                                                                    "reproduced")
        assert row["answered_at"] >= before.replace(microsecond=0)
        # a re-run of the same head id (train resuming, a stack re-run) keeps its question and answer
        record(fs, {**_row("stack-c", "stack"), "fold_mean": 0.81})
        row = latest_row(fs, "stack-c")
        assert row["fold_mean"] == pytest.approx(0.81) and row["answer"] == "ridge +0.012 over blend"
        # a question of a run that writes no experiments row: the pseudo-label version carries it
        record_run_question(fs, "pseudo-0123", "pseudo", "do sharper labels help?")
        record_answer(fs, "pseudo-0123", "no: power 2 lost 0.003", "rejected")
        log = {r["head_id"]: r for r in search_log(fs)}
        assert set(log) == {"stack-c", "linear-a", "lgbm-b", "pseudo-0123"}
        assert (log["pseudo-0123"]["kind"], log["pseudo-0123"]["question"], log["pseudo-0123"]["verdict"]) == \
            ("pseudo", "do sharper labels help?", "rejected")
        assert log["linear-a"]["answer"] is None and log["stack-c"]["kind"] == "stack"


def test_what_is_refused_writes_nothing(store: Path) -> None:
    with FeatureStore.open(store) as fs:
        with pytest.raises(StoreError, match=r"no experiment 'nope' .*pipelines.leaderboard --store"):
            record_question(fs, ["linear-a", "nope"], "q?")
        assert latest_row(fs, "linear-a")["question"] is None          # checked before any row is written
        with pytest.raises(UserInputError, match="--question is empty"):
            record_question(fs, ["linear-a"], "   ")
        with pytest.raises(UserInputError, match="unknown verdict 'maybe'; use one of reproduced, rejected, postponed"):
            record_answer(fs, "linear-a", "x", "maybe")
        with pytest.raises(UserInputError, match="the answer is empty"):
            record_answer(fs, "linear-a", " ")
        with pytest.raises(StoreError, match=r"no experiment 'nope'"):
            record_answer(fs, "nope", "x")
        assert latest_row(fs, "linear-a")["answer"] is None


def test_answer_job(store: Path, capsys: pytest.CaptureFixture) -> None:
    """The job as a subprocess once (the answer recorded and said); an unknown head and a bad verdict refused in one
    line with exit 2 through the same ``run_main`` in-process."""
    from pipelines._cli import run_main
    from pipelines.answer import main

    with FeatureStore.open(store) as fs:
        record_question(fs, ["linear-d"], "does C=0.05 help?")
    ok = subprocess.run([sys.executable, "-m", "pipelines.answer", "--store", str(store), "--head-id", "linear-d",
                         "--verdict", "postponed", "needs the full data"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "answer recorded on linear-d to 'does C=0.05 help?' [postponed]: needs the full data"
    capsys.readouterr()
    for argv, line in (
            (["--head-id", "linear-zz", "x"], f"error: no experiment 'linear-zz' in {store}; list the head ids with "
                                              f"python -m pipelines.leaderboard --store {store}"),
            (["--head-id", "linear-d", "--verdict", "maybe", "x"], "invalid choice: 'maybe'")):
        with pytest.raises(SystemExit) as done:
            run_main(main, ["--store", str(store), "--quiet", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and line in err[-1], err
    with FeatureStore.open(store, read_only=True) as fs:
        row = latest_row(fs, "linear-d")
    assert (row["answer"], row["verdict"]) == ("needs the full data", "postponed")
