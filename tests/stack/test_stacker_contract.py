"""The stacker contract: every level-2 model kind (``stack.stackers.PARAMS_BY_KIND``) and the parameter
variants that change its code path pass the same checks, on level-2 inputs built in memory (no store,
no audio): synthetic OOF probabilities of two base sources with class signal, 25 soundscape files of 12
windows at 5 sites, grouped into 5 folds by file.

Checks: shapes and [0, 1]; determinism; save -> load gives bit-equal predictions; the fold-k model never
saw fold k (no fold-k window among its training rows, and its fold-k predictions do not move when every
fold-k label is changed); the level-2 CV scores like a head (the fold mean recomputed with scikit-learn);
and each kind against an independent reference (blend by hand in float64, ridge beating the prior).
A new stacker kind is covered by adding it to ``VARIANTS``; the registry test fails until it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.windows import SOUNDSCAPE, window_id
from stack.bundle import load_stacker, save_stacker
from stack.inputs import StackInputs
from stack.post import logit, sigmoid
from stack.stackers import PARAMS_BY_KIND, cross_validate_stack, fit_stacker, make_stack_params, training_rows

VARIANTS = {   # id -> (kind, overrides): every kind, and the options that take another code path
    "ridge": ("ridge", {"min_positives": 3}),
    "ridge-shared": ("ridge", {"sharing": "shared"}),
    "ridge-per-class": ("ridge", {"sharing": "per_class", "neighbours": False, "file_stats": []}),
    "ridge-site-hour": ("ridge", {"site_prior": True, "hour_prior": True, "min_positives": 3}),
    "blend-prob": ("blend", {"method": "prob"}),
    "blend-logit": ("blend", {"method": "logit", "weights": [2.0, 1.0]}),
    "blend-rank": ("blend", {"method": "rank"}),
}
N_FILES, PER_FILE, C, K = 25, 12, 6, 5


def synthetic_inputs(seed: int = 0) -> StackInputs:
    """Two sources that see the labels through noise (the second noisier, blind to class 5), one class
    that is never positive in a fold, labels that run in bouts along each file, sites with their own rates."""
    rng = np.random.default_rng(seed)
    files = [f"BC2026_Train_{i:04d}_S{1 + i % 5:02d}_20250{1 + i % 9}1{i % 10}_{(i * 7) % 24:02d}0000.ogg"
             for i in range(N_FILES)]
    ids = np.array(sorted(window_id(SOUNDSCAPE, f, 5 * s) for f in files for s in range(PER_FILE)))
    n = len(ids)
    file_index = np.array([files.index(w.split("/", 1)[1].rpartition("@")[0]) for w in ids])
    site_rate = rng.uniform(0.05, 0.35, size=(5, C))
    Y = (rng.random((n, C)) < site_rate[file_index % 5]).astype(np.float32)
    Y[:, 4] = (file_index % 7 == 0) & (rng.random(n) < 0.6)            # a class present in a few files only
    scores = Y * 1.5 + rng.normal(size=(2, n, C)) * np.array([0.6, 1.0])[:, None, None]
    P = sigmoid(scores - 0.8).astype(np.float32)
    available = np.ones((2, C), bool)
    available[1, 5] = False
    P[1, :, 5] = 0.5
    folds = (file_index % K).astype(np.int64)
    folds[file_index == N_FILES - 1] = -1                                # one file in no fold
    hours = np.array([int(w.rsplit("_", 1)[1][:2]) for w in ids], np.int64)
    return StackInputs(ids, ("head-a", "head-b"), [f"c{c}" for c in range(C)],
                       np.array(["Aves", "Aves", "Amphibia", "Amphibia", "Insecta", "Aves"], dtype=object),
                       P, available, Y, folds, np.full(n, SOUNDSCAPE, dtype=object),
                       np.array([f"S{1 + i % 5:02d}" for i in file_index], dtype=object), hours)


@pytest.fixture(scope="module")
def data() -> StackInputs:
    return synthetic_inputs()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, data: StackInputs):
    kind, overrides = VARIANTS[request.param]
    params = make_stack_params(kind, overrides)
    return request.param, kind, params, cross_validate_stack(data, kind, params)


def test_every_stacker_kind_is_in_the_contract() -> None:
    assert {kind for kind, _ in VARIANTS.values()} == set(PARAMS_BY_KIND)


def test_shapes_and_probabilities(variant, data: StackInputs) -> None:
    _, kind, params, cv = variant
    folded = data.folds != -1
    assert cv.oof.shape == (data.n, C)
    assert np.isfinite(cv.oof[folded]).all() and np.isnan(cv.oof[~folded]).all()
    assert cv.oof[folded].min() >= 0.0 and cv.oof[folded].max() <= 1.0
    full = fit_stacker(data, kind, params, training_rows(data, params, exclude_fold=None))
    P = full.predict(data)
    assert P.shape == (data.n, C) and np.isfinite(P).all() and P.min() >= 0.0 and P.max() <= 1.0
    half = np.arange(data.n) % 2 == 0
    assert full.predict(data, half).shape == (int(half.sum()), C)
    np.testing.assert_allclose(full.class_prior, data.Y[training_rows(data, params, None)].mean(axis=0))


def test_deterministic(variant, data: StackInputs) -> None:
    _, kind, params, cv = variant
    again = cross_validate_stack(synthetic_inputs(), kind, params)      # a fresh object: no shared cache
    np.testing.assert_array_equal(again.oof, cv.oof)
    assert again.score.fold_scores == cv.score.fold_scores


def test_save_load_round_trip_is_bit_equal(variant, data: StackInputs, tmp_path: Path) -> None:
    _, kind, params, cv = variant
    for k, fitted in cv.models.items():
        loaded = load_stacker(save_stacker(fitted, tmp_path / f"fold_{k}"))
        assert loaded.kind == fitted.kind and loaded.params == fitted.params
        np.testing.assert_array_equal(loaded.train_windows, fitted.train_windows)
        np.testing.assert_array_equal(loaded.predict(data), fitted.predict(data))
    assert not list(tmp_path.rglob("*.pkl"))


def test_the_fold_k_model_never_saw_fold_k(variant, data: StackInputs) -> None:
    _, kind, params, cv = variant
    assert sorted(cv.models) == list(range(K))
    for k in range(K):
        seen = set(cv.train_windows[k].tolist())
        assert seen and not seen & set(data.window_ids[data.folds == k].tolist())
        assert not seen & set(data.window_ids[data.folds == -1].tolist())
        np.testing.assert_array_equal(np.sort(cv.predicted_windows[k]), data.window_ids[data.folds == k])
    # the strongest form: flip every label of fold 0 and the fold-0 predictions must not move
    flipped = synthetic_inputs()
    flipped.Y[flipped.folds == 0] = 1.0 - flipped.Y[flipped.folds == 0]
    moved = cross_validate_stack(flipped, kind, params)
    held = data.folds == 0
    np.testing.assert_array_equal(moved.oof[held], cv.oof[held])


def test_the_cv_scores_like_a_head(variant, data: StackInputs) -> None:
    """Fold mean = the mean over folds of scikit-learn's macro ROC-AUC on the classes with a positive and a
    negative in that fold (the competition metric, degenerate classes dropped)."""
    _, _, _, cv = variant
    scores = {}
    for k in range(K):
        m = data.folds == k
        Y = data.Y[m]
        keep = (Y.sum(axis=0) > 0) & (Y.sum(axis=0) < m.sum())
        scores[k] = roc_auc_score(Y[:, keep], cv.oof[m][:, keep], average="macro")
    assert cv.score.fold_scores == pytest.approx(scores, abs=1e-12)
    assert cv.fold_mean == pytest.approx(np.mean(list(scores.values())), abs=1e-12)


def test_each_kind_against_an_independent_reference(variant, data: StackInputs) -> None:
    name, kind, params, cv = variant
    held = data.folds == 2
    if kind == "blend":   # a hand-written float64 blend of the available sources
        P = data.P[:, held].astype(np.float64)
        w = np.asarray(params.weights or (1.0, 1.0))[:, None] * data.available
        if params.method == "prob":
            X = P
        elif params.method == "logit":
            X = logit(P)
        else:
            X = np.stack([np.argsort(np.argsort(p, axis=0, kind="stable"), axis=0) + 1.0 for p in P]) / held.sum()
        expected = np.einsum("hnc,hc->nc", X, w) / w.sum(axis=0)
        expected = sigmoid(expected) if params.method == "logit" else expected
        np.testing.assert_allclose(cv.oof[held], expected, rtol=1e-9, atol=1e-12)
    else:                 # ridge learns: it beats the class prior (0.5) and, on these sources, the noisier one
        assert cv.fold_mean > 0.8, f"{name}: fold mean {cv.fold_mean:.3f}"
        noisy = cross_validate_stack(data, "blend", make_stack_params("blend", {"method": "prob", "weights": [0, 1]}))
        assert cv.fold_mean > noisy.fold_mean


def test_bad_parameters_name_the_choices() -> None:
    from featurestore.errors import UserInputError

    with pytest.raises(UserInputError, match="unknown stacker 'svm'"):
        make_stack_params("svm")
    with pytest.raises(UserInputError, match="unknown ridge parameter"):
        make_stack_params("ridge", {"alpah": 1.0})
    with pytest.raises(UserInputError, match="blend: unknown method 'mean'"):
        make_stack_params("blend", {"method": "mean"})
