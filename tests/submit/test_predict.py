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
import soundfile as sf

from featurestore.errors import BundleError, SubmissionError
from models.bundle import HEADS_DIR, class_prior, load_bundle, write_record
from models.frame import FrameSpec
from models.metrics import competition_score
from models.training import train_head
from submit.head_predictor import build_extractors, predict_file
from submit.predict import predict_soundscape
from submit.submission import expected_ids_for_audio, validate_submission, write_submission

REPO = Path(__file__).resolve().parents[2]


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
    write_record(copy, head_id, range(5))  # a head trained so (its record.json would refuse an edited copy)
    with pytest.raises(BundleError, match="was trained on classical features version"):
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
    assert cli.returncode == 2 and cli.stderr.startswith("error: ") and "NaN" in cli.stderr


def test_a_different_model_file_is_refused(trained: tuple[Path, str], tmp_path: Path) -> None:
    store, head_id = trained
    copy = tmp_path / head_id
    shutil.copytree(store / HEADS_DIR / head_id, copy)
    params = json.loads((copy / "extractors.json").read_text())
    params["birdnet"]["model_sha256"] = "0" * 64  # trained with another BirdNET file than the installed one
    (copy / "extractors.json").write_text(json.dumps(params))
    write_record(copy, head_id, range(5))  # a head trained so (its record.json would refuse an edited copy)
    with pytest.raises(ValueError, match="installed BirdNET model: sha256 .* differs from the stored 000000000000"):
        build_extractors(load_bundle(copy))


# ---------------------------------------------------------------------------- bad test audio (issue 10, item 4)
def _rows(path: Path) -> dict[str, list[str]]:
    with open(path) as fh:
        return {row[0]: row[1:] for row in list(csv.reader(fh))[1:]}


def test_bad_test_files_get_every_row_from_the_prior_with_one_warning_each(
        trained: tuple[Path, str], submission: Path, demo_data: Path, tmp_path: Path) -> None:
    """Two real test soundscapes plus four bad files: predict writes a submission the validator accepts."""
    store, head_id = trained
    real = sorted((demo_data / "test_soundscapes").glob("*.ogg"))
    audio = tmp_path / "test_soundscapes"
    audio.mkdir()
    for path in real[:2]:
        shutil.copy(path, audio / path.name)
    bad = {name: audio / name for name in (
        "BC2026_Test_0101_S09_20240301_000000.ogg", "BC2026_Test_0102_S09_20240301_001000.wav",
        "BC2026_Test_0103_S09_20240301_002000.ogg", "BC2026_Test_0104_S09_20240301_003000.wav")}
    empty, nan, truncated, short = bad.values()
    empty.write_bytes(b"")                                                              # zero bytes
    sf.write(str(nan), np.full(60 * 32000, np.nan, np.float32), 32000, subtype="FLOAT")  # 60 s of NaN
    blob = real[2].read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])                                       # half the bytes
    samples, rate = sf.read(str(real[3]), dtype="float32")
    sf.write(str(short), samples[: 20 * rate], rate, subtype="FLOAT")                   # its first 20 s
    decoded_s = sf.info(str(truncated)).duration
    kept = round(decoded_s / 5)
    assert 20 < decoded_s < 40 and 4 <= kept <= 8

    out = tmp_path / "submission.csv"
    sample = demo_data / "sample_submission.csv"
    result = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(store), "--head-id", head_id,
                             "--audio", str(audio), "--out", str(out), "--sample", str(sample), "--workers", "2",
                             "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {empty}: empty file (0 bytes) (wrote the class prior for its 12 rows)",
        f"warning: {nan}: decoded audio contains NaN or inf (wrote the class prior for its 12 rows)",
        f"warning: {truncated}: only {kept} of its 12 expected 5-s windows hold decodable audio (header says "
        f"{decoded_s:.2f} s; truncated or short file): the class prior for the other {12 - kept} rows",
        f"warning: {short}: only 4 of its 12 expected 5-s windows hold decodable audio (header says 20.00 s; "
        "truncated or short file): the class prior for the other 8 rows"]
    expected = expected_ids_for_audio(audio)
    assert len(expected) == 6 * 12
    assert validate_submission(out, sample, expected) == 72
    cli = subprocess.run([sys.executable, "-m", "pipelines.validate_submission", str(out), "--sample", str(sample),
                          "--audio", str(audio)], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("valid: 72 rows"), cli.stderr
    assert not list(tmp_path.glob(".*.tmp"))

    got, alone = _rows(out), _rows(submission)   # ``submission``: the demo folder without the bad files
    assert list(got) == expected
    for path in real[:2]:   # the good files' rows are exactly those of the run without the bad files
        ids = [f"{path.stem}_{end}" for end in range(5, 65, 5)]
        assert [got[r] for r in ids] == [alone[r] for r in ids]
    bundle = load_bundle(store / HEADS_DIR / head_id)
    with open(sample) as fh:
        columns = next(csv.reader(fh))[1:]
    prior = class_prior(bundle)[[bundle.class_names.index(c) for c in columns]]
    prior_row = [f"{v:.6g}" for v in prior]

    def rows_of(path: Path) -> list[list[str]]:
        return [got[f"{path.stem}_{end}"] for end in range(5, 65, 5)]
    assert rows_of(empty) == rows_of(nan) == [prior_row] * 12
    for path, source, n in ((truncated, real[2], kept), (short, real[3], 4)):
        rows = rows_of(path)
        assert rows[n:] == [prior_row] * (12 - n) and prior_row not in rows[:n]
        # windows wholly inside the decodable audio score as in the complete file
        whole = [f"{source.stem}_{end}" for end in range(5, 5 * n, 5)]
        np.testing.assert_allclose(np.array(rows[: n - 1], float), np.array([alone[r] for r in whole], float),
                                   atol=1e-4)


def test_a_deleted_file_gets_prior_rows_and_says_file_not_found(trained: tuple[Path, str], tmp_path: Path) -> None:
    store, head_id = trained
    bundle = load_bundle(store / HEADS_DIR / head_id)
    gone = tmp_path / "BC2026_Test_0009_S01_20240101_000000.ogg"
    row_ids, probs, warning = predict_soundscape(gone, bundle, extractors=[])
    assert row_ids == [f"{gone.stem}_{end}" for end in range(5, 65, 5)]
    np.testing.assert_array_equal(probs, np.tile(class_prior(bundle), (12, 1)))
    assert warning == f"file not found: {gone} (wrote the class prior for its 12 rows)"


def test_write_submission_replaces_the_file_only_once_valid(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    out.write_text("previous\n")
    columns = ["a1", "b2"]
    probs = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    with pytest.raises(SubmissionError, match=rf"1 expected row_id\(s\) missing.*\({out} not written\)"):
        write_submission(out, ["x_5", "x_10"], probs, columns, expected_ids=["x_5", "x_10", "x_15"])
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]
    with pytest.raises(SubmissionError, match=r"line 3 \(x_10\), column b2: NaN"):
        write_submission(out, ["x_5", "x_10"], np.array([[0.1, 0.2], [0.3, np.nan]]), columns)
    assert out.read_text() == "previous\n"
    write_submission(out, ["x_5", "x_10"], probs, columns, expected_ids=["x_5", "x_10"])
    assert _rows(out) == {"x_5": ["0.1", "0.2"], "x_10": ["0.3", "0.4"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("row_id,a1,b2\nx_5,0.1,0.2\nJacaré_10,0.3,0.4\n".encode("latin-1"))
    with pytest.raises(SubmissionError, match=r"latin1\.csv line 3: not UTF-8 text"):
        validate_submission(latin1, ["row_id", *columns])


def test_inference_path_loads_no_store_libraries(trained: tuple[Path, str], demo_data: Path, tmp_path: Path) -> None:
    """Predicting from a head folder (as the Kaggle notebook does) imports neither duckdb nor pyarrow,
    and gives the same numbers as in this process."""
    store, head_id = trained
    head_dir = store / HEADS_DIR / head_id
    clip = sorted((demo_data / "test_soundscapes").glob("*.ogg"))[0]
    out = tmp_path / "probs.npy"
    code = ("import sys\nimport numpy as np\nfrom pathlib import Path\n"
            "from models.bundle import load_bundle\nfrom submit.head_predictor import build_extractors, predict_file\n"
            f"bundle = load_bundle({str(head_dir)!r})\n"
            f"rows, probs = predict_file(Path({str(clip)!r}), bundle, build_extractors(bundle))\n"
            f"np.save({str(out)!r}, probs)\n"
            "print(sorted(m for m in ('duckdb', 'pyarrow', 'pandas', 'optuna') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    bundle = load_bundle(head_dir)
    _, probs = predict_file(clip, bundle, build_extractors(bundle))
    np.testing.assert_array_equal(np.load(out), probs)


# ---------------------------------------------------------------------------- issue 23: items 5 and 13
FOCAL_CLIP = "bc2026/train_audio/1595929/iNat1242532.ogg"   # real, 32 kHz, 35 s


def _real_minute(shared_data: Path) -> tuple[np.ndarray, int]:
    """The real focal clip repeated to a competition soundscape's 60 s (32 kHz mono)."""
    samples, rate = sf.read(str(shared_data / FOCAL_CLIP), dtype="float32")
    return np.resize(samples, 60 * rate), rate


def test_two_files_with_one_stem_are_refused_before_any_work(demo_trained, shared_data: Path,
                                                              tmp_path: Path) -> None:
    """x.ogg and x.flac would both write x_5 ... x_60: refused at once, naming both, before any file is
    predicted (the submission used to be lost after all the work: ``row_id 'x_5' repeats``)."""
    from featurestore.errors import DataError
    from submit.predict import predict_submission
    from submit.submission import list_audio

    audio = tmp_path / "test_soundscapes"
    audio.mkdir()
    shutil.copy(shared_data / FOCAL_CLIP, audio / "x.ogg")                       # the real ogg
    samples, rate = sf.read(str(shared_data / FOCAL_CLIP), dtype="float32")
    sf.write(str(audio / "x.flac"), samples, rate)                             # the same clip as FLAC
    shutil.copy(shared_data / FOCAL_CLIP, audio / "BC2026_Test_0301_S01_20240301_000000.ogg")
    out = tmp_path / "submission.csv"
    started: list[int] = []
    refusal = (f"{audio}: x.flac and x.ogg have the same stem 'x', so they would write the same row ids (x_5, ...); "
               "the competition never has two files with one stem: remove or rename one and re-run")
    class Bar:                               # what make_progress returns (a tqdm-like bar)
        def update(self, n: int) -> None: ...

        def close(self) -> None: ...

    with pytest.raises(DataError) as caught:
        predict_submission(demo_trained.store, audio, out, head_id=demo_trained.head("classical"),
                           make_progress=lambda n, desc: started.append(n) or Bar())
    assert str(caught.value) == refusal
    assert started == [] and not out.exists() and not list(tmp_path.glob(".*.tmp"))   # refused before any work
    with pytest.raises(DataError, match="x.flac and x.ogg have the same stem 'x'"):
        expected_ids_for_audio(audio)                                          # the validator's rows: the same list
    # the runtime's choice (the Kaggle notebook must still write a file): keep the first, one warning
    said: list[str] = []
    kept = list_audio(audio, on_duplicate=said.append)
    assert [p.name for p in kept] == ["BC2026_Test_0301_S01_20240301_000000.ogg", "x.flac"]
    assert said == [refusal.split(";")[0] + ": kept the first file of each stem (x.flac) and skipped x.ogg"]


def test_a_low_rate_file_is_predicted_with_ingests_warning(demo_trained, shared_data: Path, tmp_path: Path) -> None:
    """A real minute at 8 kHz changes the outputs (up to 0.99 here) and used to pass silently; predict now says
    what ingest says of it, in the same words (one home: featurestore.audio_qa.low_rate_warning)."""
    from scipy.signal import resample_poly

    from featurestore.audio_qa import inspect_audio
    from submit.predict import predict_submission

    samples, rate = _real_minute(shared_data)
    audio = tmp_path / "test_soundscapes"
    audio.mkdir()
    full = audio / "BC2026_Test_0201_S01_20240301_000000.wav"
    low = audio / "BC2026_Test_0202_S01_20240301_001000.wav"
    sf.write(str(full), samples, rate, subtype="PCM_16")
    sf.write(str(low), resample_poly(samples, 1, rate // 8000).astype(np.float32), 8000, subtype="PCM_16")
    said: list[str] = []
    summary = predict_submission(demo_trained.store, audio, tmp_path / "submission.csv",
                                 head_id=demo_trained.head("classical"), on_warning=said.append)
    words = ("sample rate 8000 Hz is below 32000 Hz (a low-rate or wrong file: the models see it upsampled, "
             "with nothing above 4 kHz)")
    assert said == summary.warnings == [f"{low}: {words}"]
    assert inspect_audio(low, "test_soundscapes", low.name)["warning"] == f"{low}: {words}"   # ingest's line
    rows = _rows(summary.path)
    diff = max(np.abs(np.array(rows[f"{low.stem}_{end}"], float) - np.array(rows[f"{full.stem}_{end}"], float)).max()
               for end in range(5, 65, 5))
    assert diff > 0.3          # why it is worth a warning: the same minute, scored very differently


def test_names_that_are_not_competition_soundscapes_get_one_warning(demo_trained, shared_data: Path,
                                                                     tmp_path: Path) -> None:
    """Real files with non-competition names are predicted with one warning line for the run (their count and a
    few examples), not one per file and not silence (they used to pass without a word)."""
    from submit.predict import predict_submission
    from submit.submission import name_warning

    samples, rate = _real_minute(shared_data)
    audio = tmp_path / "test_soundscapes"
    audio.mkdir()
    for name in ("BC2026_Test_0001_S05_20250227_010002.wav", "BC2026_Test_0002_S05_20251327_010002.wav", "x.wav"):
        sf.write(str(audio / name), samples, rate, subtype="PCM_16")            # the second: month 13
    said: list[str] = []
    summary = predict_submission(demo_trained.store, audio, tmp_path / "submission.csv",
                                 head_id=demo_trained.head("classical"), on_warning=said.append)
    rule = "(<id>_<Train|Test>_<n>_<site>_<YYYYMMDD>_<HHMMSS>)"
    after = "predicted all the same (row ids from their names), with no site or hour for a stacked head's priors"
    assert said == [f"2 of 3 audio file(s) in {audio} are not named as competition soundscapes {rule}: "
                    f"BC2026_Test_0002_S05_20251327_010002.wav, x.wav; {after}"]
    assert summary.n_rows == 3 * 12 and "x_60" in _rows(summary.path)
    many = [audio / n for n in ("a.ogg", "b.ogg", "BC2026_Test_0001_S05_20250227_010002.ogg", "c.ogg", "d.ogg")]
    assert name_warning(many) == (f"4 of 5 audio file(s) in {audio} are not named as competition soundscapes "
                                  f"{rule}: a.ogg, b.ogg, c.ogg and 1 more; {after}")
    assert name_warning(many[2:3]) is None


def test_an_empty_file_is_reported_in_embeds_words(demo_trained, tmp_path: Path) -> None:
    """A real 0-byte file: predict's warning is the one line embed and ingest give (featurestore.audio_qa)."""
    from featurestore.audio_qa import unreadable_audio
    from submit.predict import file_rows, open_predictor

    empty = tmp_path / "BC2026_Test_0401_S01_20240301_000000.ogg"
    empty.write_bytes(b"")
    predictor = open_predictor(demo_trained.store / HEADS_DIR / demo_trained.head("classical"))
    _, probs, warning, usable = file_rows(empty, predictor)
    assert str(unreadable_audio(empty)) == f"{empty}: empty file (0 bytes)"
    assert warning == f"{empty}: empty file (0 bytes) (wrote the class prior for its 12 rows)"
    assert not usable.any() and np.array_equal(probs, np.tile(predictor.prior, (12, 1)))
