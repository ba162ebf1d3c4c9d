"""LGBMHead's two fast prediction paths against the per-class path, on real fitted heads: the compiled tree
walk (models.tree_walk, the default) and the merged models (a few multi-output LightGBM models built from
the per-class models at load; the fallback when numba is missing or a model needs LightGBM's predictor).

The reference is :meth:`models.heads.LGBMHead._predict_per_class`: one ``lightgbm.Booster`` per class built
from the class's saved model text, one predict call each (the path before the merge). Merged and per-class
must agree bit for bit: the raw scores (LightGBM sums the same trees in the same order), hence the
probabilities. The classes have different tree counts (one stopped after a single tree) so the merged models
are padded, and two classes are constant (no booster: the prior).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

import models.heads
from models.heads import (
    MAX_GROUP_TREES,
    LGBMHead,
    inner_split,
    load_head,
    make_head,
    merge_groups,
    model_sigmoid,
    parse_model_text,
)
from models.tree_walk import compiled, tree_table, walk

N_ROWS, N_FEATURES, N_CLASSES = 4000, 16, 12     # > MIN_NEGATIVES negatives in training: neg_per_pos samples
PARAMS = {"n_estimators": 60, "learning_rate": 0.3, "num_leaves": 7, "neg_per_pos": 5.0, "n_jobs": 2,
          "early_stopping_rounds": 5, "inner_valid_fraction": 0.2}
STOPPED_CLASS, EMPTY_CLASS, FULL_CLASS = 9, 10, 11


def task(soft: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels with a different signal strength per class (so different tree counts), groups."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N_ROWS, N_FEATURES)).astype(np.float32)
    Y = np.zeros((N_ROWS, N_CLASSES), np.float32)
    for c in range(STOPPED_CLASS):
        score = X[:, c] * (0.5 + c) + X[:, c + 1] * X[:, c + 2] + rng.standard_normal(N_ROWS)
        Y[:, c] = score > np.quantile(score, 0.97 - 0.01 * c)
    groups = np.arange(N_ROWS) // 12
    # the inner early-stopping rows see the opposite rule: every tree after the first makes them worse
    valid = inner_split(N_ROWS, groups, PARAMS["inner_valid_fraction"], 0)
    Y[:, STOPPED_CLASS] = np.where(valid, X[:, 3] < -1.9, X[:, 3] > 1.9)
    Y[:, FULL_CLASS] = 1.0                                 # EMPTY_CLASS stays all 0
    if soft:   # pseudo-label-like targets: cross_entropy models (no sigmoid parameter)
        Y[:, :EMPTY_CLASS] = Y[:, :EMPTY_CLASS] * 0.9 + rng.random((N_ROWS, EMPTY_CLASS)) * 0.04
    return X, Y, groups


@pytest.fixture(scope="module", params=[False, True], ids=["binary", "soft"])
def fitted(request) -> tuple[LGBMHead, np.ndarray]:
    X, Y, groups = task(request.param)
    head = make_head("lgbm", [f"c{i}" for i in range(N_CLASSES)], [f"f{i}" for i in range(N_FEATURES)], PARAMS)
    return head.fit(X, Y, groups=groups), X


def tree_counts(head: LGBMHead) -> dict[int, int]:
    return {c: lgb.Booster(model_str=text).num_trees() for c, text in head.models_.items()}


def test_the_fixture_covers_padding_sampling_and_constant_classes(fitted) -> None:
    head, _ = fitted
    counts = tree_counts(head)
    assert set(counts) == set(range(N_CLASSES)) - {EMPTY_CLASS, FULL_CLASS}
    assert head.constant_classes_ == [f"c{EMPTY_CLASS}", f"c{FULL_CLASS}"]
    assert counts[STOPPED_CLASS] == 1 and len(set(counts.values())) >= 5
    if not any("cross_entropy" in t for t in head.models_.values()):
        assert (head.neg_rate_[list(counts)] < 1).all()      # odds corrected per class
    merged = head._load_boosters()
    assert 1 < len(merged) < len(counts)                    # several merged models, fewer than classes
    assert sorted(c for m in merged for c in m.classes) == sorted(counts)
    assert any(len({counts[c] for c in m.classes}) > 1 for m in merged)   # some padding happens


def fast_path(head: LGBMHead, path: str, Xq: np.ndarray) -> np.ndarray:
    if path == "walk":
        assert head._walk_table()[1] is not None     # the walk is really taken
        return head.predict_proba(Xq)
    return head._predict_merged(Xq, np.tile(head.prior_.astype(np.float32), (len(Xq), 1)))


@pytest.mark.parametrize("path", ["walk", "merged"])
@pytest.mark.parametrize("rows", [1, 7, 4000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_paths_equal_the_per_class_path_bit_for_bit(fitted, path: str, rows: int, dtype) -> None:
    head, X = fitted
    Xq = np.random.default_rng(rows).standard_normal((rows, N_FEATURES)).astype(dtype) * 1.5
    Xq[:, 0] = X[:rows, 0]
    Xq[:, 1] = np.round(Xq[:, 1], 1)          # values on and near split thresholds
    merged, reference = fast_path(head, path, Xq), head._predict_per_class(Xq)
    assert merged.dtype == reference.dtype == np.float32 and merged.shape == (rows, N_CLASSES)
    assert np.array_equal(merged, reference)
    for c in (EMPTY_CLASS, FULL_CLASS):
        assert np.array_equal(merged[:, c], np.full(rows, head.prior_[c], np.float32))


def test_merged_raw_scores_are_each_models_own(fitted) -> None:
    """The merge itself: output k of a merged model is class k's raw score, bit for bit; and our sigmoid
    is LightGBM's own transform to a few ulp (numpy's exp is a SIMD one, LightGBM's libm's: 2 ulp seen with
    numpy 2.4.6 on AVX-512; both of our paths use the same numpy transform, so they agree bit for bit)."""
    head, X = fitted
    for merged in head._load_boosters():
        raw = merged.booster.predict(X, raw_score=True).reshape(len(X), -1)
        for k, c in enumerate(merged.classes):
            own = lgb.Booster(model_str=head.models_[c])
            assert np.array_equal(raw[:, k], own.predict(X, raw_score=True))
            np.testing.assert_array_max_ulp(model_sigmoid(raw[:, k], merged.sigmoid[k]), own.predict(X), maxulp=4)


def test_loading_leaves_the_saved_folder_as_it_was(fitted, tmp_path: Path) -> None:
    head, X = fitted
    folder = head.save(tmp_path / "head")

    def digest() -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest()
    assert sorted(p.name for p in (folder / "lgbm").iterdir()) == [f"class_{c:04d}.txt" for c in sorted(head.models_)]
    loaded = load_head(folder)
    assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert loaded.models_ == head.models_ and digest() == before


def test_merge_groups_partition_and_cap() -> None:
    rng = np.random.default_rng(0)
    trees = rng.integers(1, 201, 234).tolist()
    groups = merge_groups(trees, 1024)
    assert sorted(i for g in groups for i in g) == list(range(234))
    assert all(max(trees[i] for i in g) * len(g) <= MAX_GROUP_TREES for g in groups if len(g) > 1)
    assert merge_groups([7, 7, 7], 16) == [[0, 1, 2]]       # equal counts, no padding: one model
    assert merge_groups([], 16) == []


def test_parse_model_text_reads_every_tree(fitted) -> None:
    head, _ = fitted
    for text in head.models_.values():
        parsed = parse_model_text(text)
        assert len(parsed.trees) == lgb.Booster(model_str=text).num_trees()
        assert parsed.sigmoid == 1.0 and all(t.startswith("num_leaves=") for t in parsed.trees)


# ---------------------------------------------------------------------------- the compiled walk
def test_the_walk_gives_each_models_raw_score_on_thresholds_and_nans(fitted) -> None:
    """Raw scores of models.tree_walk against each class's own Booster, with rows exactly on split
    thresholds (where ``<=`` vs ``<`` matters), NaN and infinite features, and 1 or 2 threads."""
    head, X = fitted
    classes = sorted(head.models_)
    table = tree_table([head.models_[c] for c in classes])
    assert table is not None and table.n_outputs == len(classes) and table.n_features == N_FEATURES
    rng = np.random.default_rng(3)
    inner = np.flatnonzero(np.isfinite(table.threshold))
    Xq = X[:600].copy()
    for r in range(300):         # row r puts one split's feature on its threshold, rounded to float32 either way
        i = inner[r % len(inner)]
        Xq[r, table.feature[i]] = np.nextafter(np.float32(table.threshold[i]), np.float32(np.inf * (r % 2 - 0.5)))
    Xq[300:400, rng.integers(0, N_FEATURES, 100)] = np.nan
    Xq[400:420, 2] = np.inf
    Xq[420:440, 3] = -np.inf
    for threads in (1, 2):
        raw = walk(Xq, table, n_threads=threads)
        for k, c in enumerate(classes):
            assert np.array_equal(raw[:, k], lgb.Booster(model_str=head.models_[c]).predict(Xq, raw_score=True)), c


def test_one_leaf_trees_and_models_that_need_lightgbm() -> None:
    """A one-leaf tree is its leaf value; a model with a categorical split or a NaN missing type gets no
    table (the head then predicts through LightGBM, still equal to the per-class path)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((600, 4))
    y = (X[:, 0] > 0.3).astype(float)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 4, "min_data_in_leaf": 5, "seed": 0}
    const = lgb.train(params, lgb.Dataset(np.ones((600, 4)), y), num_boost_round=3).model_to_string()
    plain = lgb.train(params, lgb.Dataset(X, y), num_boost_round=5).model_to_string()
    table = tree_table([const, plain])
    assert set(table.depth[table.output == 0]) == {0}
    nothing = tree_table([])                         # a head whose classes are all constant: no trees
    assert len(nothing.root) == len(nothing.depth) == 0 and walk(X.astype(np.float32), nothing).shape == (600, 0)
    raw = walk(X.astype(np.float32), table)
    assert np.array_equal(raw[:, 0], lgb.Booster(model_str=const).predict(X.astype(np.float32), raw_score=True))
    assert np.array_equal(raw[:, 1], lgb.Booster(model_str=plain).predict(X.astype(np.float32), raw_score=True))
    Xnan = X.copy()
    Xnan[::7, 0] = np.nan
    with_nan = lgb.train(params, lgb.Dataset(Xnan, y), num_boost_round=5).model_to_string()
    cat = rng.integers(0, 5, 600)
    categorical = lgb.train({**params, "min_data_per_group": 5, "cat_smooth": 1},
                            lgb.Dataset(np.c_[X[:, 1:], cat], np.isin(cat, [1, 3]).astype(float),
                                        categorical_feature=[3]), num_boost_round=5).model_to_string()
    assert any(not t.startswith("num_leaves=1") and "num_cat=0" not in t for t in parse_model_text(categorical).trees)
    assert tree_table([plain, with_nan]) is None and tree_table([categorical]) is None


def test_a_head_predicts_the_same_without_numba(fitted, monkeypatch) -> None:
    """With numba missing the head falls back to LightGBM's merged models: the same probabilities."""
    head, X = fitted
    walked = head.predict_proba(X[:500])
    assert compiled() is not None
    monkeypatch.setattr(models.heads, "compiled", lambda: None)
    head._walk = None
    try:
        assert head._walk_table()[1] is None
        assert np.array_equal(head.predict_proba(X[:500]), walked)
    finally:
        head._walk = None
