"""A real competition-layout store with one labelled Pantanal soundscape whose frogs call in every window.

Built from ../shared/data/bc2026 (real taxonomy, the 4 real CC0 focal clips with their real
train.csv rows, the real expert labels of BC2026_Train_0014_S13: frogs 65380 and 22961 are
positive in all 12 windows) plus a 60-s soundscape and two test soundscapes assembled from the
real clips and the real field recording. Every head kind must train, keep its fold models, rank
on the leaderboard with the degenerate classes counted, and predict a valid submission.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from embed.job import run_embed
from featurestore.folds import make_folds
from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore
from models.bundle import HEADS_DIR
from models.experiments import ranked
from models.frame import FrameSpec, class_names_of
from models.metrics import MetricError, competition_auc
from models.training import train_head
from submit.predict import predict_audio
from submit.submission import expected_ids_for_audio, validate_submission, write_submission

REPO = Path(__file__).resolve().parents[2]
LABELLED = "BC2026_Train_0014_S13_20220228_214500.ogg"
TESTS = ("BC2026_Test_0001_S13_20220301_214500.ogg", "BC2026_Test_0002_S08_20250607_070007.ogg")
SR = 32000
TINY_LGBM = {"inner_valid_fraction": 0.0, "n_estimators": 30, "num_leaves": 4, "min_child_samples": 2, "n_jobs": 1}


def _real_sources(shared: Path) -> list[np.ndarray]:
    clips = [sf.read(str(p), dtype="float32", always_2d=True)[0].mean(axis=1)
             for p in sorted((shared / "bc2026" / "train_audio").rglob("*.ogg"))]
    field, rate = sf.read(str(shared / "field" / "spinetail.wav"), dtype="float32", always_2d=True)
    clips.append(resample_poly(field.mean(axis=1), SR, rate).astype(np.float32))  # 44.1 kHz -> 32 kHz
    return [c for c in clips if len(c)]


def _soundscape(sources: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """60 s of the real recordings laid end to end in a random order, at random gains, over faint noise."""
    out = rng.normal(0, 0.003, 60 * SR).astype(np.float32)
    pos = 0
    while pos < len(out):
        clip = sources[rng.integers(len(sources))]
        n = min(len(clip), len(out) - pos)
        out[pos:pos + n] += clip[:n] * rng.uniform(0.3, 1.0)
        pos += n
    return out / max(1.0, float(np.abs(out).max()) / 0.9)


@pytest.fixture(scope="module")
def real_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_degenerate")
    data = root / "data"
    src = shared_data / "bc2026"
    data.mkdir()
    for name in ("taxonomy.csv", "train.csv", "sample_submission.csv"):
        shutil.copy(src / name, data / name)
    shutil.copytree(src / "train_audio", data / "train_audio")
    with open(src / "train_soundscapes_labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(data / "train_soundscapes_labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + [r for r in rows[1:] if r[0] == LABELLED])
    rng = np.random.default_rng(14)
    sources = _real_sources(shared_data)
    for folder, names in (("train_soundscapes", (LABELLED,)), ("test_soundscapes", TESTS)):
        (data / folder).mkdir()
        for name in names:
            sf.write(str(data / folder / name), _soundscape(sources, rng), SR, format="OGG", subtype="VORBIS")
    store = root / "store"
    run_ingest(data, store, workers=1)
    make_folds(store, k=3)
    run_embed(store, ("birdnet",), workers=1, hop_s=3.0)  # one BirdNET frame per window: 3x cheaper
    return store


@pytest.fixture(scope="module")
def runs(real_store: Path) -> dict:
    return {
        "prior": train_head(real_store, "prior", FrameSpec("birdnet")),
        "zeroshot": train_head(real_store, "zeroshot", FrameSpec("birdnet_logits")),
        "linear": train_head(real_store, "linear", FrameSpec("birdnet")),
        "lgbm": train_head(real_store, "lgbm", FrameSpec("birdnet"), overrides=TINY_LGBM),
    }


def test_the_labelled_soundscape_really_has_frogs_in_every_window(real_store: Path) -> None:
    with FeatureStore.open(real_store, read_only=True) as fs:
        labels = [set(r[0]) for r in fs.rows("SELECT labels FROM soundscape_labels WHERE filename = ?", [LABELLED])]
    assert len(labels) == 12
    always = set.intersection(*labels)
    assert {"65380", "22961"} <= always
    classes = sorted(set.union(*labels))
    Y = np.array([[c in lab for c in classes] for lab in labels], dtype=int)
    with pytest.raises(MetricError, match="positive in every window"):  # Kaggle's scorer would refuse it too
        competition_auc(Y, np.random.default_rng(0).random(Y.shape), classes)


def test_every_head_trains_keeps_its_folds_and_counts_the_degenerate_classes(real_store: Path, runs: dict) -> None:
    for kind, run in runs.items():
        assert run.scored_on == "soundscape", (kind, run.render())
        assert run.n_classes_degenerate >= 2, (kind, run.render())
        assert {"65380", "22961"} <= set(run.report.degenerate)
        assert run.n_classes_scored >= 1 and 0.0 <= run.fold_mean <= 1.0
        folds = sorted((real_store / HEADS_DIR / run.head_id).glob("fold_*/head.json"))
        assert len(folds) >= 2, kind
    assert runs["prior"].fold_mean == pytest.approx(0.5) and runs["prior"].fold_std == pytest.approx(0.0)


def test_headline_is_recomputed_independently_from_the_oof_file(real_store: Path, runs: dict) -> None:
    """Fold mean = sklearn's macro AUC over the classes with a positive AND a negative in that fold."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    with FeatureStore.open(real_store, read_only=True) as fs:
        classes = class_names_of(fs)
        truth = {w: set(labels) for w, labels in fs.rows(
            "SELECT w.window_id, l.labels FROM windows w JOIN soundscape_labels l "
            "ON w.filename = l.filename AND w.start_s = l.start_s")}
    oof = pq.read_table(runs["linear"].oof_path).to_pylist()
    per_fold = {}
    for fold in {r["fold"] for r in oof if r["window_id"] in truth}:
        rows = [r for r in oof if r["window_id"] in truth and r["fold"] == fold]
        Y = np.array([[c in truth[r["window_id"]] for c in classes] for r in rows], dtype=int)
        P = np.array([[r[c] for c in classes] for r in rows])
        keep = (Y.sum(axis=0) > 0) & (Y.sum(axis=0) < len(rows))
        per_fold[fold] = roc_auc_score(Y[:, keep], P[:, keep], average="macro")
    assert runs["linear"].fold_mean == pytest.approx(np.mean(list(per_fold.values())), abs=1e-9)


def test_leaderboard_shows_them_and_each_head_predicts_a_valid_submission(real_store: Path, runs: dict,
                                                                           shared_data: Path) -> None:
    with FeatureStore.open(real_store, read_only=True) as fs:
        board = {r["head_id"]: r for r in ranked(fs).to_pylist()}
        columns = class_names_of(fs)
    data = real_store.parent / "data"
    sample = shared_data / "bc2026" / "sample_submission.csv"
    for run in runs.values():
        row = board[run.head_id]
        assert row["mode"] == "full" and row["scored_on"] == "soundscape" and row["n_classes_degenerate"] >= 2
        row_ids, probs, errors = predict_audio(real_store / HEADS_DIR / run.head_id, data / "test_soundscapes",
                                               columns, workers=1)
        assert not errors
        out = real_store.parent / f"{run.kind}.csv"
        write_submission(out, row_ids, probs, columns)
        assert validate_submission(out, sample, expected_ids_for_audio(data / "test_soundscapes")) == 24
    shown = subprocess.run([sys.executable, "-m", "pipelines.leaderboard", "--store", str(real_store)], cwd=REPO,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "degen" in shown.stdout and all(run.head_id in shown.stdout for run in runs.values())
