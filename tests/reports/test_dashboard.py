"""The campaign dashboard (reports/dashboard.py, pipelines/dashboard.py): decisions on a hand-made experiments table,
and the page of the demo store in a real headless Chromium (sections, sorting, cost column, CSV = page)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import StoreError, UserInputError
from featurestore.store import FeatureStore
from models.experiments import annotate, record, record_answer, record_run_question
from reports.dashboard import (
    COLUMNS,
    Best,
    DashboardParams,
    DecisionParams,
    build_dashboard,
    decide,
    pareto_front,
    render_csv,
    render_html,
    worst_slice,
)
from reports.htmlpage import write_page


def _slice(kind: str, value: str, auc: float | None, n_windows: int = 48, n_classes: int = 5) -> dict:
    return {"slice": kind, "value": value, "auc": auc, "n_windows": n_windows, "n_classes": n_classes}


def _row(head_id: str, fold_mean: float | None, fold_std: float | None = 0.01, *, mode: str = "full",
         head: str = "linear", slices: list | None = None) -> dict:
    return {"head_id": head_id, "head": head, "tag": "full", "features": "birdnet", "mode": mode,
            "fold_version": "folds-a", "fold_mean": fold_mean, "fold_std": fold_std, "oof_auc": fold_mean,
            "slices": json.dumps(slices or [])}


TEACHER_SLICES = [_slice("site", "S01", 0.90), _slice("site", "S02", 0.88), _slice("hour", "night", 0.89)]
# the student is 0.005 worse on the headline but 0.10 worse at night: flagged
STUDENT_SLICES = [_slice("site", "S01", 0.895), _slice("site", "S02", 0.875), _slice("hour", "night", 0.79)]


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory) -> Path:
    """A store with only an experiments table: one row per rule, and rows just the other side of each rule
    (read-only: the tests only read it)."""
    store_dir = tmp_path_factory.mktemp("hand_made") / "store"
    with FeatureStore.open(store_dir) as store:
        for row in (
            _row("linear-best", 0.900, 0.010, slices=TEACHER_SLICES),
            _row("linear-weak", 0.880, 0.010),           # < 0.900 - 0.010: prune (no gain measured)
            _row("linear-edge", 0.8901, 0.010),          # just above the floor: test more
            _row("linear-unstable", 0.895, 0.030),       # std 0.030 > 2 x 0.010: replay first
            _row("linear-steady", 0.895, 0.020),         # std exactly 2 x: not replay first
            _row("lgbm-costly", 0.895, 0.010, head="lgbm"),   # 50 Kaggle minutes > 45: watch
            _row("lgbm-cheap", 0.895, 0.010, head="lgbm"),    # 45 minutes: not > 45
            _row("linear-fast", 0.950, 0.010, mode="fast"),   # better, but a subset run: test more, never best
            _row("cnn-weak", 0.850, 0.010, mode="cnn", head="cnn"),   # CNN rows obey the rules: prune
            _row("linear-unscored", None, None),
            _row("linear-student", 0.895, 0.010, slices=STUDENT_SLICES),
        ):
            record(store, row)
        annotate(store, "lgbm-costly", predict_cost={"per_file_s": 2.0, "kaggle_minutes": 50.0})
        annotate(store, "lgbm-cheap", predict_cost={"per_file_s": 1.0, "kaggle_minutes": 45.0})
        annotate(store, "linear-student", teacher_id="linear-best")
        annotate(store, "linear-weak", question="does birdnet alone do?", answer="no: 0.02 below", verdict="rejected")
    return store_dir


def test_each_rule_fires_where_it_should_and_not_elsewhere(hand_made: Path) -> None:
    dash = build_dashboard(hand_made)
    got = {r.head_id: r.decision for r in dash.rows}
    assert got == {"linear-best": "promote", "linear-weak": "prune", "linear-edge": "test more",
                   "linear-unstable": "replay first", "linear-steady": "test more", "lgbm-costly": "watch",
                   "lgbm-cheap": "test more", "linear-fast": "test more", "cnn-weak": "prune",
                   "linear-unscored": "test more", "linear-student": "test more"}
    assert dash.best == Best("linear-best", 0.900, 0.010)
    assert [r.head_id for r in dash.rows][:1] == ["linear-best"] and dash.rows[-1].mode == "fast"  # full first
    # the reason carries the rule's numbers
    assert "0.8800 < 0.8900" in dash.row("linear-weak").reason and "unmeasured" in dash.row("linear-weak").reason
    # the student's night slice dropped 0.10 against a headline drop of 0.005: flagged by models.subgroups
    student = dash.row("linear-student")
    assert student.flagged and student.student_flag.startswith("FLAGGED") and "hour=night +0.1000" in \
        student.student_flag
    assert not dash.row("linear-best").flagged
    # stricter parameters move the rows across (the rules are data)
    assert build_dashboard(hand_made, DashboardParams(DecisionParams(prune_stds=0.0))).row("linear-edge").decision \
        == "prune"
    assert build_dashboard(hand_made, DashboardParams(DecisionParams(watch_share=0.4))).row("lgbm-cheap").decision \
        == "watch"


def test_stack_gain_decides_between_prune_promote_and_test_more() -> None:
    best = Best("b", 0.90, 0.01)
    weak = {"head_id": "w", "mode": "full", "fold_mean": 0.85, "fold_std": 0.01}
    assert decide({**weak, "stack_gain": 0.0}, best)[0] == "prune"
    assert decide({**weak, "stack_gain": 0.01}, best)[0] == "promote"          # weak alone, but it adds to the stack
    assert decide({**weak, "stack_gain": 0.002}, best)[0] == "prune"           # not > 0.002: noise
    assert decide({**weak, "fold_mean": 0.895, "stack_gain": 0.002}, best)[0] == "test more"   # above the floor
    assert decide({**weak, "stack_gain": 0.01, "kaggle_minutes": 80.0}, best)[0] == "watch"
    assert decide({"head_id": "b", "mode": "full", "fold_mean": 0.90, "fold_std": 0.01, "kaggle_minutes": 60.0},
                  best)[0] == "watch"                                            # even the best, when too slow
    with pytest.raises(UserInputError, match="watch_share"):
        DecisionParams(watch_share=-1).check()


def test_worst_slice_and_pareto_front() -> None:
    slices = [_slice("fold", "0", 0.50), _slice("site", "S01", 0.80), _slice("site", "(unknown)", 0.40),
              _slice("hour", "dawn", 0.70, n_windows=5), _slice("overlap", ">=3 labels", 0.75),
              _slice("class_name", "Insecta", 0.60), _slice("site", "S09", None)]
    # fold and taxon slices are not subgroups of windows; unknown, small and undefined slices never count
    assert worst_slice(slices, 0.85) == ("overlap=>=3 labels", 0.75, pytest.approx(-0.10))
    assert worst_slice([_slice("fold", "0", 0.5)], 0.85) is None
    points = [("a", 1.0, 0.90), ("b", 2.0, 0.95), ("c", 2.0, 0.93), ("d", 0.5, 0.80), ("e", 3.0, 0.95)]
    assert pareto_front(points) == {"a", "b", "d"}       # c: b is as cheap and better; e: b is cheaper, as good


def test_an_empty_store_is_one_clear_error(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "store"):
        pass
    with pytest.raises(StoreError, match="run pipelines.train"):
        build_dashboard(tmp_path / "store")


def test_csv_has_one_row_per_head_with_the_decision(hand_made: Path, tmp_path: Path, capsys) -> None:
    from pipelines.dashboard import main

    out = tmp_path / "dash.csv"
    assert main(["--store", str(hand_made), "--out", str(out), "--format", "csv", "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 11
    by_id = {r["head_id"]: r for r in rows}
    assert by_id["lgbm-costly"]["decision"] == "watch" and by_id["lgbm-costly"]["kaggle_minutes"] == "50.0"
    assert by_id["linear-weak"]["verdict"] == "rejected" and by_id["linear-best"]["per_file_s"] == ""
    assert "dashboard written to" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the demo store, in a browser
def _spearman_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over classes (both varying) of scipy's Spearman correlation: the reference for corr_best."""
    from scipy.stats import spearmanr

    vals = [spearmanr(a[:, c], b[:, c])[0] for c in range(a.shape[1])
            if np.ptp(a[:, c]) > 0 and np.ptp(b[:, c]) > 0]
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def demo_page(demo_trained, store_copy, tmp_path_factory):
    """The demo store with costs, a search log and a track annotated; its page and CSV written once."""
    store = store_copy(demo_trained.store, "dashboard")
    linear, lgbm = demo_trained.head("linear"), demo_trained.head("lgbm")
    with FeatureStore.open(store, create=False) as s:
        annotate(s, linear, predict_cost={"per_file_s": 0.412, "kaggle_minutes": 6.5})
        annotate(s, lgbm, predict_cost={"per_file_s": 0.918, "kaggle_minutes": 61.2})
        annotate(s, demo_trained.stack.head_id, predict_cost={"per_file_s": 1.333, "kaggle_minutes": 20.0},
                 track={"track": "safe", "bundle": "/tmp/safe", "kaggle_minutes": 20.0, "exported_at": "now"})
        annotate(s, lgbm, question="do trees beat the linear head?", answer="yes, by 0.01", verdict="reproduced")
        annotate(s, demo_trained.head("classical"), question="classical features?", answer="later",
                 verdict="postponed")
        # a run that writes no experiments row (pseudo): its question and answer are in the log too
        record_run_question(s, "pl-test-version", "pseudo", "do the stack's labels help?")
        record_answer(s, "pl-test-version", "no, noisy below 0.6", verdict="rejected")
    out = tmp_path_factory.mktemp("dash")
    dash = build_dashboard(store)           # once: the page and the CSV of the same rows
    page, csv_path = write_page(out / "dashboard.html", render_html(dash)), write_page(out / "dashboard.csv",
                                                                                        render_csv(dash))
    return store, page, csv_path, dash


def test_numbers_match_independent_references(demo_page, demo_trained) -> None:
    from models.experiments import latest_row
    from stack.bundle import head_config
    from stack.inputs import load_inputs
    from stack.stackers import cross_validate_stack, make_stack_params

    store, _, _, dash = demo_page
    stacks = {demo_trained.stack.head_id, demo_trained.stack_linear.head_id}
    # the better of the two demo stacks is the best row, and the gains are measured against its recipe
    assert dash.best.head_id in stacks and dash.gain_method == "stack" and dash.best_stack == dash.best.head_id
    best = dash.best.head_id
    config = head_config(store, best)
    with FeatureStore.open(store, create=False, read_only=True) as s:
        recorded = latest_row(s, best)["fold_mean"]
    linear, zeroshot = demo_trained.head("linear"), demo_trained.head("zeroshot")
    # correlation with the best: scipy's Spearman per class on the labelled soundscape windows in a fold
    data = load_inputs(store, [best, linear])
    rows = (data.folds >= 0) & (data.source == "train_soundscapes")
    assert dash.row(linear).corr_best == pytest.approx(_spearman_mean(data.P[0][rows], data.P[1][rows]), abs=1e-6)
    assert dash.row(best).corr_best == 1.0 and dash.row(best).stack_gain is None     # a stack is no base head

    def cv(heads: list[str]) -> float:
        inputs = load_inputs(store, heads, zero_shot=config.zero_shot)
        return cross_validate_stack(inputs, config.stacker, make_stack_params(config.stacker, config.params),
                                    config.post).fold_mean

    # a base head: the stack's recorded fold mean minus its recipe without that head; another head: with it, minus
    base = list(config.base_heads)
    assert dash.row(base[-1]).stack_gain == pytest.approx(recorded - cv(base[:-1]), abs=1e-9)
    assert dash.row(zeroshot).stack_gain == pytest.approx(cv([*base, zeroshot]) - recorded, abs=1e-9)


def test_page_in_a_browser(demo_page, demo_trained) -> None:
    from browser import chromium, open_page

    from reports.dashboard import SECTIONS

    _, page, csv_path, dash = demo_page
    with chromium() as driver:
        open_page(driver, page)
        for sid, _ in SECTIONS:
            assert driver.execute_script(f"return !!document.getElementById('{sid}')"), sid
        cells = driver.execute_script(
            "return [...document.querySelectorAll('#models-table tbody tr, #other-table tbody tr')].map(tr => "
            "[...tr.cells].map(td => td.textContent))")
        # the CSV is the page: same rows, same text, same order
        assert [list(r.values()) for r in csv.DictReader(io.StringIO(csv_path.read_text()))] == cells
        col = list(COLUMNS)
        by_id = {row[0]: dict(zip(col, row, strict=True)) for row in cells}
        # the cost column is the stored predict_cost; unmeasured cells are blank and say what to run
        assert by_id[demo_trained.head("lgbm")]["per_file_s"] == "0.918"
        assert by_id[demo_trained.head("lgbm")]["kaggle_minutes"] == "61.2"
        assert by_id[demo_trained.head("lgbm")]["decision"] == "watch"
        prior = demo_trained.head("prior")
        assert by_id[prior]["per_file_s"] == "" and driver.execute_script(
            f"return getComputedStyle(document.querySelector(\"tr[data-head='{prior}'] td.per-file-s\"), "
            "'::after').content") == '"run with --audio"'
        # sorting: a click on fold_mean orders the rows ascending, a second descending
        i = col.index("fold_mean")
        th = f"document.querySelectorAll('#models-table thead th')[{i}]"
        order = f"return [...document.querySelectorAll('#models-table tbody tr')].map(tr => tr.cells[{i}].textContent)"
        driver.execute_script(f"{th}.click()")
        up = driver.execute_script(order)
        driver.execute_script(f"{th}.click()")
        down = driver.execute_script(order)
        values = [float(v) for v in up if v]
        assert values == sorted(values) and [float(v) for v in down if v] == sorted(values, reverse=True)
        assert up != [r[i] for r in cells if by_id[r[0]]["mode"] == "full"]      # the click did reorder the rows
        # the plot: one point per measured row, the Pareto front marked; the search log, ideas and tracks
        points = driver.execute_script("return [...document.querySelectorAll('#pareto-plot circle')].map(c => "
                                       "[c.dataset.head, c.classList.contains('pareto')])")
        # linear is the cheapest and the stack the best: both on the front; lgbm only if it beats linear
        lgbm_on_front = dash.row(demo_trained.head("lgbm")).fold_mean > dash.row(demo_trained.head("linear")).fold_mean
        assert sorted(points) == sorted([[demo_trained.head("linear"), True], [demo_trained.head("lgbm"), lgbm_on_front],
                                         [demo_trained.stack.head_id, True]])
        assert driver.execute_script("return document.querySelectorAll('#search-log-table tbody tr').length") == 3
        ideas = driver.execute_script("return Object.fromEntries([...document.querySelectorAll('ul.ideas')].map("
                                      "u => [u.dataset.verdict, u.querySelectorAll('li:not(.none)').length]))")
        assert ideas == {"reproduced": 1, "rejected": 1, "postponed": 1}
        assert driver.execute_script("return document.querySelector('#tracks-table tbody tr').dataset.track") == "safe"


def test_audio_measures_the_unmeasured_rows_with_the_planner(demo_trained, demo_data, store_copy, tmp_path: Path,
                                                            capsys) -> None:
    """--audio stores submit.plan's measurement on the rows without a cost; the page's cost column is that."""
    from models.experiments import latest_row
    from pipelines.dashboard import main

    store = store_copy(demo_trained.store, "dashboard-audio")
    classical = demo_trained.head("classical")
    with FeatureStore.open(store, create=False) as s:    # every other row measured already: only classical runs
        for head_id in [r["head_id"] for r in s.sql("SELECT head_id FROM experiments").to_pylist()]:
            if head_id != classical:
                annotate(s, head_id, predict_cost={"per_file_s": 9.0, "kaggle_minutes": 99.0})
    out = tmp_path / "dash.csv"
    assert main(["--store", str(store), "--out", str(out), "--format", "csv", "--audio",
                 str(demo_data / "train_soundscapes"), "--measure-files", "1", "--no-scaling", "--no-gain",
                 "--quiet"]) == 0
    assert "predict cost measured for 1 head(s)" in capsys.readouterr().out
    with FeatureStore.open(store, create=False, read_only=True) as s:
        stored = json.loads(latest_row(s, classical)["predict_cost"])
    row = next(r for r in csv.DictReader(io.StringIO(out.read_text())) if r["head_id"] == classical)
    assert stored["n_files"] == 600 and stored["measured_files"] and stored["per_file_s"] > 0
    assert (row["per_file_s"], row["kaggle_minutes"], row["stack_gain"]) == \
        (f"{stored['per_file_s']:.3f}", f"{stored['kaggle_minutes']:.1f}", "")
