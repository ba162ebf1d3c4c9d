"""The Head contract, checked for every head kind in ``models.heads.HEAD_CLASSES``.

In the style of scikit-learn's ``parametrize_with_checks``: one list of checks, each run on every
registered head kind, so a kind added to ``HEAD_CLASSES`` (a stacker, a pseudo-label head) is checked
without writing a test. The data are real stored features of the demo store (BirdNET embeddings and
logits of every labelled window); one fold is held out, the others train.

What a kind must do is read from its capability tags (``Head.tags``): a ``learns`` kind must beat the class
prior on the held-out windows (macro ROC-AUC by scikit-learn); a ``constant`` kind must be exactly the
prior; a ``zero_shot`` kind must equal the logistic of the matched logit column.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.errors import HeadError
from featurestore.folds import fold_assignment
from featurestore.store import FeatureStore
from models.frame import FrameSpec, build_frame
from models.heads import HEAD_CLASSES, PARAMS_BY_KIND, Head, load_head, make_head, make_params

# BirdNET embeddings + its logits: every kind finds what it needs (zeroshot reads the logit columns)
FEATURES = "birdnet,birdnet_logits"
# small, fast settings for the few hundred demo windows; a kind not listed runs with its defaults
FAST_PARAMS = {"lgbm": {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 7, "feature_fraction": 0.2,
                        "min_child_samples": 10, "inner_valid_fraction": 0.0, "n_jobs": 2}}
TAGS = frozenset({"learns", "constant", "zero_shot"})       # every capability the checks below know
MIN_HELD_OUT_AUC = 0.75     # a learning kind on the demo's held-out fold (linear ~0.95, lgbm ~0.93 measured)


@dataclass(frozen=True)
class Split:
    X: np.ndarray
    Y: np.ndarray
    weight: np.ndarray
    groups: np.ndarray
    X_held: np.ndarray
    Y_held: np.ndarray
    class_names: list[str]
    feature_names: list[str]


@pytest.fixture(scope="module")
def split(demo_embedded_store: Path) -> Split:
    with FeatureStore.open(demo_embedded_store, read_only=True) as store:
        frame = build_frame(store, FrameSpec(FEATURES))
        folds, _ = fold_assignment(store, frame.window_ids, None)
    held_fold = sorted(set(folds.tolist()) - {-1})[0]
    held, train = folds == held_fold, (folds != held_fold) & (folds != -1)
    return Split(frame.X[train], frame.Y[train], frame.weight[train], frame.groups[train], frame.X[held],
                 frame.Y[held], frame.class_names, frame.feature_names)


_FITTED: dict[str, Head] = {}


def new_head(kind: str, s: Split, **overrides) -> Head:
    return make_head(kind, s.class_names, s.feature_names, {**FAST_PARAMS.get(kind, {}), **overrides})


def fitted(kind: str, s: Split) -> Head:
    """One fitted Head per kind, shared by the checks that only read it."""
    if kind not in _FITTED:
        _FITTED[kind] = new_head(kind, s).fit(s.X, s.Y, s.weight, groups=s.groups)
    return _FITTED[kind]


def macro_auc(Y: np.ndarray, P: np.ndarray) -> float:
    """scikit-learn's macro ROC-AUC over the classes with a positive and a negative."""
    keep = (Y.sum(axis=0) > 0) & (Y.sum(axis=0) < len(Y))
    return float(roc_auc_score(Y[:, keep], P[:, keep], average="macro"))


# ---------------------------------------------------------------------------- checks (kind, data, a temp folder)
def check_fit_predict_shapes_and_probabilities(kind: str, s: Split, tmp_path: Path) -> None:
    head = new_head(kind, s)
    assert head.fit(s.X, s.Y, s.weight, groups=s.groups) is head
    assert head.kind == kind and isinstance(head.params, PARAMS_BY_KIND[kind])
    assert head.class_names == s.class_names and head.feature_names == s.feature_names
    X_before = s.X_held.copy()
    P = head.predict_proba(s.X_held)
    assert P.shape == (len(s.X_held), len(s.class_names))
    assert np.isfinite(P).all() and P.min() >= 0.0 and P.max() <= 1.0
    assert np.array_equal(s.X_held, X_before)              # predict does not touch its input
    one = head.predict_proba(s.X_held[:1])                  # a single window works too
    assert one.shape == (1, len(s.class_names))
    np.testing.assert_allclose(one, P[:1], rtol=1e-5, atol=1e-6)
    assert head.prior_.shape == (len(s.class_names),) and ((head.prior_ > 0) & (head.prior_ < 1)).all()


def check_deterministic(kind: str, s: Split, tmp_path: Path) -> None:
    """Two fits with the same parameters (and seed) give bit-identical predictions."""
    again = new_head(kind, s).fit(s.X, s.Y, s.weight, groups=s.groups)
    np.testing.assert_array_equal(again.predict_proba(s.X_held), fitted(kind, s).predict_proba(s.X_held))


def check_save_load_round_trip(kind: str, s: Split, tmp_path: Path) -> None:
    head = fitted(kind, s)
    folder = head.save(tmp_path / kind)
    loaded = load_head(folder)
    assert type(loaded) is type(head) and loaded.params == head.params
    assert loaded.class_names == head.class_names and loaded.feature_names == head.feature_names
    np.testing.assert_array_equal(loaded.predict_proba(s.X_held), head.predict_proba(s.X_held))
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]  # plain files only


def check_unknown_params_are_refused_naming_the_choices(kind: str, s: Split, tmp_path: Path) -> None:
    known = sorted(f.name for f in fields(PARAMS_BY_KIND[kind]))
    with pytest.raises(HeadError) as info:
        make_head(kind, s.class_names, s.feature_names, {"no_such_param": 1})
    message = str(info.value)
    assert "no_such_param" in message and all(name in message for name in known), message
    assert make_params(kind) == PARAMS_BY_KIND[kind]()       # no overrides: the documented defaults


def check_bad_input_is_a_head_error(kind: str, s: Split, tmp_path: Path) -> None:
    with pytest.raises(HeadError, match="features; the head expects"):
        fitted(kind, s).predict_proba(s.X_held[:, :-1])     # one feature short
    with pytest.raises(HeadError, match="must be 2-D"):
        fitted(kind, s).predict_proba(s.X_held[0])
    nan_X = s.X.copy()
    nan_X[3, 5] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        new_head(kind, s).fit(nan_X, s.Y, s.weight, groups=s.groups)
    with pytest.raises(HeadError, match="NaN"):
        fitted(kind, s).predict_proba(np.where(np.arange(s.X_held.shape[1]) == 0, np.inf, s.X_held))
    with pytest.raises(HeadError, match="Y must be"):
        new_head(kind, s).fit(s.X, s.Y[:, :-1], s.weight, groups=s.groups)


def check_class_without_positives_gets_finite_probabilities(kind: str, s: Split, tmp_path: Path) -> None:
    Y = s.Y.copy()
    Y[:, 0] = 0.0                                            # this class never occurs in training
    P = new_head(kind, s).fit(s.X, Y, s.weight, groups=s.groups).predict_proba(s.X_held)
    assert np.isfinite(P).all() and P.min() >= 0.0 and P.max() <= 1.0


def check_learns_what_it_should(kind: str, s: Split, tmp_path: Path) -> None:
    """Held-out macro ROC-AUC (scikit-learn) against the class prior (0.5: one constant per class)."""
    head = fitted(kind, s)
    P = head.predict_proba(s.X_held)
    tags = HEAD_CLASSES[kind].tags
    assert len(tags) == 1 and tags <= TAGS, f"{kind}: tags {sorted(tags)}: teach this suite what they mean"
    if "constant" in tags:
        np.testing.assert_array_equal(P, np.tile(P[0], (len(P), 1)))
        assert macro_auc(s.Y_held, P) == pytest.approx(0.5)
        return
    if "zero_shot" in tags:   # an independent reference: the logistic of the matched logit column
        column = {n.split(":", 1)[1]: j for j, n in enumerate(s.feature_names) if n.startswith("birdnet_logit:")}
        matched = [c for c in s.class_names if c in column]
        assert matched
        for c in matched:
            expected = 1.0 / (1.0 + np.exp(-s.X_held[:, column[c]].astype(np.float64)))
            np.testing.assert_allclose(P[:, s.class_names.index(c)], expected, rtol=1e-5, atol=1e-7)
        return
    auc = macro_auc(s.Y_held, P)
    assert auc >= MIN_HELD_OUT_AUC, f"{kind}: held-out macro AUC {auc:.4f} (the prior scores 0.5)"


def check_soft_targets(kind: str, s: Split, tmp_path: Path) -> None:
    """Soft targets in [0, 1] (pseudo-labels) train every kind as well as 0/1 labels rank them; labels
    outside [0, 1] or NaN are refused."""
    soft = (s.Y * 0.96 + 0.02).astype(np.float32)          # label smoothing: every label strictly inside (0, 1)
    head = new_head(kind, s).fit(s.X, soft, s.weight, groups=s.groups)
    P = head.predict_proba(s.X_held)
    assert np.isfinite(P).all() and P.min() >= 0.0 and P.max() <= 1.0
    w = s.weight[:, None]                                   # the prior: weighted soft positive rate, smoothed
    np.testing.assert_allclose(head.prior_, ((soft * w).sum(0) + 1.0) / (w.sum() + 2.0), rtol=1e-6)
    if "learns" in HEAD_CLASSES[kind].tags:
        assert macro_auc(s.Y_held, P) >= MIN_HELD_OUT_AUC
    for bad in (1.5, -0.1, np.nan):
        Y = soft.copy()
        Y[2, 1] = bad
        with pytest.raises(HeadError, match=r"labels in \[0, 1\]"):
            new_head(kind, s).fit(s.X, Y, s.weight, groups=s.groups)


CHECKS = (check_fit_predict_shapes_and_probabilities, check_deterministic, check_save_load_round_trip,
          check_unknown_params_are_refused_naming_the_choices, check_bad_input_is_a_head_error,
          check_class_without_positives_gets_finite_probabilities, check_learns_what_it_should, check_soft_targets)


def _kind_checks():
    for kind in HEAD_CLASSES:
        for check in CHECKS:
            yield pytest.param(kind, check, id=f"{kind}-{check.__name__.removeprefix('check_')}")


@pytest.mark.parametrize("kind, check", list(_kind_checks()))
def test_head_contract(kind: str, check, split: Split, tmp_path: Path) -> None:
    check(kind, split, tmp_path)


def test_every_head_kind_has_params_and_the_registry_names_them_consistently() -> None:
    assert set(HEAD_CLASSES) == set(PARAMS_BY_KIND)
    assert all(cls.kind == kind and issubclass(cls, Head) for kind, cls in HEAD_CLASSES.items())
    assert all(cls.tags and cls.tags <= TAGS for cls in HEAD_CLASSES.values())
    assert {k for k, c in HEAD_CLASSES.items() if "learns" not in c.tags} == {"prior", "zeroshot"}


def test_unknown_head_kind_is_refused_naming_every_kind() -> None:
    with pytest.raises(HeadError) as info:
        make_head("svm", ["a"], ["f"])
    assert "'svm'" in str(info.value) and all(kind in str(info.value) for kind in HEAD_CLASSES)
