"""Ingest of the real competition files, bad audio, idempotence and kill -9 resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from featurestore.competition import DataError
from featurestore.ingest import run_ingest
from featurestore.sqlfiles import list_sql_files, run_sql_file
from featurestore.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]
REAL_CLIPS = ["1161364/iNat1264238.ogg", "1176823/iNat1269019.ogg", "1595929/iNat1242529.ogg",
              "1595929/iNat1242532.ogg"]


def test_real_store_tables(bc2026_store: Path, shared_data: Path) -> None:
    with FeatureStore.open(bc2026_store, read_only=True) as store:
        assert store.count("taxonomy") == 234
        assert dict(store.rows("SELECT class_name, count(*) FROM taxonomy GROUP BY 1")) == {
            "Aves": 162, "Amphibia": 35, "Insecta": 28, "Mammalia": 8, "Reptilia": 1}
        assert store.count("soundscape_labels") == 739
        assert store.first("SELECT count(DISTINCT filename), count(DISTINCT site) FROM soundscape_labels") == (66, 9)
        assert store.first("SELECT count(DISTINCT l) FROM (SELECT unnest(labels) AS l FROM soundscape_labels)") == (75,)
        rec = store.sql("SELECT * FROM recordings ORDER BY filename").to_pylist()
        assert [r["filename"] for r in rec] == sorted(REAL_CLIPS)
        assert rec[0]["secondary_labels"] == [] and rec[0]["author"] == "Alexandre S. Michelotto"
        assert rec[0]["latitude"] == pytest.approx(-19.8713)
        # every row carries provenance
        for table in ("taxonomy", "recordings", "soundscape_labels", "windows", "audio_inventory"):
            assert store.first(f"SELECT count(*) FROM {table} WHERE ingest_version IS NULL OR ingested_at IS NULL") == (0,)
        inv = {r["path"]: r for r in store.sql("SELECT * FROM audio_inventory").to_pylist()}
        for clip in REAL_CLIPS:
            path = shared_data / "bc2026" / "train_audio" / clip
            info = sf.info(str(path))
            row = inv[f"train_audio/{clip}"]
            assert row["error"] is None and row["sample_rate"] == 32000 and row["channels"] == 1
            assert abs(row["duration_s"] - info.frames / info.samplerate) < 0.010
            # level statistics equal an independent float64 recomputation
            audio, _ = sf.read(str(path), dtype="float64")
            assert row["peak"] == pytest.approx(np.abs(audio).max(), rel=1e-5)
            assert row["rms_dbfs"] == pytest.approx(10 * np.log10(np.mean(audio**2)), abs=1e-3)
        windows = store.sql("SELECT * FROM windows WHERE filename = '1161364/iNat1264238.ogg'").to_pylist()
        assert len(windows) == 1 and windows[0]["is_partial"] and windows[0]["audio_end_s"] == pytest.approx(0.288)
        # 25.05 s → 5 full windows (tail 0.05 s < 1 s dropped); 35.06 s → 7 windows
        counts = dict(store.rows("SELECT filename, count(*) FROM windows GROUP BY 1"))
        assert counts["1176823/iNat1269019.ogg"] == 5 and counts["1595929/iNat1242532.ogg"] == 7
        assert {name: run_sql_file(store, name).num_rows for name in ("class_counts", "labels_per_site")} == {
            "class_counts": 234, "labels_per_site": 9}
    assert {"class_counts", "labels_per_site", "duplicate_audio"} <= set(list_sql_files())


def _write_soundscape(path: Path, seconds: float = 60.0, sr: int = 32000, channels: int = 1, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((int(seconds * sr), channels)) * 0.05).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "WAV" if path.suffix == ".wav" else "OGG"
    sf.write(str(path), audio, sr, format=fmt, subtype="PCM_16" if fmt == "WAV" else "VORBIS")


@pytest.fixture()
def messy_data(shared_data: Path, tmp_path: Path) -> Path:
    """The real files plus soundscapes that are fine, truncated, empty, junk, stereo 44.1 kHz and badly named."""
    data = tmp_path / "data"
    shutil.copytree(shared_data / "bc2026", data)
    ts = data / "train_soundscapes"
    _write_soundscape(ts / "BC2026_Train_0001_S01_20240101_050000.ogg", seed=1)
    _write_soundscape(ts / "BC2026_Train_0002_S02_20240102_060000.wav", sr=44100, channels=2, seed=2)
    good = ts / "BC2026_Train_0003_S01_20240103_070000.ogg"
    _write_soundscape(good, seed=3)
    blob = good.read_bytes()
    (ts / "BC2026_Train_0004_S03_20240104_080000.ogg").write_bytes(blob[: len(blob) // 2])
    (ts / "BC2026_Train_0005_S03_20240105_090000.ogg").write_bytes(b"")
    (ts / "BC2026_Train_0006_S03_20240106_100000.ogg").write_bytes(b"not audio at all " * 64)
    _write_soundscape(data / "test_soundscapes" / "recording_without_a_proper_name.ogg", seconds=10, seed=4)
    _write_soundscape(data / "test_soundscapes" / "BC2026_Test_0001_S05_20240201_010000.ogg", seconds=59.99, seed=5)
    return data


def test_bad_audio_becomes_error_rows_and_nothing_is_lost(messy_data: Path, tmp_path: Path) -> None:
    summary = run_ingest(messy_data, tmp_path / "store", workers=2)
    messages = {p["file"]: p for p in summary.problems}
    assert messages["train_soundscapes/BC2026_Train_0005_S03_20240105_090000.ogg"]["message"].endswith(
        "empty file (0 bytes)")
    assert "cannot decode audio" in messages["train_soundscapes/BC2026_Train_0006_S03_20240106_100000.ogg"]["message"]
    truncated = messages["train_soundscapes/BC2026_Train_0004_S03_20240104_080000.ogg"]
    assert truncated["severity"] == "warning" and "truncated ogg" in truncated["message"]
    assert "BC2026_Train_0004" in truncated["message"]
    bad_name = messages["test_soundscapes/recording_without_a_proper_name.ogg"]
    assert bad_name["kind"] == "soundscape_name" and "does not parse" in bad_name["message"]
    with FeatureStore.open(tmp_path / "store", read_only=True) as store:
        assert store.count("audio_inventory") == 4 + 8
        stereo = store.first("SELECT channels, sample_rate, duration_s FROM audio_inventory WHERE path LIKE '%0002%'")
        assert stereo[0] == 2 and stereo[1] == 44100 and stereo[2] == pytest.approx(60.0)
        trunc = store.first("SELECT duration_s, error FROM audio_inventory WHERE path LIKE '%0004%'")
        assert trunc[1] is None and 20 < trunc[0] < 40
        soundscapes = store.sql("SELECT filename, split, site FROM soundscapes ORDER BY filename").to_pylist()
        assert len(soundscapes) == 7  # 8 files, decodable or not, minus the unparseable name
        windows = dict(store.rows("SELECT filename, count(*) FROM windows WHERE source != 'train_audio' GROUP BY 1"))
        assert windows["BC2026_Train_0001_S01_20240101_050000.ogg"] == 12
        assert windows["BC2026_Test_0001_S05_20240201_010000.ogg"] == 12  # 59.99 s still gives 12 windows
        assert "BC2026_Train_0005_S03_20240105_090000.ogg" not in windows
        row_ids = store.sql("SELECT row_id FROM windows WHERE filename LIKE 'BC2026_Test_0001%' ORDER BY start_s")
        assert row_ids.column("row_id").to_pylist()[-1] == "BC2026_Test_0001_S05_20240201_010000_60"
        assert store.count("ingest_problems") == len(summary.problems)


def test_bad_csv_stops_before_writing(messy_data: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    run_ingest(messy_data, store_dir, workers=1)
    text = (messy_data / "taxonomy.csv").read_text().replace("class_name", "klass")
    (messy_data / "taxonomy.csv").write_text(text)
    with pytest.raises(DataError, match=r"taxonomy\.csv: missing required column\(s\) \['class_name'\]"):
        run_ingest(messy_data, store_dir, workers=1)
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert store.count("taxonomy") == 234 and store.count("audio_inventory") == 12
    result = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--data", str(messy_data), "--store",
                             str(store_dir), "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "class_name" in result.stderr


def test_reingest_is_idempotent_and_rereads_only_changed_files(messy_data: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = run_ingest(messy_data, store_dir, workers=1)
    second = run_ingest(messy_data, store_dir, workers=1)
    assert second.audio_read == 0 and second.new_versions == [] and second.data_version == first.data_version
    assert second.counts == first.counts
    _write_soundscape(messy_data / "train_soundscapes" / "BC2026_Train_0001_S01_20240101_050000.ogg", 30.0, seed=9)
    third = run_ingest(messy_data, store_dir, workers=1)
    assert third.audio_read == 1 and "windows" in third.new_versions and third.data_version != first.data_version
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert store.count("audio_inventory") == first.counts["audio_inventory"]
        assert store.count("windows") == first.counts["windows"] - 6
        assert len(store.versions("windows")) == 2 and len(store.versions("taxonomy")) == 1
        raw = pq.read_table(store.part_files("audio_inventory")).num_rows if store.part_files("audio_inventory") else 0
        assert raw == first.counts["audio_inventory"]  # compacted: no duplicate rows on disk either


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_exact_rows(demo_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    n_files = sum(1 for p in data.rglob("*.ogg"))
    store_dir = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipelines.ingest", "--data", str(data), "--store", str(store_dir),
           "--workers", "1", "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = store_dir / "parts" / "audio_inventory"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("*.parquet")) if parts.exists() else []) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = pq.read_table(sorted(parts.glob("*.parquet"))).num_rows
    assert 0 < written < n_files, "the kill should land mid-run"
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"audio files read this run: {n_files - written}" in rerun.stdout
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert store.count("audio_inventory") == n_files
        raw = store.first(f"SELECT count(*), count(DISTINCT path) FROM read_parquet('{store.part_glob('audio_inventory')}')")
        assert raw == (n_files, n_files)
        assert store.first("SELECT count(*), count(DISTINCT window_id) FROM windows")[0] == store.first(
            "SELECT count(DISTINCT window_id) FROM windows")[0]
    fresh = tmp_path / "fresh"
    run_ingest(data, fresh, workers=2)
    with FeatureStore.open(fresh, read_only=True) as a, FeatureStore.open(store_dir, read_only=True) as b:
        assert a.current_version("windows") == b.current_version("windows")
        assert a.sql("SELECT path, sha256_pcm FROM audio_inventory ORDER BY path").equals(
            b.sql("SELECT path, sha256_pcm FROM audio_inventory ORDER BY path"))


# ---------------------------------------------------------------------------- audio QA flags (issue 10, item 10)
def test_qa_flags_all_zero_and_low_rate_audio_and_names_a_deleted_file(shared_data: Path, tmp_path: Path) -> None:
    from scipy.signal import resample_poly

    from featurestore.audio_qa import inspect_audio

    real = shared_data / "bc2026" / "train_audio" / "1595929" / "iNat1242532.ogg"   # 32 kHz, 35 s
    clean = inspect_audio(real, "train_audio", "1595929/iNat1242532.ogg")
    field = inspect_audio(shared_data / "field" / "spinetail.wav", "field", "spinetail.wav")   # 44.1 kHz
    assert clean["error"] is None and clean["warning"] is None
    assert field["error"] is None and field["warning"] is None

    audio, rate = sf.read(str(real), dtype="float32")
    low = tmp_path / "low_rate.wav"   # the same clip decimated to 8 kHz
    sf.write(str(low), resample_poly(audio, 1, rate // 8000).astype(np.float32), 8000, subtype="PCM_16")
    row = inspect_audio(low, "train_audio", "low_rate.wav")
    assert row["error"] is None and row["sample_rate"] == 8000
    assert row["warning"] == (f"{low}: sample rate 8000 Hz is below 32000 Hz (a low-rate or wrong file: the models "
                              "see it upsampled, with nothing above 4 kHz)")

    silent = tmp_path / "silent.ogg"   # the clip's length and format, every sample zero
    sf.write(str(silent), np.zeros_like(audio), rate, format="OGG", subtype="VORBIS")
    row = inspect_audio(silent, "train_audio", "silent.ogg")
    assert row["error"] is None and row["peak"] == 0.0 and row["silent_frame_fraction"] == 1.0
    assert row["warning"] == f"{silent}: every sample is zero (digital silence: a dead channel or a failed recording)"

    gone = tmp_path / "deleted.ogg"
    shutil.copy(real, gone)
    gone.unlink()
    row = inspect_audio(gone, "train_audio", "deleted.ogg")
    assert row["error"] == f"file not found: {gone}" and row["sha256_bytes"] is None


def test_window_labels_view_matches_the_csvs(demo_store: Path, demo_data: Path) -> None:
    """The store's ``window_labels`` view (also what training reads) against the CSVs parsed here by hand:
    a focal window carries its clip's primary + secondary labels, a soundscape window its expert labels
    (the real file lists every row twice; the union is the same)."""
    import ast
    import csv

    from models.frame import window_labels

    expected: dict[str, tuple[str, list[str]]] = {}
    with FeatureStore.open(demo_store, read_only=True) as store:
        focal_windows = store.rows("SELECT filename, window_id FROM windows WHERE source = 'train_audio'")
        scape_windows = {(f, s): w for f, s, w in store.rows(
            "SELECT filename, start_s, window_id FROM windows WHERE source = 'train_soundscapes'")}
        view = {w: (src, list(labels)) for w, src, labels in store.rows("SELECT * FROM window_labels")}
        from_python = window_labels(store)
    with open(demo_data / "train.csv", newline="") as fh:
        clips = {r["filename"]: {r["primary_label"], *ast.literal_eval(r["secondary_labels"])} for r in csv.DictReader(fh)}
    for filename, wid in focal_windows:
        expected[wid] = ("train_audio", sorted(clips[filename]))
    scape: dict[str, set[str]] = {}
    with open(demo_data / "train_soundscapes_labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            h, m, s = (int(x) for x in r["start"].split(":"))
            wid = scape_windows[(r["filename"], h * 3600 + m * 60 + s)]
            scape.setdefault(wid, set()).update(r["primary_label"].split(";"))
    expected.update({wid: ("train_soundscapes", sorted(labels)) for wid, labels in scape.items()})
    assert len(scape) > 50 and len(focal_windows) > 50
    assert view == expected
    assert from_python == expected


# ---------------------------------------------------------------------------- label times vs the audio (issue 23)
def _labels_only_folder(shared_data: Path, folder: Path) -> Path:
    """The real taxonomy, sample submission and soundscape labels (no train.csv, no audio)."""
    folder.mkdir()
    for name in ("taxonomy.csv", "sample_submission.csv", "train_soundscapes_labels.csv"):
        shutil.copy(shared_data / "bc2026" / name, folder / name)
    return folder


def test_a_label_time_of_99999999_hours_is_refused_by_line_at_once(shared_data: Path, tmp_path: Path) -> None:
    """Item 7: ``99999999:00:00`` used to expand into 7e10 windows (no answer in minutes, then MemoryError)."""
    data = _labels_only_folder(shared_data, tmp_path / "data")
    labels = data / "train_soundscapes_labels.csv"
    lines = labels.read_text().splitlines()
    fields = lines[6].split(",")
    lines[6] = ",".join([fields[0], fields[1], "99999999:00:00", fields[3]])
    labels.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "pipelines.ingest", "--data", str(data), "--store", str(tmp_path / "store"),
           "--quiet"]
    try:   # generous: the fixed job answers in well under a second; before the fix it never did
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("ingest still running after 120 s on one hostile label time")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {labels} line 7: end '99999999:00:00' is past 24 h, longer than any recording; "
        "correct the time in that row and re-run"]
    assert not (tmp_path / "store").exists()


def test_label_windows_past_the_end_of_the_audio_are_dropped_with_one_warning(shared_data: Path,
                                                                             tmp_path: Path) -> None:
    """Item 13: a segment ending at 01:00:00 on a 60-s file stored 708 label rows past its end, silently.

    The real label file, with the audio of one of its soundscapes (59.98 s: still 12 windows), ingests
    with no label warning at all; a hostile row adds nothing but one warning with the count and line."""
    data = _labels_only_folder(shared_data, tmp_path / "data")
    labels = data / "train_soundscapes_labels.csv"
    name = "BC2026_Train_0039_S22_20211231_201500.ogg"
    _write_soundscape(data / "train_soundscapes" / name, seconds=59.98, seed=7)
    store_dir = tmp_path / "store"
    clean = run_ingest(data, store_dir, workers=1)
    assert {p["kind"] for p in clean.problems} == {"missing_audio"}   # the 66 other labelled files
    with FeatureStore.open(store_dir, read_only=True) as store:
        clean_rows = store.sql("SELECT filename, start_s, labels FROM soundscape_labels ORDER BY ALL")
        assert clean_rows.num_rows == 739
        assert store.rows(f"SELECT count(*), max(end_s) FROM soundscape_labels WHERE filename = '{name}'") == [(12, 60)]
        assert store.count("window_labels") == 12

    last = next(text for text in labels.read_text().splitlines() if text.startswith(f"{name},00:00:55,"))
    with open(labels, "a") as fh:   # the 55-60 s window again, but ending an hour in: 709 windows, 708 past the end
        fh.write(f"{name},00:00:55,01:00:00,{last.split(',')[3]}\n")
    line = len(labels.read_text().splitlines())
    summary = run_ingest(data, store_dir, workers=1)
    past = [p for p in summary.problems if p["kind"] == "label_past_end"]
    assert past == [{"severity": "warning", "kind": "label_past_end", "file": "train_soundscapes_labels.csv",
                     "row": line, "message": (
                         f"{labels}: 708 label window(s) of 1 file(s) lie past the end of the audio and were dropped; "
                         f"first: line {line}, {name} 00:01:00-00:01:05 but the file is 59.98 s long "
                         "(its last window ends at 00:01:00)")}]
    off_grid = [p["message"] for p in summary.problems if p["kind"] == "label_off_grid"]
    assert len(off_grid) == 1 and "snapped to 709 windows" in off_grid[0] and len(off_grid[0]) < len(str(labels)) + 400
    with FeatureStore.open(store_dir, read_only=True) as store:
        assert store.sql("SELECT filename, start_s, labels FROM soundscape_labels ORDER BY ALL").equals(clean_rows)
        assert store.count("ingest_problems") == len(summary.problems)
