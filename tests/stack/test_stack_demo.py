"""The stack on real heads trained on the demo store: scoring parity, no leakage, gain over the best head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import DataError, UserInputError
from featurestore.store import FeatureStore
from stack.inputs import OOF_DIR, StackInputs, head_correlation, load_inputs
from stack.post import apply_post
from stack.stackers import cross_validate_stack, score_oof

POST = [("smooth", {"kernel": [1, 2, 1]}), ("filescale", {"a": 0.5, "top_k": 2})]


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "stack")


@pytest.fixture(scope="module")
def heads(demo_trained) -> dict[str, str]:
    """Three base heads: zero-shot, linear on BirdNET, a small LightGBM; kind -> head id (trained once per session)."""
    return {k: demo_trained.head(k) for k in ("zeroshot", "linear", "lgbm")}


@pytest.fixture(scope="module")
def data(store: Path, heads: dict[str, str]) -> StackInputs:
    return load_inputs(store, list(heads.values()), zero_shot=("birdnet_logits",))


@pytest.fixture(scope="module")
def experiments(store: Path, heads: dict[str, str]) -> dict[str, tuple[float, dict]]:
    import json

    with FeatureStore.open(store, read_only=True) as fs:
        rows = fs.rows("SELECT head_id, fold_mean, fold_scores FROM experiments")
    return {h: (m, {int(k): v for k, v in json.loads(s).items()}) for h, m, s in rows if h in heads.values()}


def test_a_head_scored_through_the_stack_equals_its_experiments_row(data: StackInputs, heads: dict[str, str],
                                                                     experiments: dict) -> None:
    for i, head in enumerate(heads.values()):
        fold_mean, fold_scores = experiments[head]
        score = score_oof(data, data.P[i])
        assert score.scored_on == "soundscape" and score.eval_mask.sum() == (data.source == "train_soundscapes").sum()
        assert score.fold_mean == pytest.approx(fold_mean, abs=1e-12)
        assert score.fold_scores == pytest.approx(fold_scores, abs=1e-12)
        one_hot = tuple(1.0 if j == i else 0.0 for j in range(len(data.heads)))
        cv = cross_validate_stack(data, "blend", {"method": "prob", "weights": one_hot})
        assert cv.fold_mean == pytest.approx(fold_mean, abs=1e-12)


def test_zero_shot_view_gives_the_zeroshot_heads_scores(store: Path, data: StackInputs, heads: dict[str, str]) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        matched = {r[0] for r in fs.rows("SELECT primary_label FROM birdnet_class_map WHERE birdnet_index IS NOT NULL")}
    zs, view = data.head_index(heads["zeroshot"]), data.head_index("birdnet_logits")
    assert matched and {c for c, a in zip(data.class_names, data.available[view], strict=True) if a} == matched
    cols = data.available[view]
    assert np.allclose(data.P[view][:, cols], data.P[zs][:, cols], atol=1e-6)
    div = head_correlation(data)
    assert div.matrix[zs, view] == pytest.approx(1.0, abs=1e-3)


def test_level2_model_of_fold_k_never_saw_a_fold_k_window(store: Path, data: StackInputs) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
    params = {"site_prior": True, "hour_prior": True, "min_positives": 3}
    cv = cross_validate_stack(data, "ridge", params)
    assert sorted(cv.train_windows) == sorted(set(fold_of[w] for w in data.window_ids)) and len(cv.train_windows) > 1
    for k, trained_on in cv.train_windows.items():
        assert len(trained_on) and not any(fold_of[w] == k for w in trained_on)
        assert all(w.startswith("train_soundscapes/") for w in trained_on)
        assert sorted(cv.predicted_windows[k]) == sorted(w for w in data.window_ids if fold_of[w] == k)
    # functional check: rewriting every fold-k label changes no fold-k prediction, and does change the others
    k = sorted(cv.train_windows)[0]
    held = data.folds == k
    rng = np.random.default_rng(0)
    flipped = data.Y.copy()
    flipped[held] = (rng.random(flipped[held].shape) < 0.5).astype(np.float32)
    other = StackInputs(data.window_ids, data.heads, data.class_names, data.class_groups, data.P, data.available,
                        flipped, data.folds, data.source, data.site, data.hour)
    cv2 = cross_validate_stack(other, "ridge", params)
    assert np.array_equal(cv2.oof[held], cv.oof[held])
    assert not np.allclose(cv2.oof[~held], cv.oof[~held])


def test_the_best_stack_is_at_least_the_best_single_head(data: StackInputs, experiments: dict) -> None:
    best_head = max(m for m, _ in experiments.values())
    candidates = {
        "ridge": cross_validate_stack(data, "ridge", {}),
        "ridge+priors": cross_validate_stack(data, "ridge", {"site_prior": True, "hour_prior": True}),
        "blend logit": cross_validate_stack(data, "blend", {"method": "logit"}),
    }
    best = max(candidates, key=lambda k: candidates[k].fold_mean)
    assert candidates[best].fold_mean >= best_head, {k: v.fold_mean for k, v in candidates.items()}


def test_post_processing_in_cv_is_the_chain_applied_to_the_stack_oof(data: StackInputs) -> None:
    plain = cross_validate_stack(data, "ridge", {})
    post = cross_validate_stack(data, "ridge", {}, POST)
    expected = apply_post(plain.oof, POST, data.fold_layout(), data.class_groups)
    assert np.allclose(post.oof, expected, atol=1e-12)
    assert post.fold_mean != plain.fold_mean and [s.name for s in post.post] == ["smooth", "filescale"]
    assert post.describe()["post"][1] == ["filescale", {"a": 0.5, "top_k": 2, "form": "prob"}]


def test_heads_that_disagree_are_refused(store: Path, heads: dict[str, str]) -> None:
    with pytest.raises(UserInputError, match=r"no OOF table for head\(s\) \['nosuch'\].*heads present: \["):
        load_inputs(store, [heads["linear"], "nosuch"])
    table = pq.read_table(store / OOF_DIR / f"{heads['linear']}.parquet")
    scape = table.column("source").to_pylist().index("train_soundscapes")
    folds = table.column("fold").to_pylist()
    moved = folds[scape]
    folds[scape] = (moved + 1) % 5
    fake = store / OOF_DIR / "refolded-000000000000.parquet"
    pq.write_table(table.set_column(table.column_names.index("fold"), "fold", pa.array(folds, pa.int32())), fake)
    try:
        wid = table.column("window_id")[scape].as_py()
        with pytest.raises(DataError, match=rf"window {wid} is in fold {moved} for head {heads['linear']} but fold "
                                            rf"{(moved + 1) % 5} for head refolded-000000000000"):
            load_inputs(store, [heads["linear"], "refolded-000000000000"])
    finally:
        fake.unlink()


def test_a_fold_model_predicts_new_inputs_like_it_predicted_its_fold(data: StackInputs) -> None:
    """A fitted stacker (ridge with learnt site/hour tables, and a rank blend) applied to inputs that hold
    only its held-out windows gives exactly its cross-validated predictions: nothing depends on the rows
    it was fit with (what predicting through the stack will rely on)."""
    for kind, params in (("ridge", {"site_prior": True, "hour_prior": True}), ("blend", {"method": "rank"})):
        cv = cross_validate_stack(data, kind, params)
        for k, fitted in cv.models.items():
            held = data.folds == k
            assert np.allclose(fitted.predict(data.subset(held)), cv.oof[held], atol=1e-12, rtol=0)
