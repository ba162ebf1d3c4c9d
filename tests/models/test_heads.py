"""Heads: exactness against scikit-learn, the prior and zero-shot rules, LightGBM, save/load round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from models.heads import (
    HeadError,
    column_mean_std,
    config_hash,
    load_head,
    make_head,
    negative_sample,
    principal_axes,
    undo_negative_sampling,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    n, d, k = 1500, 20, 5
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, k))
    Y = (X @ W + rng.normal(size=(n, k)) * 2 > 2.5).astype(np.float32)
    Y[:, 4] = 0  # a class with no positive
    return X, Y, [f"c{i}" for i in range(k)], [f"f{j}" for j in range(d)]


def test_linear_head_equals_sklearn_per_class_logistic_regression(data) -> None:
    X, Y, classes, feats = data
    head = make_head("linear", classes, feats, {"balanced": False, "C": 0.1, "pca_components": 0,
                                                "max_iter": 1000, "tol": 1e-8}).fit(X, Y)
    Z = StandardScaler().fit_transform(X)
    proba = head.predict_proba(X)
    for c in range(4):
        ref = LogisticRegression(C=0.1, max_iter=2000, tol=1e-10).fit(Z, Y[:, c])
        np.testing.assert_allclose(head.coef_[:, c], ref.coef_[0], atol=1e-4)
        np.testing.assert_allclose(proba[:, c], ref.predict_proba(Z)[:, 1], atol=1e-4)
    # the class without positives predicts its (smoothed) prior everywhere
    assert np.allclose(proba[:, 4], 1.0 / (len(X) + 2))


def test_balanced_linear_head_matches_sklearn_balanced(data) -> None:
    X, Y, classes, feats = data
    head = make_head("linear", classes, feats, {"C": 0.05, "pca_components": 0, "max_iter": 1000,
                                                "tol": 1e-8}).fit(X, Y)
    Z = StandardScaler().fit_transform(X)
    ref = LogisticRegression(C=0.05, class_weight="balanced", max_iter=2000, tol=1e-10).fit(Z, Y[:, 0])
    np.testing.assert_allclose(head.predict_proba(X)[:, 0], ref.predict_proba(Z)[:, 1], atol=1e-4)


def test_prior_head_is_the_weighted_base_rate(data) -> None:
    X, Y, classes, feats = data
    w = np.linspace(0.5, 2.0, len(X))
    proba = make_head("prior", classes, feats).fit(X, Y, w).predict_proba(X[:3])
    expected = ((Y * w[:, None]).sum(0) + 1.0) / (w.sum() + 2.0)
    np.testing.assert_allclose(proba, np.tile(expected, (3, 1)), rtol=1e-6)


def test_zero_shot_uses_matched_logits_and_prior_elsewhere(data) -> None:
    X, Y, classes, _ = data
    feats = ["birdnet_logit:c1", "birdnet_logit:c3", "other"]
    logits = np.array([[0.0, 2.0, 5.0], [-3.0, 1.0, 5.0]])
    head = make_head("zeroshot", classes, feats).fit(np.zeros((len(Y), 3)), Y)
    proba = head.predict_proba(logits)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-6)
    np.testing.assert_allclose(proba[:, 3], 1 / (1 + np.exp(-logits[:, 1])), rtol=1e-6)
    np.testing.assert_allclose(proba[:, 0], (Y[:, 0].sum() + 1) / (len(Y) + 2), rtol=1e-6)
    with pytest.raises(HeadError, match=r"needs a logit feature view \(birdnet_logits, cnn_logits, perch_logits\)"):
        make_head("zeroshot", classes, ["a", "b"]).fit(np.zeros((len(Y), 2)), Y).predict_proba(np.zeros((1, 2)))


def test_lgbm_head_learns_and_handles_empty_classes(data, tmp_path: Path) -> None:
    X, Y, classes, feats = data
    groups = np.arange(len(X)) // 10
    head = make_head("lgbm", classes, feats, {"n_estimators": 60, "n_jobs": 1}).fit(X[:1000], Y[:1000], groups=groups[:1000])
    assert head.constant_classes_ == ["c4"]
    proba = head.predict_proba(X[1000:])
    aucs = [roc_auc_score(Y[1000:, c], proba[:, c]) for c in range(4)]
    # 500 held-out rows: per-class AUC moves by ~0.01 between equally good settings (0.846..0.898 here)
    assert min(aucs) > 0.82 and np.mean(aucs) > 0.85
    loaded = load_head(head.save(tmp_path / "h"))
    np.testing.assert_array_equal(loaded.predict_proba(X[1000:]), proba)


def test_lgbm_pca_projection_is_saved_and_applied_at_predict(data, tmp_path: Path) -> None:
    X, Y, classes, feats = data
    head = make_head("lgbm", classes, feats, {"n_estimators": 30, "n_jobs": 1, "pca_components": 8}).fit(X, Y)
    assert head.components_.shape == (20, 8)
    proba = head.predict_proba(X)
    assert roc_auc_score(Y[:, 0], proba[:, 0]) > 0.8
    loaded = load_head(head.save(tmp_path / "pca"))
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    assert not list((tmp_path / "pca").glob("*.pkl"))


def test_lgbm_classes_trained_in_parallel_equal_one_at_a_time(data, monkeypatch) -> None:
    X, Y, classes, feats = data
    monkeypatch.setattr("models.heads.MIN_NEGATIVES", 100)  # so that some classes train on a subsample
    groups = np.arange(len(X)) // 10
    params = {"n_estimators": 40, "max_bin": 31, "quantized_grad": True, "neg_per_pos": 2.0}
    serial = make_head("lgbm", classes, feats, {**params, "n_jobs": 1}).fit(X, Y, groups=groups)
    parallel = make_head("lgbm", classes, feats, {**params, "n_jobs": 2, "parallel_classes": True}).fit(X, Y, groups=groups)
    assert parallel.models_ == serial.models_ and parallel.constant_classes_ == serial.constant_classes_ == ["c4"]
    np.testing.assert_array_equal(parallel.neg_rate_, serial.neg_rate_)
    assert (serial.neg_rate_ < 1).any() and (serial.neg_rate_ == 1).any()


def test_saved_heads_round_trip_exactly(data, tmp_path: Path) -> None:
    X, Y, classes, feats = data
    for kind in ("prior", "linear"):
        head = make_head(kind, classes, feats).fit(X, Y)
        loaded = load_head(head.save(tmp_path / kind))
        np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
        assert (tmp_path / kind / "head.json").exists() and not list((tmp_path / kind).glob("*.pkl"))


def test_bad_input_and_params_are_clear(data) -> None:
    X, Y, classes, feats = data
    with pytest.raises(HeadError, match="unknown lgbm parameter"):
        make_head("lgbm", classes, feats, {"num_leafs": 3})
    with pytest.raises(HeadError, match="X has 3 features; the head expects 20"):
        make_head("linear", classes, feats).fit(X, Y).predict_proba(X[:, :3])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        make_head("linear", classes, feats).fit(bad, Y)
    with pytest.raises(HeadError, match="Y must be"):
        make_head("prior", classes, feats).fit(X, Y[:, :2])


def test_negative_sample_and_config_hash() -> None:
    y = np.zeros(100_000)
    y[:50] = 1
    rows, rate = negative_sample(y, 20.0, seed=1)
    assert set(np.flatnonzero(y)) <= set(rows) and len(rows) == 50 + 2000  # at least 2,000 negatives
    assert rate == pytest.approx(2000 / 99_950)
    assert np.array_equal(rows, negative_sample(y, 20.0, seed=1)[0]) and np.all(np.diff(rows) > 0)
    y[:5000] = 1
    assert negative_sample(y, 20.0, seed=1) == (None, 1.0)
    assert undo_negative_sampling(np.array([0.5]), 0.1)[0] == pytest.approx(0.05 / 0.55)
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1}) != config_hash({"a": 2})


def test_lgbm_negative_subsampling_keeps_ranking_and_calibration() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30_000, 8))
    y = ((X[:, 0] + rng.normal(size=len(X))) > 3.2).astype(np.float32)  # ~1% positives
    params = {"n_estimators": 60, "n_jobs": 1, "inner_valid_fraction": 0.0}
    full = make_head("lgbm", ["a"], [f"f{j}" for j in range(8)], {**params, "neg_per_pos": 0}).fit(X[:20_000], y[:20_000, None])
    fast = make_head("lgbm", ["a"], [f"f{j}" for j in range(8)], params).fit(X[:20_000], y[:20_000, None])
    assert fast.neg_rate_[0] < 0.25
    p_full, p_fast = full.predict_proba(X[20_000:])[:, 0], fast.predict_proba(X[20_000:])[:, 0]
    assert roc_auc_score(y[20_000:], p_fast) > roc_auc_score(y[20_000:], p_full) - 0.02
    assert p_fast.mean() == pytest.approx(y[20_000:].mean(), rel=0.35)  # the odds correction restores the base rate


def test_pca_linear_head_whitened_solve_keeps_the_sklearn_objective(data) -> None:
    X, Y, classes, feats = data
    head = make_head("linear", classes, feats, {"balanced": False, "C": 0.1, "pca_components": 6,
                                                "max_iter": 500, "tol": 1e-9}).fit(X, Y)
    Z = StandardScaler().fit_transform(X)
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    P = Z @ vt[:6].T
    for c in range(2):
        ref = LogisticRegression(C=0.1, max_iter=2000, tol=1e-10).fit(P, Y[:, c])
        np.testing.assert_allclose(head.predict_proba(X)[:, c], ref.predict_proba(P)[:, 1], atol=1e-4)


def test_pca_linear_head_with_fewer_windows_than_features_keeps_the_objective() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 400))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=80) > 0).astype(np.float32)
    head = make_head("linear", ["a"], [f"f{j}" for j in range(400)],
                     {"pca_components": 256, "balanced": False, "max_iter": 1000, "tol": 1e-9}).fit(X, y[:, None])
    Z = StandardScaler().fit_transform(X)
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    P = Z @ vt[:79].T
    ref = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(P, y)
    np.testing.assert_allclose(head.predict_proba(X)[:, 0], ref.predict_proba(P)[:, 1], atol=1e-3)


def test_chunked_column_stats_match_float64_numpy_with_a_large_offset() -> None:
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(1000, 7)) + 1e4).astype(np.float32)  # float32 sums of squares would lose this
    mean, std = column_mean_std(X, chunk=128)                   # chunks do not divide 1,000
    ref = X.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=0), rtol=1e-9)


def test_gram_principal_axes_span_the_svd_subspace_and_drop_null_directions() -> None:
    rng = np.random.default_rng(6)
    Z = rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40))
    axes = principal_axes(Z, 10)
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    # same subspace: the projectors agree (signs and order inside ties do not matter)
    np.testing.assert_allclose(axes.T @ axes, vt[:10].T @ vt[:10], atol=1e-8)
    wide = rng.normal(size=(30, 100))
    wide -= wide.mean(axis=0)                                    # centred: rank 29
    assert principal_axes(wide, 64).shape == (29, 100)


def test_lgbm_feature_fraction_keeps_a_floor_of_features_per_tree() -> None:
    from models.heads import effective_feature_fraction, make_params

    p = make_params("lgbm")
    assert effective_feature_fraction(p, 1839) == p.feature_fraction == 0.03   # 55 features per tree
    assert effective_feature_fraction(p, 320) == pytest.approx(0.1)           # 32 of 320
    assert effective_feature_fraction(p, 20) == 1.0                            # fewer than the floor: all
    assert effective_feature_fraction(make_params("lgbm", {"feature_fraction": 0.5}), 20) == 1.0
    assert effective_feature_fraction(make_params("lgbm", {"min_features_per_tree": 0}), 20) == 0.03


@pytest.mark.parametrize("kind, params, expected", [
    ("linear", {"balanced": False, "C": 1e6, "pca_components": 0, "max_iter": 500, "tol": 1e-10}, 0.65),
    # balanced: positive mass 0.2*1 + 0.8*3 = 2.6 and negative mass 1.4 are scaled to 2 each: 2 / (2 + 2)
    ("linear", {"balanced": True, "C": 1e6, "pca_components": 0, "max_iter": 500, "tol": 1e-10}, 0.5),
    ("lgbm", {"inner_valid_fraction": 0.0, "n_estimators": 50}, 0.65),
])
def test_soft_targets_hand_worked_two_samples_on_one_point(kind: str, params: dict, expected: float) -> None:
    """Two windows with the same features and soft labels 0.2 (weight 1) and 0.8 (weight 3): the weighted
    soft cross-entropy is minimised by p = (0.2 * 1 + 0.8 * 3) / 4 = 0.65 (no feature can separate them)."""
    X = np.array([[1.0, 2.0], [1.0, 2.0]], np.float32)
    Y = np.array([[0.2], [0.8]], np.float32)
    head = make_head(kind, ["c"], ["f0", "f1"], params).fit(X, Y, np.array([1.0, 3.0]))
    np.testing.assert_allclose(head.predict_proba(X), [[expected], [expected]], atol=1e-4)


@pytest.mark.parametrize("kind, params", [
    ("linear", {"balanced": False, "C": 1e8, "pca_components": 0, "max_iter": 2000, "tol": 1e-12}),
    ("lgbm", {"inner_valid_fraction": 0.0, "n_estimators": 400, "learning_rate": 0.3, "num_leaves": 2,
              "min_child_samples": 1, "min_data_in_bin": 1, "lambda_l2": 0.0, "neg_per_pos": 0.0}),
])
def test_soft_targets_hand_worked_two_separable_samples(kind: str, params: dict) -> None:
    """Two windows the features separate, soft labels 0.2 and 0.9, no regularisation: each window's
    soft cross-entropy is minimised where its probability equals its label."""
    X = np.array([[-1.0], [1.0]], np.float32)
    Y = np.array([[0.2], [0.9]], np.float32)
    head = make_head(kind, ["c"], ["f0"], params).fit(X, Y)
    np.testing.assert_allclose(head.predict_proba(X)[:, 0], [0.2, 0.9], atol=2e-3)
    if kind == "lgbm":
        assert '"objective": "cross_entropy"' in head.models_[0] or "objective=cross_entropy" in head.models_[0]


@pytest.mark.parametrize("balanced", [False, True])
def test_linear_soft_target_equals_its_expected_hard_pair(data, balanced: bool) -> None:
    """A window with soft label q and weight w has the loss of two copies labelled 1 (weight q*w) and
    0 (weight (1-q)*w): the same model. (Weights are normalised by their mean, which halves with twice
    the rows, so the pair's C is halved to keep the objective identical.)"""
    X, _, classes, feats = data
    rng = np.random.default_rng(3)
    Q = rng.beta(0.5, 2.0, size=(len(X), len(classes))).astype(np.float32)
    w = rng.uniform(0.5, 2.0, len(X))
    base = {"balanced": balanced, "pca_components": 0, "max_iter": 2000, "tol": 1e-10}
    soft = make_head("linear", classes, feats, {**base, "C": 0.2}).fit(X, Q, w)
    X2 = np.vstack([X, X])
    Y2 = np.vstack([np.ones_like(Q), np.zeros_like(Q)])
    W2 = np.vstack([Q * w[:, None], (1 - Q) * w[:, None]])
    # per-class row weights: fit the pair class by class (each class has its own pair weights)
    for c in range(len(classes)):
        pair = make_head("linear", [classes[c]], feats, {**base, "C": 0.1}).fit(X2, Y2[:, [c]], W2[:, c])
        np.testing.assert_allclose(pair.coef_[:, 0], soft.coef_[:, c], atol=2e-4)
        np.testing.assert_allclose(pair.predict_proba(X)[:, 0], soft.predict_proba(X)[:, c], atol=1e-4)
