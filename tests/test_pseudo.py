"""Pseudo-labels (stack/pseudo.py) on real heads trained on the demo store: fold consistency (no
teacher fold model saw a labelled window of its fold), numbers recomputed from the fold models,
determinism and resumption, quality against the demo's held-back answers, the transform by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from featurestore.demo_data import ANSWERS_FILE
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from featurestore.windows import SOUNDSCAPE, window_id
from models.frame import FrameSpec
from models.training import train_head
from stack.pseudo import FULL_FOLD, PseudoParams, load_pseudo, make_params, run_pseudo, transform


@pytest.fixture(scope="module")
def store(demo_embedded_store: Path, store_copy) -> Path:
    return store_copy(demo_embedded_store, "pseudo")


@pytest.fixture(scope="module")
def teacher(store: Path) -> str:
    with threadpool_limits(1, user_api="blas"):
        return train_head(store, "linear", FrameSpec("birdnet")).head_id


@pytest.fixture(scope="module")
def pseudo(store: Path, teacher: str):
    return run_pseudo(store, teacher, {}, say=lambda _: None)


def test_transform_by_hand() -> None:
    P = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(transform(P, PseudoParams()), P, atol=1e-7)
    sharp = transform(P, PseudoParams(power=2.0, min_prob=0.15))
    np.testing.assert_allclose(sharp, [[0.81, 0.25, 0.0], [0.04, 0.04, 0.04]], atol=1e-7)
    capped = transform(P, PseudoParams(cap=0.75))
    np.testing.assert_allclose(capped[0], np.array([0.9, 0.5, 0.1]) * 0.75 / 1.5, atol=1e-7)
    np.testing.assert_allclose(capped[1], [0.2, 0.2, 0.2], atol=1e-7)          # sum 0.6 <= cap: unchanged
    with pytest.raises(UserInputError, match="unknown pseudo parameter"):
        make_params({"temperature": 2})


def test_fold_k_labels_come_from_the_fold_k_model_which_never_saw_fold_k(store: Path, teacher: str, pseudo) -> None:
    from embed.features import load_window_features
    from models.bundle import load_bundle
    from models.heads import load_head

    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
        folds = sorted(r[0] for r in fs.rows("SELECT DISTINCT teacher_fold FROM pseudo_labels WHERE pseudo_version = ?",
                                             [pseudo.version]))
        bundle = load_bundle(store / "heads" / teacher)
        full_ids, full, classes, _ = load_pseudo(fs, pseudo.version, FULL_FOLD)
        ids, X, _, _ = load_window_features(fs, "birdnet", "mean", window_ids=full_ids,
                                            versions=dict(bundle.config.feature_versions.extractors))
    assert folds == [FULL_FOLD, *range(len(bundle.folds))]
    assert not any(w.startswith("train_audio/") for w in full_ids) and ids == full_ids
    per_fold = []
    for k in range(len(bundle.folds)):
        fold_dir = store / "heads" / teacher / f"fold_{k}"
        trained_on = pq.read_table(fold_dir / "train_windows.parquet").column("window_id").to_pylist()
        assert trained_on and not any(fold_of.get(w) == k for w in trained_on)      # the leakage check
        with FeatureStore.open(store, read_only=True) as fs:
            got_ids, got, _, _ = load_pseudo(fs, pseudo.version, k)
        assert got_ids == full_ids
        expected = load_head(fold_dir).predict_proba(X)[:, [bundle.class_names.index(c) for c in classes]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        per_fold.append(got)
    np.testing.assert_allclose(full, np.mean(per_fold, axis=0), rtol=0, atol=1e-6)


def test_same_request_is_deterministic_and_resumes_without_rewriting(store: Path, teacher: str, pseudo,
                                                                    store_copy) -> None:
    again = run_pseudo(store, teacher, {}, say=lambda _: None)
    assert again.version == pseudo.version and again.written_parts == 0
    copies = {}
    for name, chunk in (("same", None), ("chunked", 50)):
        other = store_copy(store, f"pseudo_{name}")
        for p in (other / "parts" / "pseudo_labels").glob("*.parquet"):
            p.unlink()
        rerun = run_pseudo(other, teacher, {}, say=lambda _: None, **({"chunk_windows": chunk} if chunk else {}))
        assert rerun.version == pseudo.version and rerun.written_parts >= (2 if chunk else 1)
        copies[name] = other
    for fold in (FULL_FOLD, 0):
        with FeatureStore.open(store, read_only=True) as a:
            ia, pa_, _, _ = load_pseudo(a, pseudo.version, fold)
        for name, other in copies.items():
            with FeatureStore.open(other, read_only=True) as b:
                ib, pb, _, _ = load_pseudo(b, pseudo.version, fold)
            assert ia == ib
            if name == "same":                       # same teacher, parameters, chunking: the same bytes
                assert pa_.tobytes() == pb.tobytes()
            else:                                    # other matrix shapes: BLAS may round the last bit
                np.testing.assert_allclose(pa_, pb, rtol=0, atol=1e-6)


def test_pseudo_labels_score_well_against_the_held_back_answers(store: Path, pseudo, demo_data: Path) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        ids, P, classes, _ = load_pseudo(fs, pseudo.version, FULL_FOLD)
    truth: dict[str, set[str]] = {}
    with open(demo_data.parent / ANSWERS_FILE, newline="") as fh:
        for r in csv.DictReader(fh):
            h, m, s = (int(x) for x in r["start"].split(":"))
            truth[window_id(SOUNDSCAPE, r["filename"], h * 3600 + m * 60 + s)] = set(filter(None, r["primary_label"].split(";")))
    assert set(ids) == set(truth)
    Y = np.array([[c in truth[w] for c in classes] for w in ids], dtype=int)
    scored = [c for c in range(len(classes)) if 0 < Y[:, c].sum() < len(ids)]
    auc = float(np.mean([roc_auc_score(Y[:, c], P[:, c]) for c in scored]))
    print(f"pseudo-label macro AUC vs held-back answers: {auc:.4f} over {len(scored)} classes, {len(ids)} windows")
    assert auc > 0.9


def test_unknown_teacher_is_refused(store: Path) -> None:
    from pipelines import pseudo as job

    with pytest.raises(UserInputError, match="no trained head 'nope'"):
        job.main(["--store", str(store), "--teacher", "nope"])


def test_a_stacked_teacher_labels_fold_k_with_its_fold_k_level2_model(store: Path, teacher: str) -> None:
    """Base heads' fold-k models, then the stack's fold-k level-2 model (never fit on fold k), per fold."""
    from embed.features import load_window_features
    from models.bundle import load_bundle
    from models.heads import load_head
    from stack.bundle import load_stack
    from stack.predict import unlabelled_inputs
    from stack.run import run_stack

    with threadpool_limits(1, user_api="blas"):
        other = train_head(store, "linear", FrameSpec("classical")).head_id
        stacked = run_stack(store, [teacher, other], "ridge", {"min_positives": 3}).head_id
    result = run_pseudo(store, stacked, {"cap": 1.0}, say=lambda _: None)
    bundle = load_stack(store / "heads" / stacked)
    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
        ids, full, classes, params = load_pseudo(fs, result.version, FULL_FOLD)
        X = {}
        for h in (teacher, other):
            b = load_bundle(store / "heads" / h)
            X[h] = load_window_features(fs, b.config.frame.features, b.config.frame.pooling, window_ids=ids,
                                        versions=dict(b.config.feature_versions.extractors))[1]
        per_fold = {k: load_pseudo(fs, result.version, k)[1] for k in bundle.folds}
    assert params.cap == 1.0 and full.sum(axis=1).max() <= 1.0 + 1e-5
    for k, fitted in bundle.folds.items():
        assert not any(fold_of.get(w) == k for w in fitted.train_windows.tolist())
        P = []
        for h in (teacher, other):
            b = load_bundle(store / "heads" / h)
            P.append(load_head(store / "heads" / h / f"fold_{k}").predict_proba(X[h])[
                :, [b.class_names.index(c) for c in bundle.class_names]])
        expected = fitted.predict(unlabelled_inputs(bundle, ids, np.stack(P).astype(np.float32)))
        np.testing.assert_allclose(per_fold[k],
                                   transform(expected[:, [bundle.class_names.index(c) for c in classes]], params),
                                   rtol=0, atol=1e-5)
