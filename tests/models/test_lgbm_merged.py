"""LGBMHead's merged prediction (a few multi-output LightGBM models built from the per-class models at load)
against the per-class path, on real fitted heads.

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


@pytest.mark.parametrize("rows", [1, 7, 4000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merged_equals_the_per_class_path_bit_for_bit(fitted, rows: int, dtype) -> None:
    head, X = fitted
    Xq = np.random.default_rng(rows).standard_normal((rows, N_FEATURES)).astype(dtype) * 1.5
    Xq[:, 0] = X[:rows, 0]
    merged, reference = head.predict_proba(Xq), head._predict_per_class(Xq)
    assert merged.dtype == reference.dtype == np.float32 and merged.shape == (rows, N_CLASSES)
    assert np.array_equal(merged, reference)
    for c in (EMPTY_CLASS, FULL_CLASS):
        assert np.array_equal(merged[:, c], np.full(rows, head.prior_[c], np.float32))


def test_merged_raw_scores_are_each_models_own(fitted) -> None:
    """The merge itself: output k of a merged model is class k's raw score, bit for bit; and our sigmoid
    is LightGBM's own transform (to the ulp: numpy's exp may be a SIMD one)."""
    head, X = fitted
    for merged in head._load_boosters():
        raw = merged.booster.predict(X, raw_score=True).reshape(len(X), -1)
        for k, c in enumerate(merged.classes):
            own = lgb.Booster(model_str=head.models_[c])
            assert np.array_equal(raw[:, k], own.predict(X, raw_score=True))
            np.testing.assert_array_max_ulp(model_sigmoid(raw[:, k], merged.sigmoid[k]), own.predict(X), maxulp=1)


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
