"""The stacked head end to end on the demo: run_stack's bundle, OOF table and experiments row; the
pipelines.stack job (one run and an Optuna study); predicting through the stack, consistent with the
stacker applied offline to the base heads' own predictions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from models.bundle import HEADS_DIR
from models.experiments import BoardFilter, ranked
from models.frame import FrameSpec
from models.metrics import competition_score
from models.training import OOF_DIR, train_head
from stack.bundle import FULL_DIR, is_stack_dir, load_stack
from stack.inputs import StackInputs, load_inputs
from stack.post import FileLayout, apply_post, sigmoid
from stack.run import run_stack
from stack.stackers import score_oof
from submit.predict import predict_audio
from submit.submission import expected_ids_for_audio, list_audio

REPO = Path(__file__).resolve().parents[2]
POST = [("smooth", {"kernel": [1, 2, 1]}), ("filescale", {"a": 0.5, "top_k": 2})]


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "stack_pipeline")


@pytest.fixture(scope="module")
def heads(demo_trained) -> list[str]:
    """Two base heads with different views and poolings (linear on BirdNET mean, LightGBM on BirdNET max)."""
    return [demo_trained.head("linear"), demo_trained.head("lgbm")]


@pytest.fixture(scope="module")
def stacked(demo_trained):
    """The session's ridge stack over the two heads plus BirdNET's zero-shot logits, with site/hour priors and
    two post steps (conftest.STACK_RIDGE, STACK_POST; its bundle and OOF file live in the session store)."""
    return demo_trained.stack


@pytest.fixture(scope="module")
def data(store: Path, heads: list[str]) -> StackInputs:
    return load_inputs(store, heads, zero_shot=("birdnet_logits",))


def test_run_stack_writes_a_bundle_that_reloads_to_the_same_models(stacked, data: StackInputs) -> None:
    folder = stacked.bundle_dir
    assert folder.name == stacked.head_id and folder.name.startswith("stack-") and is_stack_dir(folder)
    assert not list(folder.rglob("*.pkl")) and not list(folder.parent.glob(".partial-*"))
    bundle = load_stack(folder)
    assert bundle.config.base_heads == tuple(data.heads[:2]) and bundle.config.zero_shot == ("birdnet_logits",)
    assert bundle.config.stacker == "ridge" and [s[0] for s in bundle.config.post] == ["smooth", "filescale"]
    assert bundle.config.head_id == stacked.head_id
    assert np.array_equal(bundle.layout.available, data.available)
    assert sorted(bundle.folds) == sorted(stacked.cv.models)
    for k, fitted in stacked.cv.models.items():
        held = data.folds == k
        reloaded = bundle.folds[k]
        assert set(reloaded.train_windows.tolist()) == set(fitted.train_windows.tolist())
        assert [p.key for p in reloaded.priors] == ["site", "hour"]
        np.testing.assert_allclose(reloaded.predict(data.subset(held)), fitted.predict(data.subset(held)),
                                   rtol=0, atol=1e-12)
    # the full-data model learnt from every labelled soundscape window that has a fold
    assert set(bundle.full.train_windows.tolist()) == set(data.window_ids[data.folds != -1].tolist())


def test_level2_fold_models_on_disk_never_saw_their_fold(store: Path, stacked) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
    bundle = load_stack(stacked.bundle_dir)
    assert len(bundle.folds) > 1
    for k, fitted in bundle.folds.items():
        assert len(fitted.train_windows) and not any(fold_of[w] == k for w in fitted.train_windows.tolist())


def test_oof_table_has_a_heads_layout_and_rescores_to_the_experiments_row(store: Path, heads: list[str], stacked,
                                                                           data: StackInputs) -> None:
    base = pq.read_table(store / OOF_DIR / f"{heads[0]}.parquet")
    oof = pq.read_table(stacked.oof_path)
    assert oof.column_names == base.column_names and oof.schema == base.schema
    assert set(oof.column("head_id").to_pylist()) == {stacked.head_id}
    done = data.folds != -1
    ids = oof.column("window_id").to_pylist()
    assert ids == data.window_ids[done].tolist() and set(oof.column("source").to_pylist()) == {"train_soundscapes"}
    assert oof.column("fold").to_pylist() == data.folds[done].tolist()
    P = np.column_stack([oof.column(c).to_numpy() for c in data.class_names])
    np.testing.assert_array_equal(P, stacked.cv.oof[done].astype(np.float32))
    with FeatureStore.open(store, read_only=True) as fs:
        row = fs.rows("SELECT head, mode, tag, fold_mean, fold_std, fold_scores, n_eval_windows, oof_auc "
                      "FROM experiments WHERE head_id = ?", [stacked.head_id])
        board = ranked(fs, BoardFilter(mode="full")).to_pylist()
    assert len(row) == 1
    head, mode, tag, fold_mean, fold_std, fold_scores, n_eval, pooled = row[0]
    assert (head, mode, tag) == ("stack", "full", "full")
    full = np.zeros(data.Y.shape)
    full[done] = P
    rescored = score_oof(data, full)
    assert fold_mean == pytest.approx(stacked.cv.fold_mean, abs=1e-12)
    assert rescored.fold_mean == pytest.approx(fold_mean, abs=1e-4)       # float32 OOF on disk
    assert {int(k): v for k, v in json.loads(fold_scores).items()} == pytest.approx(stacked.cv.score.fold_scores)
    assert n_eval == int((data.source == "train_soundscapes").sum()) and 0.5 < pooled <= 1.0
    ranked_ids = [r["head_id"] for r in board]
    assert {stacked.head_id, *heads} <= set(ranked_ids)     # one board ranks the stack with its base heads


def test_stacking_a_stack_or_an_unknown_head_is_refused(store: Path, heads: list[str], stacked) -> None:
    with pytest.raises(UserInputError, match="is a stacked head"):
        run_stack(store, [heads[0], stacked.head_id], "blend")
    with pytest.raises(UserInputError, match="no trained head 'nosuch'"):
        run_stack(store, [heads[0], "nosuch"], "blend")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.stack", *args], cwd=REPO, capture_output=True, text=True)


def test_stack_job_help_run_and_study(store: Path, heads: list[str]) -> None:
    import optuna

    helped = _cli("--help")
    assert helped.returncode == 0 and "Examples:" in helped.stdout and "--trials" in helped.stdout
    bad = _cli("--store", str(store), "--heads", heads[0], "--method", "ridge", "--post", "nosuch")
    assert bad.returncode == 2 and "unknown post-processing op 'nosuch'" in bad.stderr
    one = _cli("--store", str(store), "--heads", ",".join(heads), "--method", "blend", "--params",
               '{"method": "rank"}', "--post-json", '[["filescale", {"a": 0.3}]]')
    assert one.returncode == 0, one.stderr[-2000:]
    head_id = one.stdout.split()[2]
    assert head_id.startswith("stack-") and (store / HEADS_DIR / head_id / FULL_DIR).is_dir()
    study = _cli("--store", str(store), "--heads", ",".join(heads), "--method", "blend", "--post", "filescale",
                 "--trials", "4", "--study", "blend-demo")
    assert study.returncode == 0, study.stderr[-2000:]
    loaded = optuna.load_study(study_name="blend-demo", storage=f"sqlite:///{store / 'optuna.db'}")
    trials = loaded.trials
    assert len(trials) == 4
    assert trials[0].params == {"method": "logit", "w0": 1.0, "w1": 1.0, "post0.a": 0.5, "post0.top_k": 2,
                                "post0.form": "prob"}           # the defaults first
    for t in trials:
        folds = {int(k[5:-4]): v for k, v in t.user_attrs.items() if k.startswith("fold_") and k.endswith("_auc")}
        assert t.intermediate_values == pytest.approx({k: v for k, v in folds.items() if v is not None})
        assert t.value == pytest.approx(np.mean([v for v in folds.values() if v is not None]))
    best_id = loaded.user_attrs["best_head_id"]
    with FeatureStore.open(store, read_only=True) as fs:
        rows = fs.rows("SELECT tag, fold_mean FROM experiments WHERE head_id = ?", [best_id])
    assert rows == [("tuned", pytest.approx(loaded.best_value, abs=1e-12))]
    again = _cli("--store", str(store), "--heads", heads[0], "--method", "blend", "--post", "filescale",
                 "--trials", "1", "--study", "blend-demo")
    assert again.returncode == 2 and "was made for another set-up" in again.stderr


def _offline(store: Path, stack_dir: Path, audio: Path) -> tuple[list[str], np.ndarray]:
    """The stacker applied offline: each base head predicted on its own (predict_audio of the head),
    BirdNET's zero-shot logits embedded separately, then the full-data model and the post chain."""
    from embed.features import embed_file_with_names, extractors_from_store
    from submit.submission import file_window_ids

    bundle = load_stack(stack_dir)
    classes = bundle.class_names
    blocks, row_ids = [], None
    for head in bundle.config.base_heads:
        ids, probs, _ = predict_audio(stack_dir.parent / head, audio, classes, workers=1)
        assert row_ids is None or ids == row_ids
        row_ids = ids
        blocks.append(probs)
    with FeatureStore.open(store, read_only=True) as fs:
        extractors = extractors_from_store(fs, bundle.layout.zero_shot_versions)
    z_rows, window_ids = [], []
    for path in list_audio(audio):
        starts, Z, names = embed_file_with_names(path, extractors, views=["birdnet_logits"])["birdnet_logits"]
        window_ids += file_window_ids(path, starts)[0]
        col = {n.rpartition(":")[2]: j for j, n in enumerate(names)}
        block = np.full((len(starts), len(classes)), 0.5)
        for c, name in enumerate(classes):
            if bundle.layout.available[2, c]:
                block[:, c] = sigmoid(Z[:, col[name]])
        z_rows.append(block)
    blocks.append(np.vstack(z_rows))
    P = np.stack(blocks).astype(np.float32)
    n = P.shape[1]
    names = [w.split("/", 1)[1].split("@")[0].split("_") for w in window_ids]   # BC2026_Test_0001_S05_<day>_<hhmmss>
    sites = np.array([parts[3] for parts in names], dtype=object)
    hours = np.array([int(parts[5][:2]) for parts in names], dtype=np.int64)
    data = StackInputs(np.asarray(window_ids), bundle.layout.sources, classes,
                       np.asarray(bundle.layout.class_groups, dtype=object), P, bundle.layout.available,
                       np.zeros((n, len(classes)), np.float32), np.full(n, -1), np.full(n, "test_soundscapes", object),
                       sites, hours)
    p = bundle.full.predict(data)
    return row_ids, apply_post(p, bundle.config.post, FileLayout(window_ids), data.class_groups)


def test_predict_through_the_stack_equals_the_stacker_applied_offline(store: Path, stacked, demo_data: Path,
                                                                       tmp_path: Path) -> None:
    audio = demo_data / "test_soundscapes"
    out = tmp_path / "submission.csv"
    run = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(store), "--head-id",
                          stacked.head_id, "--audio", str(audio), "--out", str(out), "--sample",
                          str(demo_data / "sample_submission.csv"), "--workers", "2"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"from head {stacked.head_id} (validated)" in run.stdout
    solution = pacsv.read_csv(demo_data.parent / "test_solution.csv",
                              convert_options=pacsv.ConvertOptions(column_types={"row_id": "string"}))
    sub = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(column_types={"row_id": "string"}))
    assert sub.column("row_id").to_pylist() == expected_ids_for_audio(audio)
    assert competition_score(solution, sub) > 0.8

    classes = load_stack(stacked.bundle_dir).class_names
    # the bundle needs no store: copy only heads/ elsewhere and predict from there; against the stacker applied
    # offline on two of the files (the post chain is per file: two files, as in the context-head test below)
    heads_copy = tmp_path / "heads"
    for name in (stacked.head_id, *load_stack(stacked.bundle_dir).config.base_heads):
        shutil.copytree(stacked.bundle_dir.parent / name, heads_copy / name)
    two = tmp_path / "two"
    two.mkdir()
    for f in list_audio(audio)[:2]:
        (two / f.name).symlink_to(f)
    row_ids, probs, warnings = predict_audio(heads_copy / stacked.head_id, two, classes, workers=1)
    assert not warnings and row_ids == expected_ids_for_audio(two)
    off_ids, offline = _offline(store, stacked.bundle_dir, two)
    assert off_ids == row_ids
    np.testing.assert_allclose(probs, offline, rtol=0, atol=1e-6)
    at = {r: i for i, r in enumerate(sub.column("row_id").to_pylist())}
    written = np.column_stack([sub.column(c).to_numpy() for c in classes])[[at[r] for r in row_ids]]
    np.testing.assert_allclose(written, probs, rtol=1e-5, atol=1e-7)     # the CSV's 6 significant digits


def test_rows_without_audio_get_the_stacks_own_prior_and_leave_the_other_rows_alone(
        store: Path, stacked, data: StackInputs, demo_data: Path, tmp_path: Path) -> None:
    """A corrupt file's rows get the full level-2 model's label rate over its training windows (hand
    recomputed); a truncated file is stacked on its decodable windows only (its file features see no
    prior rows) and gets the stack prior on the rest; the good files are unchanged by either."""
    import soundfile as sf

    bundle = load_stack(stacked.bundle_dir)
    trained = np.isin(data.window_ids, bundle.full.train_windows)
    assert trained.sum() == len(bundle.full.train_windows) > 0
    np.testing.assert_allclose(bundle.full.class_prior, data.Y[trained].mean(axis=0), rtol=0, atol=1e-12)

    good = list_audio(demo_data / "test_soundscapes")[:2]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in good:
        shutil.copy(path, mixed / path.name)
    y, sr = sf.read(good[0])
    truncated = mixed / good[0].name.replace("_Test_0", "_Test_9")          # same site/hour, a new file stem
    sf.write(truncated, y[: int(22.5 * sr)], sr, format="OGG", subtype="VORBIS")
    corrupt = mixed / good[1].name.replace("_Test_0", "_Test_8")
    corrupt.write_bytes(b"OggS" + bytes(500))
    classes = bundle.class_names
    row_ids, probs, warnings = predict_audio(stacked.bundle_dir, mixed, classes, workers=1)
    assert len(warnings) == 2 and any(corrupt.name in w for w in warnings) and any(truncated.name in w for w in warnings)
    rows = {r: p for r, p in zip(row_ids, probs, strict=True)}

    prior = np.clip(bundle.full.class_prior, 0, 1).astype(np.float32)
    corrupt_rows = [r for r in row_ids if r.startswith(corrupt.stem)]
    assert len(corrupt_rows) == 12
    for r in corrupt_rows:
        np.testing.assert_allclose(rows[r], prior, atol=1e-7)

    only_good = tmp_path / "good"
    only_good.mkdir()
    for path in good:
        shutil.copy(path, only_good / path.name)
    good_ids, good_probs, _ = predict_audio(stacked.bundle_dir, only_good, classes, workers=1)
    np.testing.assert_allclose(np.stack([rows[r] for r in good_ids]), good_probs, rtol=0, atol=1e-6)

    t_ids = [r for r in row_ids if r.startswith(truncated.stem)]
    assert len(t_ids) == 12
    decodable = [r for r in t_ids if int(r.rsplit("_", 1)[1]) <= 20]         # windows ending at 5..20 s hold audio
    assert len(decodable) == 4
    from stack.apply import apply_stack, unlabelled_inputs
    from submit.stack_predictor import StackPredictor, window_ids_of

    predictor = StackPredictor(stacked.bundle_dir)
    ids4, block = predictor.predict_file(truncated)
    assert ids4 == decodable
    S, C = len(bundle.layout.sources), len(classes)
    P = block.reshape(4, S, C).transpose(1, 0, 2)
    expected = apply_stack(bundle, unlabelled_inputs(bundle, window_ids_of(truncated, 4), P))
    np.testing.assert_allclose(np.stack([rows[r] for r in decodable]), expected, rtol=0, atol=1e-6)
    for r in t_ids[4:]:
        np.testing.assert_allclose(rows[r], prior, atol=1e-7)


def test_stack_over_a_context_head_learning_from_focal_windows_predicts_like_offline(
        store: Path, heads: list[str], demo_data: Path, tmp_path: Path) -> None:
    """A base head with neighbour context features (predict must add them per file) and a level-2 model
    that also learns from focal windows (``use_focal``): fold models still never see their fold, the
    headline is still scored on soundscape windows, and predict equals the stacker applied offline."""
    # context on the classical statistics: the same per-file context path as on BirdNET, at a tenth of the width
    ctx = train_head(store, "linear", FrameSpec("classical", context=True)).head_id
    run = run_stack(store, [ctx, heads[0]], "ridge", {"use_focal": True, "focal_weight": 0.5, "min_positives": 3},
                    POST, zero_shot=("birdnet_logits",))
    bundle = load_stack(run.bundle_dir)
    full = bundle.full.train_windows.tolist()
    assert any(w.startswith("train_audio/") for w in full) and any(w.startswith("train_soundscapes/") for w in full)
    with FeatureStore.open(store, read_only=True) as fs:
        fold_of = dict(fs.rows("SELECT window_id, fold FROM folds"))
        scored_on = fs.rows("SELECT scored_on FROM experiments WHERE head_id = ?", [run.head_id])
    for k, fitted in bundle.folds.items():
        assert any(w.startswith("train_audio/") for w in fitted.train_windows.tolist())
        assert not any(fold_of.get(w) == k for w in fitted.train_windows.tolist())
    assert run.cv.score.scored_on == "soundscape" and scored_on == [("soundscape",)]
    assert run.cv.score.eval_mask.sum() < len(full)          # focal rows train, never score

    audio = tmp_path / "audio"                            # two test files: context is per file
    audio.mkdir()
    for f in list_audio(demo_data / "test_soundscapes")[:2]:
        (audio / f.name).symlink_to(f)
    row_ids, probs, warnings = predict_audio(run.bundle_dir, audio, bundle.class_names, workers=1)
    assert not warnings
    off_ids, offline = _offline(store, run.bundle_dir, audio)
    assert off_ids == row_ids
    np.testing.assert_allclose(probs, offline, rtol=0, atol=1e-6)
