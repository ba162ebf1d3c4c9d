"""No silent wrong training: complete feature frames only, and no reader ever sees half a head."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.store import FeatureStore, StoreError
from models.bundle import HEADS_DIR
from models.experiments import ranked
from models.frame import FrameSpec, build_frame
from models.training import train_head

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(demo_embedded_store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(demo_embedded_store, target)
    return target


def _drop_a_part_with_labelled_windows(store: Path) -> int:
    """Delete one birdnet_frames part holding labelled windows; returns how many labelled windows it held."""
    import pyarrow.parquet as pq

    with FeatureStore.open(store, read_only=True) as fs:
        labelled = set(build_frame(fs, FrameSpec("birdnet")).window_ids.tolist())
    for part in sorted((store / "parts" / "birdnet_frames").glob("*.parquet")):
        held = set(pq.read_table(part, columns=["window_id"]).column("window_id").to_pylist()) & labelled
        if held:
            part.unlink()
            return len(held)
    raise AssertionError("no birdnet part holds labelled windows")


def test_training_refuses_a_frame_with_missing_features(store: Path) -> None:
    complete = train_head(store, "linear", FrameSpec("birdnet"))
    lost = _drop_a_part_with_labelled_windows(store)
    with pytest.raises(StoreError, match=rf"{lost} of \d+ labelled windows have no 'birdnet' features") as info:
        train_head(store, "linear", FrameSpec("birdnet"))
    assert "python -m pipelines.embed --store" in str(info.value) and "--allow-partial" in str(info.value)
    partial = train_head(store, "linear", FrameSpec("birdnet"), allow_partial=True)
    assert partial.head_id != complete.head_id
    assert any("--allow-partial" in w for w in partial.warnings)
    with FeatureStore.open(store, read_only=True) as fs:
        config = fs.first("SELECT config FROM experiments WHERE head_id = ?", [partial.head_id])[0]
    assert '"unexplained": ' + str(lost) in config and '"allow_partial": true' in config
    # the CLI says the same in one line
    result = subprocess.run([sys.executable, "-m", "pipelines.train", "--store", str(store), "--head-kind", "prior"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_a_killed_train_leaves_no_head_that_predict_or_the_leaderboard_can_see(store: Path, demo_data: Path) -> None:
    cmd = [sys.executable, "-m", "pipelines.train", "--store", str(store), "--head-kind", "linear"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if "fold" in line and "done" in line:  # at least one fold saved, more to come
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    heads = [p.name for p in (store / HEADS_DIR).iterdir()]
    assert heads and all(name.startswith(".partial-") for name in heads)
    with FeatureStore.open(store, read_only=True) as fs:
        assert ranked(fs).num_rows == 0
    out = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(store), "--audio",
                          str(demo_data / "test_soundscapes"), "--out", str(store.parent / "s.csv")], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no fully cross-validated experiment" in out.stderr
    assert not (store.parent / "s.csv").exists()
    result = train_head(store, "linear", FrameSpec("birdnet"))  # the re-run completes and clears the remains
    assert [p.name for p in (store / HEADS_DIR).iterdir()] == [result.head_id]
    assert len(list((store / HEADS_DIR / result.head_id).glob("fold_*/head.json"))) == 5


def test_a_second_embed_of_the_same_shard_stops_at_once_naming_the_first(store: Path) -> None:
    from embed.job import run_embed

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from featurestore.store import StoreLock; "
         "StoreLock(sys.argv[1], 'embed-0of1.lock').acquire(); print('held', flush=True); time.sleep(120)",
         str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=rf"shard 0/1 is already being embedded: .*pid {holder.pid}"):
            run_embed(store, ("classical",), workers=1)
        run_embed(store, ("classical",), workers=1, shard="1/2")  # another shard is free to run
    finally:
        holder.kill()
        holder.wait()
    summary = run_embed(store, ("classical",), workers=1)  # the holder is gone: the lock is free again
    assert "classical" in summary.render()


def test_a_file_truncated_after_ingest_is_noted_by_embed(demo_store: Path, tmp_path: Path) -> None:
    import soundfile as sf

    from embed.job import run_embed

    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    with FeatureStore.open(store, read_only=True) as fs:
        data = Path(fs.first("SELECT data_dir FROM ingest_runs ORDER BY run_at DESC LIMIT 1")[0])
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    victim = sorted((copy / "test_soundscapes").glob("*.ogg"))[0]
    audio, rate = sf.read(str(victim), dtype="float32")
    sf.write(str(victim), audio[: 20 * rate], rate, format="OGG", subtype="VORBIS")  # 60 s -> 20 s
    summary = run_embed(store, ("classical",), data_dir=copy, sources=["test_soundscapes"], workers=1)
    noted = [n for n in summary.notes if victim.name in n]
    assert len(noted) == 1 and "20.0 s of audio now, 60.0 s at ingest" in noted[0]
    assert sum(victim.name in n for n in summary.render().splitlines()) == 1
