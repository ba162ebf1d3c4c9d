"""predict → submission → validator round trip on the demo test soundscapes, and the validator's refusals."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from featurestore.store import StoreError
from models.frame import FrameSpec
from models.metrics import competition_score
from models.predict import build_extractors, load_bundle, predict_file
from models.submission import SubmissionError, validate_submission
from models.training import HEADS_DIR, train_head
from pipelines.validate_submission import expected_ids_for_audio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(demo_embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("predict") / "store"
    shutil.copytree(demo_embedded_store, store)
    result = train_head(store, "linear", FrameSpec("birdnet,classical"))
    return store, result.head_id


@pytest.fixture(scope="module")
def submission(trained: tuple[Path, str], demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store, head_id = trained
    out = tmp_path_factory.mktemp("sub") / "submission.csv"
    result = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(store), "--head-id", head_id,
                             "--audio", str(demo_data / "test_soundscapes"), "--out", str(out),
                             "--sample", str(demo_data / "sample_submission.csv"), "--workers", "2"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(validated)" in result.stdout
    return out


def test_submission_is_valid_complete_and_scores_well(submission: Path, demo_data: Path) -> None:
    expected = expected_ids_for_audio(demo_data / "test_soundscapes")
    assert len(expected) == 12 * len(list((demo_data / "test_soundscapes").glob("*.ogg")))
    assert validate_submission(submission, demo_data / "sample_submission.csv", expected) == len(expected)
    with open(submission) as fh, open(demo_data / "sample_submission.csv") as ref:
        assert next(csv.reader(fh)) == next(csv.reader(ref))
    solution = pacsv.read_csv(demo_data.parent / "test_solution.csv",
                              convert_options=pacsv.ConvertOptions(column_types={"row_id": "string"}))
    sub = pacsv.read_csv(submission, convert_options=pacsv.ConvertOptions(column_types={"row_id": "string"}))
    assert competition_score(solution, sub) > 0.85


def test_predict_path_equals_the_stored_features_path(trained: tuple[Path, str], demo_data: Path) -> None:
    """The in-memory inference features give the same probabilities as the OOF-time store features."""
    from embed.features import load_window_features
    from featurestore.store import FeatureStore

    store, head_id = trained
    bundle = load_bundle(store / HEADS_DIR / head_id)
    extractors = build_extractors(bundle)
    path = sorted((demo_data / "train_soundscapes").glob("*.ogg"))[0]
    row_ids, probs = predict_file(path, bundle, extractors)
    ids = [f"train_soundscapes/{path.name}@{s}" for s in range(0, 60, 5)]
    with FeatureStore.open(store, read_only=True) as fs:
        got, X, _, _ = load_window_features(fs, "birdnet,classical", window_ids=ids)
    assert got == ids
    stored = np.mean([h.predict_proba(X) for h in bundle.folds], axis=0)
    np.testing.assert_allclose(probs, stored, atol=2e-3)
    assert row_ids == [f"{path.stem}_{s}" for s in range(5, 65, 5)]


def test_extractor_version_mismatch_is_refused(trained: tuple[Path, str], tmp_path: Path) -> None:
    store, head_id = trained
    copy = tmp_path / head_id
    shutil.copytree(store / HEADS_DIR / head_id, copy)
    params = json.loads((copy / "extractors.json").read_text())
    params["classical"]["classical"]["n_mels"] += 1  # as if the code default had changed since training
    (copy / "extractors.json").write_text(json.dumps(params))
    with pytest.raises(StoreError, match="was trained on classical features version"):
        build_extractors(load_bundle(copy))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with open(src) as fh:
        rows = list(csv.reader(fh))
    rows = edit(rows)
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return dst


def test_validator_rejects_order_missing_row_and_nan(submission: Path, demo_data: Path, tmp_path: Path) -> None:
    sample = demo_data / "sample_submission.csv"
    expected = expected_ids_for_audio(demo_data / "test_soundscapes")

    def swap(rows):
        return [[r[0], r[2], r[1], *r[3:]] for r in rows]
    with pytest.raises(SubmissionError, match="wrong order: column 2 is"):
        validate_submission(_rewrite(submission, tmp_path / "a.csv", swap), sample, expected)
    with pytest.raises(SubmissionError, match=r"1 expected row_id\(s\) missing"):
        validate_submission(_rewrite(submission, tmp_path / "b.csv", lambda rows: rows[:-1]), sample, expected)

    def nan(rows):
        rows[3][4] = "nan"
        return rows
    with pytest.raises(SubmissionError, match=r"line 4 \(.*\), column .*: NaN"):
        validate_submission(_rewrite(submission, tmp_path / "c.csv", nan), sample, expected)
    cli = subprocess.run([sys.executable, "-m", "pipelines.validate_submission", str(tmp_path / "c.csv"),
                          "--sample", str(sample)], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 1 and "invalid:" in cli.stdout and "NaN" in cli.stdout


def test_a_different_model_file_is_refused(trained: tuple[Path, str], tmp_path: Path) -> None:
    store, head_id = trained
    copy = tmp_path / head_id
    shutil.copytree(store / HEADS_DIR / head_id, copy)
    params = json.loads((copy / "extractors.json").read_text())
    params["birdnet"]["model_sha256"] = "0" * 64  # trained with another BirdNET file than the installed one
    (copy / "extractors.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match="installed BirdNET model: sha256 .* differs from the stored 000000000000"):
        build_extractors(load_bundle(copy))
