"""The competition metric against sklearn and a hand-worked case; slices, bootstrap and input errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from models.metrics import (
    MetricError,
    bootstrap_ci,
    class_slices,
    competition_auc,
    competition_score,
    evaluate,
    fast_auc,
    fold_mean_std,
    padded_cmap,
    per_class_auc,
    row_slices,
    select_columns,
)


@pytest.fixture(scope="module")
def multilabel() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = (rng.random((300, 12)) < 0.15).astype(int)
    y[:, [2, 7]] = 0                                   # classes with no positive: dropped by the metric
    score = np.round(rng.random(y.shape) + 0.6 * y, 2)  # rounding makes ties
    return y, score


def test_competition_auc_equals_sklearn_on_scored_columns(multilabel):
    y, s = multilabel
    keep = y.sum(axis=0) > 0
    direct = np.mean([roc_auc_score(y[:, c], s[:, c]) for c in np.flatnonzero(keep)])
    assert keep.sum() == 10
    assert competition_auc(y, s) == pytest.approx(direct, abs=1e-12)
    assert competition_auc(y, s) == pytest.approx(roc_auc_score(y[:, keep], s[:, keep], average="macro"), abs=1e-15)
    # the all-zero columns must not change the score, whatever they predict
    s2 = s.copy()
    s2[:, [2, 7]] = np.random.default_rng(0).random((300, 2))
    assert competition_auc(y, s2) == competition_auc(y, s)


def test_hand_worked_three_class_example():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.4, 0.7, 0.2], [0.5, 0.3, 0.9]])
    # class 0: positives {0.9, 0.4} vs negatives {0.2, 0.5}: pairs won 2 + 1 of 4 -> 0.75
    # class 1: positive {0.8} vs negatives {0.1, 0.7, 0.3}: 3 of 3 -> 1.0
    # class 2: no positive -> dropped
    assert competition_auc(y, s) == pytest.approx((0.75 + 1.0) / 2)
    np.testing.assert_allclose(per_class_auc(y, s), [0.75, 1.0, np.nan])


def test_fast_auc_matches_sklearn_with_ties(multilabel):
    y, s = multilabel
    reference = np.array([roc_auc_score(y[:, c], s[:, c]) if 0 < y[:, c].sum() < len(y) else np.nan
                          for c in range(y.shape[1])])
    np.testing.assert_allclose(fast_auc(y, s), reference, atol=1e-12)
    np.testing.assert_allclose(per_class_auc(y, s), reference, atol=1e-15)


@pytest.mark.parametrize(("y", "s", "message"), [
    (np.zeros((4, 3)), np.zeros((4, 2)), "shape mismatch"),
    (np.eye(3), np.array([[0.1, np.nan, 0.2], [0.3, 0.2, 0.1], [0.5, 0.5, 0.5]]), "NaN"),
    (np.array([[0, 2], [1, 0]]), np.zeros((2, 2)), "0/1"),
    (np.zeros((3, 2)), np.zeros((3, 2)), "no class has a positive"),
    (np.ones((3, 1)), np.zeros((3, 1)), "positive in every window"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "2-D"),
])
def test_bad_input_raises_clear_errors(y, s, message):
    with pytest.raises(MetricError, match=message):
        competition_auc(y, s)


def test_nan_error_names_the_class():
    y = np.eye(3)
    s = np.full((3, 3), 0.5)
    s[2, 1] = np.nan
    with pytest.raises(MetricError, match=r"row 2, class 'b' \(column 1\)"):
        competition_auc(y, s, class_names=["a", "b", "c"])


def test_select_columns_rejects_unknown_class():
    m = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(select_columns(m, ["a", "b", "c"], ["c", "a"]), [[2, 0], [5, 3]])
    with pytest.raises(MetricError, match="unknown class column"):
        select_columns(m, ["a", "b", "c"], ["a", "zz"])


def test_padded_cmap_hand_worked():
    y = np.array([[1], [0]])
    s = np.array([[0.2], [0.9]])
    # padded with 5 rows (1, 1.0): ranking 1.0 x5 (hits), 0.9 (miss), 0.2 (hit)
    # AP = (1/6) * (5 * 1 + 6/7) -> precision at each hit: 1,1,1,1,1 then 6/7
    assert padded_cmap(y, s) == pytest.approx((5 + 6 / 7) / 6)


def test_row_slices_and_folds_agree_with_direct_metric(multilabel):
    y, s = multilabel
    folds = np.arange(len(y)) % 3
    table = row_slices(y, s, folds, "fold").to_pylist()
    assert [r["value"] for r in table] == ["0", "1", "2"]
    for r in table:
        m = folds == int(r["value"])
        keep = (y[m].sum(axis=0) > 0) & (y[m].sum(axis=0) < m.sum())
        assert r["auc"] == pytest.approx(roc_auc_score(y[m][:, keep], s[m][:, keep], average="macro"), abs=1e-12)
        assert r["n_windows"] == m.sum()
    mean, std, per_fold = fold_mean_std(y, s, folds)
    assert mean == pytest.approx(np.mean([r["auc"] for r in table]))
    assert std == pytest.approx(np.std([r["auc"] for r in table]))
    assert set(per_fold) == {0, 1, 2}


def test_class_slices_average_their_classes(multilabel):
    y, s = multilabel
    groups = np.array(["Aves"] * 6 + ["Insecta"] * 6)
    rows = {r["value"]: r for r in class_slices(y, s, groups, "class_name").to_pylist()}
    auc = per_class_auc(y, s)
    assert rows["Aves"]["auc"] == pytest.approx(np.nanmean(auc[:6]))
    assert rows["Insecta"]["n_classes"] == int((~np.isnan(auc[6:])).sum())


def test_bootstrap_resamples_whole_files():
    rng = np.random.default_rng(1)
    y = (rng.random((240, 5)) < 0.3).astype(int)
    s = rng.random(y.shape) + 0.5 * y
    files = np.repeat(np.arange(20), 12)
    lo, hi = bootstrap_ci(y, s, files, n_boot=100, seed=0)
    assert lo < competition_auc(y, s) < hi
    assert (lo, hi) == bootstrap_ci(y, s, files, n_boot=100, seed=0)
    # a single file: every resample is that file, so the interval collapses onto the point estimate
    one = bootstrap_ci(y, s, np.zeros(len(y)), n_boot=20, seed=0)
    assert one[0] == pytest.approx(one[1]) == pytest.approx(competition_auc(y, s))


def test_evaluate_report(multilabel):
    y, s = multilabel
    names = [f"c{i}" for i in range(12)]
    report = evaluate(y, s, names, folds=np.arange(len(y)) % 5, sites=np.where(np.arange(300) < 150, "S01", "S22"),
                      hours=np.arange(300) % 24, file_ids=np.arange(300) // 12,
                      train_counts=np.array([0, 3, 5, 9, 10, 50, 99, 100, 500, 1, 2, 7]),
                      taxon_class=["Aves"] * 8 + ["Amphibia"] * 4, n_boot=30)
    assert report.auc == competition_auc(y, s)
    assert report.n_scored_classes == 10
    slices = {(r["slice"], r["value"]) for r in report.slices.to_pylist()}
    assert {("site", "S22"), ("frequency", "rare"), ("frequency", "head"), ("class_name", "Amphibia"),
            ("overlap", ">=3 labels"), ("fold", "4"), ("hour", "night")} <= slices
    assert report.per_class.column("bucket").to_pylist()[:5] == ["rare", "rare", "rare", "rare", "mid"]
    text = report.render()
    assert "pooled AUC" in text and "fold mean" in text and "bootstrap CI" in text


def test_competition_score_matches_rows_by_id(multilabel):
    y, s = multilabel
    names = [f"c{i}" for i in range(12)]
    ids = [f"BC2026_Test_{i // 12:04d}_{(i % 12 + 1) * 5}" for i in range(len(y))]
    solution = pa.table({"row_id": ids, **{n: y[:, i] for i, n in enumerate(names)}})
    order = np.random.default_rng(0).permutation(len(y))            # a submission in another row order
    submission = pa.table({"row_id": [ids[i] for i in order], **{n: s[order, i] for i, n in enumerate(names)}})
    assert competition_score(solution, submission) == competition_auc(y, s)
    with pytest.raises(MetricError, match=r"unknown \['zz'\]"):
        competition_score(solution, submission.append_column("zz", pa.array(np.zeros(len(y)))))
    with pytest.raises(MetricError, match=r"missing \['c3'\]"):
        competition_score(solution, submission.drop_columns(["c3"]))
    with pytest.raises(MetricError, match="solution row_id"):
        competition_score(solution, submission.slice(1))
