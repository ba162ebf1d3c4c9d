"""Pseudo-labels (students/pseudo.py) on real heads trained on the demo store: fold consistency (no
teacher fold model saw a labelled window of its fold), numbers recomputed from the fold models,
determinism and resumption, quality against the demo's held-back answers, the transform by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.demo_data import ANSWERS_FILE
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from featurestore.windows import SOUNDSCAPE, window_id
from models.frame import FrameSpec
from models.pseudo_labels import FULL_FOLD, PseudoParams, load_pseudo, make_params
from models.subgroups import compare_slices
from models.training import train_head
from students.pseudo import run_pseudo, transform


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "pseudo")


@pytest.fixture(scope="module")
def teacher(demo_trained) -> str:
    return demo_trained.head("linear")


@pytest.fixture(scope="module")
def classical_teacher(demo_trained) -> str:
    """A second, cheap teacher (linear on the classical statistics)."""
    return demo_trained.head("classical")


@pytest.fixture(scope="module")
def pseudo(store: Path, teacher: str):
    """The teacher's raw soft labels (no threshold)."""
    return run_pseudo(store, teacher, {"min_prob": 0.0}, say=lambda _: None)


def test_transform_by_hand() -> None:
    P = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(transform(P, PseudoParams(min_prob=0.0)), P, atol=1e-7)
    np.testing.assert_allclose(transform(P, PseudoParams()), [[0.9, 0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)
    sharp = transform(P, PseudoParams(power=2.0, min_prob=0.15))
    np.testing.assert_allclose(sharp, [[0.81, 0.25, 0.0], [0.04, 0.04, 0.04]], atol=1e-7)
    capped = transform(P, PseudoParams(min_prob=0.0, cap=0.75))
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
    again = run_pseudo(store, teacher, {"min_prob": 0.0}, say=lambda _: None)
    assert again.version == pseudo.version and again.written_parts == 0
    copies = {}
    for name, chunk in (("same", None), ("chunked", 50)):
        other = store_copy(store, f"pseudo_{name}")
        for p in (other / "parts" / "pseudo_labels").glob("*.parquet"):
            p.unlink()
        rerun = run_pseudo(other, teacher, {"min_prob": 0.0}, say=lambda _: None,
                           **({"chunk_windows": chunk} if chunk else {}))
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


def test_a_missing_answers_file_is_refused_before_any_work(store: Path, teacher: str) -> None:
    parts = sorted((store / "parts" / "pseudo_labels").glob("*.parquet"))
    with pytest.raises(UserInputError, match="nope.csv: answers file not found"):
        run_pseudo(store, teacher, {"power": 3.0}, answers=store / "nope.csv", say=lambda _: None)
    assert sorted((store / "parts" / "pseudo_labels").glob("*.parquet")) == parts


def test_unknown_teacher_is_refused(store: Path) -> None:
    from pipelines import pseudo as job

    with pytest.raises(UserInputError, match="no trained head 'nope'"):
        job.main(["--store", str(store), "--teacher", "nope"])


def test_a_stacked_teacher_labels_fold_k_with_its_fold_k_level2_model(store: Path, teacher: str,
                                                                      classical_teacher: str, demo_trained) -> None:
    """Base heads' fold-k models, then the stack's fold-k level-2 model (never fit on fold k), per fold."""
    from embed.features import load_window_features
    from models.bundle import load_bundle
    from models.heads import load_head
    from stack.apply import unlabelled_inputs
    from stack.bundle import load_stack

    other = classical_teacher
    stacked = demo_trained.stack_linear.head_id     # a ridge stack over the two linear teachers
    assert load_stack(store / "heads" / stacked).config.base_heads == (teacher, other)
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


# ---------------------------------------------------------------------------- students (soft-target training)
@pytest.fixture(scope="module")
def student(store: Path, teacher: str, pseudo):
    from models.pseudo_labels import PseudoSpec

    return train_head(store, "linear", FrameSpec("birdnet"), pseudo=PseudoSpec(pseudo.version, weight=0.5))


def _row(store: Path, head_id: str) -> dict:
    with FeatureStore.open(store, read_only=True) as fs:
        return fs.sql("SELECT * FROM experiments WHERE head_id = ? ORDER BY created_at DESC LIMIT 1",
                      [head_id]).to_pylist()[0]


def _experiment(store: Path, head_id: str) -> tuple[float, str]:
    with FeatureStore.open(store, read_only=True) as fs:
        return fs.first("SELECT fold_mean, tag FROM experiments WHERE head_id = ? ORDER BY created_at DESC LIMIT 1",
                        [head_id])


def test_student_fold_k_learns_only_labels_of_the_teacher_fold_k_model(store: Path, teacher: str, pseudo,
                                                                       student) -> None:
    """Leakage: every pseudo-labelled window fold k's student trained on carries teacher fold id k, and the
    teacher's fold-k model never saw a labelled fold-k window; the student's fold-k model equals a head
    fitted by hand on the labelled windows outside fold k plus those soft labels at weight 0.5."""
    import json

    from embed.features import load_window_features
    from featurestore.folds import fold_assignment
    from models.frame import build_frame
    from models.heads import load_head, make_head

    config = json.loads((store / "heads" / student.head_id / "config.json").read_text())
    assert config["pseudo"]["version"] == pseudo.version and config["pseudo"]["weight"] == 0.5
    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
        frame = build_frame(fs, FrameSpec("birdnet"))
        folds, _ = fold_assignment(fs, frame.window_ids, None)
        pool, _, _, _ = load_pseudo(fs, pseudo.version, FULL_FOLD)
    for k in sorted(set(folds.tolist()) - {-1}):
        rows = pq.read_table(store / "heads" / student.head_id / f"fold_{k}" / "train_windows.parquet").to_pylist()
        labelled = [r["window_id"] for r in rows if r["pseudo_teacher_fold"] is None]
        pseudo_rows = [r for r in rows if r["pseudo_teacher_fold"] is not None]
        assert labelled and not any(fold_of.get(w) == k for w in labelled)
        # the unlabelled windows of fold k's site / day groups are left out like its labelled ones
        outside = [w for w in pool if fold_of.get(w) != k]
        assert 0 < len(outside) < len(pool)
        assert sorted(r["window_id"] for r in pseudo_rows) == outside
        assert {r["pseudo_teacher_fold"] for r in pseudo_rows} == {k}
        seen = pq.read_table(store / "heads" / teacher / f"fold_{k}" / "train_windows.parquet").column("window_id")
        assert not any(fold_of.get(w) == k for w in seen.to_pylist())
    k = 0
    with FeatureStore.open(store, read_only=True) as fs:
        ids, Q, classes, _ = load_pseudo(fs, pseudo.version, k)
        keep = np.array([fold_of.get(w) != k for w in ids])
        ids, Q = [w for w, o in zip(ids, keep, strict=True) if o], Q[keep]
        _, Xp, _, _ = load_window_features(fs, "birdnet", "mean", window_ids=ids,
                                           versions=dict(frame.feature_versions.extractors))
    train = (folds != k) & (folds != -1)
    cols = [classes.index(c) for c in frame.class_names]
    by_hand = make_head("linear", frame.class_names, frame.feature_names).fit(
        np.vstack([frame.X[train], Xp]), np.vstack([frame.Y[train], Q[:, cols]]),
        np.concatenate([frame.weight[train], np.full(len(ids), 0.5)]))
    held = frame.X[folds == k]
    np.testing.assert_allclose(load_head(store / "heads" / student.head_id / "fold_0").predict_proba(held),
                               by_hand.predict_proba(held), rtol=0, atol=1e-5)


def test_one_round_student_scores_within_half_a_point_of_its_teacher(store: Path, teacher: str, student) -> None:
    teacher_mean, _ = _experiment(store, teacher)
    print(f"linear BirdNET teacher fold mean {teacher_mean:.4f}; student with its pseudo-labels "
          f"{student.fold_mean:.4f} ({student.fold_mean - teacher_mean:+.4f})")
    assert student.fold_mean >= teacher_mean - 0.005


def test_labels_from_a_teacher_on_other_folds_are_refused(store: Path, pseudo) -> None:
    from models.frame import build_frame
    from models.pseudo_labels import PseudoSpec, student_rows

    with FeatureStore.open(store, read_only=True) as fs:
        frame = build_frame(fs, FrameSpec("birdnet"))
        with pytest.raises(UserInputError, match="trained on fold version .* but this run uses folds-other"):
            student_rows(fs, PseudoSpec(pseudo.version), frame, FrameSpec("birdnet"), [0, 1], "folds-other")
        with pytest.raises(UserInputError, match="unknown pseudo-label version 'pseudo-nope'"):
            student_rows(fs, PseudoSpec("pseudo-nope"), frame, FrameSpec("birdnet"), [0], "x")


def test_train_cli_needs_pseudo_for_its_options(store: Path, capsys) -> None:
    from pipelines import train as job

    with pytest.raises(SystemExit) as info:
        job.main(["--store", str(store), "--head-kind", "linear", "--pseudo-weight", "0.5"])
    assert info.value.code == 2 and "need --pseudo VERSION" in capsys.readouterr().err


def test_selftrain_rounds_reuse_the_labels_and_students_and_stop_when_the_fold_mean_stops_rising(
        store: Path, classical_teacher: str) -> None:
    import json

    from students.selftrain import run_selftrain

    teacher = classical_teacher
    labels = run_pseudo(store, teacher, {"min_prob": 0.2}, say=lambda _m: None)
    result = run_selftrain(store, teacher, rounds=2, params={"min_prob": 0.2}, say=lambda _m: None)
    print(result.render())
    first = result.rounds[0]
    assert first.teacher_id == teacher and first.pseudo_version == labels.version   # the same request: same labels
    config = json.loads((store / "heads" / first.student_id / "config.json").read_text())
    assert config["pseudo"] == {**config["pseudo"], "version": labels.version, "weight": 1.0, "teacher_id": teacher}
    assert config["head"] == "linear" and config["frame"]["features"] == "classical"  # the teacher's configuration
    assert _experiment(store, first.student_id)[1] == "selftrain-r1"
    with FeatureStore.open(store, read_only=True) as fs:      # the pooled OOF AUC is reported beside the fold mean
        pooled = fs.first("SELECT oof_auc FROM experiments WHERE head_id = ? ORDER BY created_at DESC LIMIT 1",
                          [first.student_id])[0]
    assert first.pooled == pytest.approx(pooled) and "pooled OOF" in result.render()
    teacher_mean, _ = _experiment(store, teacher)
    if first.fold_mean > teacher_mean:
        assert len(result.rounds) == 2 and result.rounds[1].teacher_id == first.student_id
        assert _experiment(store, result.rounds[1].student_id)[1] == "selftrain-r2"
    else:
        assert len(result.rounds) == 1 and result.best_id == teacher and "did not beat" in result.stopped
    best = max([teacher_mean] + [r.fold_mean for r in result.rounds])
    assert _experiment(store, result.best_id)[0] == pytest.approx(best)
    said: list[str] = []                             # a re-run (e.g. after kill -9) re-uses every finished student
    again = run_selftrain(store, teacher, rounds=2, params={"min_prob": 0.2}, say=said.append)
    assert [r.student_id for r in again.rounds] == [r.student_id for r in result.rounds]
    assert sum("trained by an earlier run" in m for m in said) == len(result.rounds)
    # subgroups: every round's student against the ORIGINAL teacher, which its row records as its teacher
    assert result.written_ids() == [r.student_id for r in result.rounds]
    for r in result.rounds:
        row = _row(store, r.student_id)
        assert row["teacher_id"] == teacher
        expected = compare_slices(_row(store, teacher)["slices"], row["slices"], teacher_mean, row["fold_mean"])
        assert r.subgroups.rows == expected.rows and r.subgroups.headline_drop == expected.headline_drop
        assert f"round {r.round} student {r.student_id} vs the round-0 teacher {teacher}:" in result.render()
    assert r.subgroups.render() in result.render()


def test_distilled_classical_student_learns_the_teacher_on_every_window_and_is_cheaper(
        store: Path, teacher: str, demo_data: Path) -> None:
    import json

    from students.distill import run_distill

    audio = sorted((demo_data / "test_soundscapes").glob("*.ogg"))[:1]
    result = run_distill(store, teacher, "linear", "classical", alpha=1.0, audio=audio, say=lambda _m: None)
    print(result.render())
    with FeatureStore.open(store, read_only=True) as fs:
        run = fs.first("SELECT params, n_windows FROM pseudo_runs WHERE pseudo_version = ?", [result.pseudo_version])
        n_windows = fs.first("SELECT count(*) FROM windows WHERE source <> 'test_soundscapes'")[0]
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
    assert json.loads(run[0])["pool"] == "all" and run[1] == n_windows
    rows = pq.read_table(store / "heads" / result.student.head_id / "fold_1" / "train_windows.parquet").to_pylist()
    # alpha 1: every labelled training window learns the teacher's fold-1 label; none is from fold 1
    assert {r["pseudo_teacher_fold"] for r in rows} == {1}
    assert not any(fold_of.get(r["window_id"]) == 1 for r in rows)
    assert "birdnet" in result.teacher.stages and "birdnet" not in result.student.stages
    assert result.baseline is not None and result.baseline.head_id != result.student.head_id
    assert np.isfinite([result.student.fold_mean, result.baseline.fold_mean]).all()
    # subgroups: the student's row names its teacher (the labels-only baseline has none) and the report ends
    # with both heads' slices side by side, read here from the rows independently
    student_row, teacher_row = _row(store, result.student.head_id), _row(store, teacher)
    assert student_row["teacher_id"] == teacher and _row(store, result.baseline.head_id)["teacher_id"] is None
    expected = compare_slices(teacher_row["slices"], student_row["slices"], teacher_row["fold_mean"],
                              student_row["fold_mean"])
    assert result.subgroups.rows == expected.rows and result.render().endswith(expected.render())
    kinds = {r.slice for r in expected.rows}
    assert kinds == {"site", "hour", "overlap", "class_name", "frequency"}     # every head now has site and hour
    assert expected.headline_drop == pytest.approx(result.teacher.fold_mean - result.student.fold_mean)
    assert expected.largest_drop is not None and all(r.drop <= expected.largest_drop.drop
                                                     for r in expected.rows if r.counts)
    for kind in ("site", "hour"):                          # each scored window in exactly one site and hour bucket
        assert sum(r["n_windows"] for r in json.loads(student_row["slices"]) if r["slice"] == kind) \
            == student_row["n_eval_windows"]
