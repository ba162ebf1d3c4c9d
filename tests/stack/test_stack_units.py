"""Level-2 inputs, the ridge and the blends on small synthetic cases with independent references."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from featurestore.errors import DataError, UserInputError
from stack.inputs import FeatureParams, align_oof, base_features, head_correlation, prior_features
from stack.stackers import (
    BlendParams,
    RidgeParams,
    RidgeStacker,
    blend,
    cross_validate_stack,
    fit_stacker,
    make_stack_params,
    training_rows,
)

SCAPE = "train_soundscapes"
REPO = Path(__file__).resolve().parents[2]


def oof_table(head: str, ids: list[str], folds: list[int], classes: list[str], values: np.ndarray) -> pa.Table:
    cols = {"window_id": pa.array(ids), "head_id": pa.array([head] * len(ids)), "fold": pa.array(folds, pa.int32()),
            "source": pa.array([w.split("/")[0] for w in ids])}
    for c, name in enumerate(classes):
        cols[name] = pa.array(values[:, c].astype(np.float32))
    return pa.table(cols)


IDS = [f"{SCAPE}/a.ogg@0", f"{SCAPE}/a.ogg@5", f"{SCAPE}/b.ogg@0"]
CLASSES = ["x", "y"]
LABELS = {IDS[0]: ["x"], IDS[1]: [], IDS[2]: ["y"]}


def two_heads(**changes) -> dict[str, pa.Table]:
    v = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    tables = {"h1": oof_table("h1", IDS, [0, 0, 1], CLASSES, v), "h2": oof_table("h2", IDS, [0, 0, 1], CLASSES, v / 2)}
    tables.update(changes)
    return tables


# ---------------------------------------------------------------------------- alignment
def test_alignment_sorts_by_window_and_keeps_the_stored_values() -> None:
    v = np.array([[0.5, 0.6], [0.1, 0.2], [0.3, 0.4]])
    shuffled = oof_table("h2", [IDS[2], IDS[0], IDS[1]], [1, 0, 0], ["y", "x"], v[:, ::-1])
    data = align_oof({"h1": two_heads()["h1"], "h2": shuffled}, CLASSES, ["Aves", "Insecta"], LABELS)
    assert data.window_ids.tolist() == sorted(IDS) and data.heads == ("h1", "h2")
    assert data.P[1] == pytest.approx(np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]))
    assert data.Y.tolist() == [[1, 0], [0, 0], [0, 1]] and data.folds.tolist() == [0, 0, 1]


def test_tables_that_disagree_are_refused_naming_head_and_window() -> None:
    v = np.full((3, 2), 0.5)
    with pytest.raises(DataError, match=r"window train_soundscapes/b.ogg@0 is in fold 1 for head h1 but fold 2 for "
                                        r"head h2 \(1 window\(s\) disagree\)"):
        align_oof(two_heads(h2=oof_table("h2", IDS, [0, 0, 2], CLASSES, v)), CLASSES, ["Aves"] * 2, LABELS)
    with pytest.raises(DataError, match=r"head h2 has no OOF row for window train_soundscapes/a.ogg@5"):
        align_oof(two_heads(h2=oof_table("h2", [IDS[0], IDS[2]], [0, 1], CLASSES, v[:2])), CLASSES, ["Aves"] * 2,
                  LABELS)
    with pytest.raises(DataError, match=r"head h2: OOF class columns differ from the taxonomy: missing \['y'\], "
                                        r"unknown \['z'\]"):
        align_oof(two_heads(h2=oof_table("h2", IDS, [0, 0, 1], ["x", "z"], v)), CLASSES, ["Aves"] * 2, LABELS)
    with pytest.raises(DataError, match=r"head h1: window train_soundscapes/a.ogg@0 appears more than once"):
        align_oof({"h1": oof_table("h1", IDS + IDS[:1], [0, 0, 1, 0], CLASSES, np.full((4, 2), 0.5))}, CLASSES,
                  ["Aves"] * 2, LABELS)
    bad = np.full((3, 2), 0.5)
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match=r"head h2: OOF value for window train_soundscapes/a.ogg@5, class y is not "
                                        "finite"):
        align_oof(two_heads(h2=oof_table("h2", IDS, [0, 0, 1], CLASSES, bad)), CLASSES, ["Aves"] * 2, LABELS)
    with pytest.raises(DataError, match=r"window train_soundscapes/b.ogg@0 has OOF predictions but no labels"):
        align_oof(two_heads(), CLASSES, ["Aves"] * 2, {k: v for k, v in LABELS.items() if k != IDS[2]})


def test_zero_shot_source_covers_only_its_matched_classes() -> None:
    z_ids = list(reversed(IDS)) + [f"{SCAPE}/c.ogg@0"]
    Z = np.array([[1.0, 9.0], [2.0, 9.0], [-1.0, 9.0], [0.0, 0.0]])           # columns: label x, a non-class
    data = align_oof(two_heads(), CLASSES, ["Aves"] * 2, LABELS, zero_shot={"zs": (z_ids, Z, ["x", "unrelated"])})
    assert data.heads == ("h1", "h2", "zs") and data.available[2].tolist() == [True, False]
    assert data.P[2][:, 0] == pytest.approx(1 / (1 + np.exp(-np.array([-1.0, 2.0, 1.0]))))
    with pytest.raises(DataError, match=r"zero-shot source zs: no logits for window train_soundscapes/a.ogg@0"):
        align_oof(two_heads(), CLASSES, ["Aves"] * 2, LABELS,
                  zero_shot={"zs": (z_ids[:2] + z_ids[3:], Z[[0, 1, 3]], ["x", "u"])})


# ---------------------------------------------------------------------------- features
def test_context_and_file_features_by_hand() -> None:
    ids = [f"{SCAPE}/f.ogg@{s}" for s in (0, 5, 10)] + [f"{SCAPE}/g.ogg@0"]
    z = np.array([1.0, -2.0, 3.0, 0.5])
    p = 1 / (1 + np.exp(-z))
    data = align_oof({"h": oof_table("h", ids, [0, 0, 0, 1], ["x"], p[:, None])}, ["x"], ["Aves"],
                     {w: [] for w in ids})
    F, names = base_features(data, FeatureParams(top_k=2))
    assert names == ["h", "h:prev", "h:next", "h:file_max", "h:file_mean", "h:file_topk"]
    expected = [[1.0, 1.0, -2.0, 3.0, 2 / 3, 2.0],       # f@0: prev repeats itself; top-2 of (1, -2, 3) = 2
                [-2.0, 1.0, 3.0, 3.0, 2 / 3, 2.0],
                [3.0, -2.0, 3.0, 3.0, 2 / 3, 2.0],
                [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]          # a one-window file
    order = [data.window_ids.tolist().index(w) for w in ids]      # rows are sorted by id: "@10" before "@5"
    assert F[order, 0, :] == pytest.approx(np.array(expected), abs=1e-5)


def test_site_and_hour_priors_by_hand_from_training_rows_only() -> None:
    ids = [f"{SCAPE}/s1_{i}.ogg@0" for i in range(3)] + [f"{SCAPE}/s2_{i}.ogg@0" for i in range(2)] + \
        ["train_audio/x/clip.ogg@0"]
    meta = {w.split("@")[0]: ("S1" if "s1_" in w else "S2", 3 if "s1_" in w else 4) for w in ids[:5]}
    labels = {ids[0]: ["x"], ids[1]: ["x"], ids[2]: [], ids[3]: [], ids[4]: ["x"], ids[5]: ["x"]}
    tables = {"h": oof_table("h", ids, [0] * 6, ["x"], np.full((6, 1), 0.5))}
    data = align_oof(tables, ["x"], ["Aves"], labels, file_meta=meta)
    train = np.isin(data.window_ids, ids[:4])
    G, names = prior_features(data, train, FeatureParams(site_prior=True, hour_prior=True, prior_strength=2.0))
    assert names == ["site_prior", "hour_prior"]
    # training rows with a site: 4, 2 positives -> rate (2+1)/(4+2) = 0.5
    # S1: (2 + 2*0.5) / (3 + 2) = 0.6; S2 (one training row, no positive): (0 + 1) / (1 + 2) = 1/3; no site: 0.5
    row = {w: i for i, w in enumerate(data.window_ids.tolist())}
    expect = {ids[0]: 0.6, ids[2]: 0.6, ids[3]: 1 / 3, ids[4]: 1 / 3, ids[5]: 0.5}
    for w, p in expect.items():
        assert G[row[w], 0, 0] == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
        assert G[row[w], 0, 1] == pytest.approx(G[row[w], 0, 0], abs=1e-6)        # hours follow the sites here
    # labels outside the training rows are never read
    data.Y[row[ids[4]]] = 0.0
    data.Y[row[ids[5]]] = 0.0
    assert np.array_equal(prior_features(data, train, FeatureParams(site_prior=True, prior_strength=2.0))[0][:, :, 0],
                          G[:, :, 0])


# ---------------------------------------------------------------------------- ridge
def _problem(seed: int = 0, m: int = 80, C: int = 5, k: int = 4):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(m, C, k)).astype(np.float32)
    Y = (F[:, :, 0] + 0.5 * F[:, :, 1] + rng.normal(size=(m, C)) > 1.0).astype(np.float32)
    return F, Y


def _ridge(groups, **kw) -> RidgeStacker:
    k = kw.pop("k", 4)
    return RidgeStacker(RidgeParams(**kw), [f"f{i}" for i in range(k)], np.ones((len(groups), k), bool), groups)


def test_per_class_ridge_without_penalty_is_per_class_least_squares() -> None:
    F, Y = _problem()
    groups = ["Aves", "Aves", "Insecta", "Insecta", "Insecta"]
    model = _ridge(groups, sharing="per_class", alpha=0.0).fit(F, Y)
    for c in range(F.shape[1]):
        X = np.column_stack([F[:, c, :].astype(np.float64), np.ones(len(F))])
        beta = np.linalg.lstsq(X, Y[:, c], rcond=None)[0]
        assert model.decision(F)[:, c] == pytest.approx(X @ beta, abs=1e-9)


def test_shared_ridge_without_penalty_is_pooled_least_squares_with_group_intercepts() -> None:
    F, Y = _problem(1)
    groups = ["Aves", "Aves", "Insecta", "Insecta", "Mammalia"]
    model = _ridge(groups, sharing="shared", alpha_shared=0.0).fit(F, Y)
    m, C, k = F.shape
    onehot = np.array([[g == name for name in ("Aves", "Insecta", "Mammalia")] for g in groups], dtype=np.float64)
    X = np.concatenate([F.astype(np.float64).reshape(m * C, k), np.tile(onehot, (m, 1))], axis=1)
    beta = np.linalg.lstsq(X, Y.reshape(-1), rcond=None)[0]
    assert model.decision(F).reshape(-1) == pytest.approx(X @ beta, abs=1e-9)
    assert np.allclose(model.coef_, model.coef_[0])           # one weight vector for every class


def test_strong_shrinkage_gives_the_shared_weights_and_weights_equal_duplicated_rows() -> None:
    F, Y = _problem(2)
    groups = ["Aves"] * 5
    shrunk = _ridge(groups, alpha=1e9, min_positives=1).fit(F, Y)
    shared = _ridge(groups, sharing="shared").fit(F, Y)
    assert shrunk.own_weights_.all() and np.allclose(shrunk.coef_, shared.coef_, atol=1e-7)
    loose = _ridge(groups, alpha=0.3, min_positives=3).fit(F, Y)
    assert not np.allclose(loose.coef_, shared.coef_, atol=1e-3)
    w = np.ones(len(F))
    w[:10] = 2.0
    weighted = _ridge(groups, alpha=0.3, min_positives=3).fit(F, Y, w)
    duplicated = _ridge(groups, alpha=0.3, min_positives=3).fit(np.concatenate([F, F[:10]]),
                                                               np.concatenate([Y, Y[:10]]))
    assert np.allclose(weighted.coef_, duplicated.coef_, atol=1e-10)
    assert np.allclose(weighted.intercept_, duplicated.intercept_, atol=1e-10)


def test_cross_validated_ridge_equals_a_direct_fit_on_the_training_rows() -> None:
    """The CV path sums cached per-fold moments and adds the fold's priors: it must equal fitting the
    concatenated features of exactly the training rows."""
    rng = np.random.default_rng(4)
    files = [f"s{f % 3}_{f}.ogg" for f in range(10)]
    ids = [f"{SCAPE}/{fn}@{5 * s}" for fn in files for s in range(4)]
    folds = [int(fn.split("_")[1].split(".")[0]) % 3 for fn in files for _ in range(4)]
    classes = ["a", "b", "c"]
    Y = (rng.random((len(ids), 3)) < 0.3).astype(float)
    labels = {w: [classes[c] for c in np.flatnonzero(Y[i])] for i, w in enumerate(ids)}
    tables = {h: oof_table(h, ids, folds, classes, np.clip(0.6 * Y + 0.4 * rng.random(Y.shape), 0.01, 0.99))
              for h in ("h1", "h2")}
    meta = {f"{SCAPE}/{fn}": (fn[:2], i % 2) for i, fn in enumerate(files)}
    data = align_oof(tables, classes, ["Aves", "Aves", "Amphibia"], labels, file_meta=meta)
    params = RidgeParams(site_prior=True, hour_prior=True, min_positives=2)
    cv = cross_validate_stack(data, "ridge", params)
    for k, fitted in cv.models.items():
        train = training_rows(data, params, exclude_fold=k)
        assert set(fitted.train_windows) == set(data.window_ids[train])
        F, _ = base_features(data, params.features())
        G, _ = prior_features(data, train, params.features())
        X = np.concatenate([F, G], axis=2)
        direct = RidgeStacker(params, fitted.model.feature_names, fitted.model.feature_mask, data.class_groups)
        direct.fit(X[train], data.Y[train])
        assert np.allclose(fitted.model.coef_, direct.coef_, atol=1e-8)
        held = data.folds == k
        assert np.allclose(cv.oof[held], direct.predict_proba(X[held]), atol=1e-9)
    assert fit_stacker(data, "blend", BlendParams(), data.folds != 0).model is None


# ---------------------------------------------------------------------------- blends
def test_blends_by_hand() -> None:
    P = np.array([[[0.2], [0.6], [0.9]], [[0.5], [0.1], [0.7]]])        # 2 sources x 3 windows x 1 class
    avail = np.ones((2, 1), bool)
    prob = blend(P, avail, BlendParams("prob", (3.0, 1.0)))
    assert prob[:, 0] == pytest.approx([0.275, 0.475, 0.85], abs=1e-12)
    rank = blend(P, avail, BlendParams("rank", (3.0, 1.0)))             # ranks (1,2,3) and (2,1,3), over 3
    assert rank[:, 0] == pytest.approx([5 / 12, 7 / 12, 1.0], abs=1e-12)
    lg = blend(P, avail, BlendParams("logit", (3.0, 1.0)))
    expect = [1 / (1 + math.exp(-(3 * math.log(a / (1 - a)) + math.log(b / (1 - b))) / 4))
              for a, b in [(0.2, 0.5), (0.6, 0.1), (0.9, 0.7)]]
    assert lg[:, 0] == pytest.approx(expect, abs=1e-12)


def test_blend_leaves_out_unavailable_sources_per_class() -> None:
    P = np.array([[[0.2, 0.3]], [[0.6, 0.5]]])
    avail = np.array([[True, True], [True, False]])                     # source 2 has no column for class 2
    out = blend(P, avail, BlendParams("prob", (1.0, 3.0)))
    assert out[0].tolist() == pytest.approx([0.5, 0.3])                 # (0.2 + 1.8) / 4; class 2: source 1 only
    assert blend(P, avail, BlendParams("prob", (0.0, 1.0)))[0, 1] == 0.5   # no weighted source left: constant
    one = blend(P[:1], avail[:1], BlendParams("prob"))
    assert np.array_equal(one, P[0].astype(np.float64))


def test_params_reject_unknown_keys_and_values() -> None:
    assert make_stack_params("ridge", {"alpha": 3}).alpha == 3
    assert make_stack_params("blend", {"weights": [1, 2]}).weights == (1, 2)
    with pytest.raises(UserInputError, match=r"unknown ridge parameter\(s\) \['alhpa'\]; known: \["):
        make_stack_params("ridge", {"alhpa": 3})
    with pytest.raises(UserInputError, match=r"unknown stacker 'lasso'; choose from \['blend', 'ridge'\]"):
        make_stack_params("lasso")
    with pytest.raises(UserInputError, match="unknown sharing 'some'"):
        make_stack_params("ridge", {"sharing": "some"})
    with pytest.raises(UserInputError, match="unknown file statistic"):
        make_stack_params("ridge", {"file_stats": ["median"]})
    with pytest.raises(UserInputError, match="weights must be finite, >= 0 and not all 0"):
        make_stack_params("blend", {"weights": [1, -1]})
    with pytest.raises(UserInputError, match="unknown method 'geo'"):
        make_stack_params("blend", {"method": "geo"})


def test_diversity_is_the_mean_per_class_spearman_correlation() -> None:
    rng = np.random.default_rng(5)
    ids = [f"{SCAPE}/d{i // 4}.ogg@{5 * (i % 4)}" for i in range(40)]
    base = rng.random((40, 3))
    tables = {"a": oof_table("a", ids, [0] * 40, CLASSES + ["z"], base),
              "b": oof_table("b", ids, [0] * 40, CLASSES + ["z"], base + 0.3 * rng.random((40, 3))),
              "c": oof_table("c", ids, [0] * 40, CLASSES + ["z"], rng.random((40, 3)))}
    data = align_oof(tables, CLASSES + ["z"], ["Aves"] * 3, {w: [] for w in ids})
    div = head_correlation(data)
    assert np.allclose(np.diag(div.matrix), 1.0) and np.allclose(div.matrix, div.matrix.T)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        ref = np.mean([spearmanr(data.P[a][:, c], data.P[b][:, c])[0] for c in range(3)])
        assert div.matrix[a, b] == pytest.approx(ref, abs=1e-6)
    assert div.matrix[0, 1] > 0.5 > abs(div.matrix[0, 2])
    assert "a" in div.render()


def test_stack_modules_import_neither_duckdb_nor_pyarrow() -> None:
    """Stackers and post-processing will run on the inference path, which loads no store."""
    code = ("import sys, stack.post, stack.inputs, stack.stackers; "
            "print(sorted(m for m in ('duckdb', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_focal_windows_are_learnt_from_only_when_asked() -> None:
    rng = np.random.default_rng(6)
    scape = [f"{SCAPE}/s{f}.ogg@{5 * s}" for f in range(6) for s in range(3)]
    focal = [f"train_audio/a/c{f}.ogg@{5 * s}" for f in range(6) for s in range(2)]
    ids = scape + focal
    folds = [int(w.split("/")[-1][1]) % 3 for w in ids]
    Y = (rng.random((len(ids), 2)) < 0.4).astype(float)
    labels = {w: [CLASSES[c] for c in np.flatnonzero(Y[i])] for i, w in enumerate(ids)}
    tables = {"h": oof_table("h", ids, folds, CLASSES, np.clip(0.5 * Y + 0.5 * rng.random(Y.shape), 0.01, 0.99))}
    data = align_oof(tables, CLASSES, ["Aves", "Aves"], labels)
    plain = cross_validate_stack(data, "ridge", {"min_positives": 2})
    with_focal = cross_validate_stack(data, "ridge", {"min_positives": 2, "use_focal": True})
    zero_weight = cross_validate_stack(data, "ridge", {"min_positives": 2, "use_focal": True, "focal_weight": 0.0})
    for k in plain.train_windows:
        assert all(w.startswith(SCAPE) for w in plain.train_windows[k])
        assert any(w.startswith("train_audio") for w in with_focal.train_windows[k])
    assert not np.allclose(with_focal.oof, plain.oof)
    assert np.allclose(zero_weight.oof, plain.oof, atol=1e-9)        # weight 0: the soundscape-only fit
    soundscapes_only = data.subset(data.source == SCAPE)
    with pytest.raises(UserInputError, match="use_focal: the inputs hold no focal window"):
        cross_validate_stack(soundscapes_only, "ridge", {"use_focal": True})


def test_inputs_without_a_labelled_soundscape_window_say_so() -> None:
    """Heads trained on focal clips only (a store with no soundscape audio): no diversity to report and
    a stack that names the missing windows instead of blaming the folds."""
    import warnings

    from featurestore.errors import StoreError

    data = align_oof(two_heads(), CLASSES, ["Aves", "Aves"], LABELS).subset(np.zeros(3, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no "mean of empty slice"
        div = head_correlation(data)
    assert np.isnan(div.matrix).all() and not div.n_classes.any()
    with pytest.raises(StoreError, match="hold no labelled train_soundscapes window"):
        cross_validate_stack(data, "blend", {})
