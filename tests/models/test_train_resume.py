"""Ctrl-C says what a job keeps, and ``pipelines.train`` resumes at its next fold (issue 28 item 5).

A real ``python -m pipelines.train`` is stopped after fold 1 with SIGINT (exit 130 and its own line), its
re-run is stopped with ``kill -9`` after fold 3, and the last re-run trains fold 4 only: bundle, OOF file
and scores are bit for bit the session's uninterrupted run of the same head (``demo_trained``). Kept folds
of other inputs are never reused. ``ingest`` and ``predict`` are interrupted for real too, and what their
line says is checked on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.store import FeatureStore
from models.bundle import HEADS_DIR, RESUME_FILE
from models.frame import FrameSpec
from models.training import OOF_DIR, train_head

REPO = Path(__file__).resolve().parents[2]
TRAIN_LINE = "interrupted; the finished folds of this head are kept: re-run the same command to resume at the next fold"
INGEST_LINE = "interrupted; audio files finished so far are kept in the store: re-run the same command to resume"
PREDICT_LINE = ("interrupted; a submission is written only when every file is predicted (nothing kept, --out "
                "untouched); with --format windows each finished file's rows are kept in <out>.parts/ and the "
                "same command resumes")
SCORE_COLUMNS = ("fold_mean", "fold_std", "oof_auc", "fold_scores", "per_class", "slices", "n_train_windows",
                 "n_eval_windows", "config")


def _job(*args: str) -> subprocess.Popen:
    """A job in its own process group, as a shell runs it (Ctrl-C reaches the group)."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _stop_after_fold(job: subprocess.Popen, fold: int, sig: signal.Signals) -> tuple[list[str], str]:
    """Signal the job's group once it says fold ``fold`` is done (its folder is finished by then); the folds it
    said were done, and its stderr."""
    done = []
    for line in job.stdout:
        if line.strip().startswith("fold ") and line.strip().endswith(" done"):
            done.append(line.strip())
        if line.strip() == f"fold {fold} done":
            os.killpg(job.pid, sig)
            break
    else:
        raise AssertionError(f"the job ended before fold {fold} was done: {job.wait()} {job.stderr.read()[-2000:]}")
    _out, err = job.communicate(timeout=120)
    return done, err


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _scores(store: Path, head_id: str) -> tuple:
    with FeatureStore.open(store, read_only=True) as fs:
        rows = fs.rows(f"SELECT {', '.join(SCORE_COLUMNS)} FROM experiments WHERE head_id = ?", [head_id])
    assert len(rows) == 1, rows
    return rows[0]


def test_train_interrupted_then_killed_resumes_to_the_uninterrupted_bytes(demo_trained, demo_embedded_store,
                                                                          store_copy) -> None:
    store = store_copy(demo_embedded_store, "train_resume")
    head_id = demo_trained.head("linear")           # the same command, never interrupted
    heads = store / HEADS_DIR
    cmd = ("pipelines.train", "--store", str(store), "--head-kind", "linear")

    done, err = _stop_after_fold(_job(*cmd), 1, signal.SIGINT)
    assert done == ["fold 0 done", "fold 1 done"]
    assert err.strip().splitlines()[-1] == TRAIN_LINE and "Traceback" not in err
    partial = [p for p in heads.iterdir()]
    assert [p.name.startswith(f".partial-{head_id}-") for p in partial] == [True]   # nothing published
    kept = sorted(p.name for p in partial[0].glob("fold_*"))
    assert kept[:2] == ["fold_0", "fold_1"] and all((partial[0] / k / RESUME_FILE).is_file() for k in kept)
    assert not (partial[0] / ".incomplete").exists()     # a half-written fold is not kept

    job = _job(*cmd)
    done, _err = _stop_after_fold(job, 3, signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL
    assert done == [f"fold {k} done" for k in range(len(kept), 4)], "kept folds are not trained again"

    result = train_head(store, "linear", FrameSpec("birdnet"))   # the last re-run: fold 4 alone
    assert result.head_id == head_id and result.kept_folds == (0, 1, 2, 3)
    assert "resumed: fold(s) 0, 1, 2, 3 kept" in result.render()
    assert [p.name for p in heads.iterdir()] == [head_id]       # the partial folders are gone
    reference = demo_trained.store / HEADS_DIR / head_id
    assert _tree(heads / head_id) == _tree(reference)           # config, record, every fold's files
    oof = f"{OOF_DIR}/{head_id}.parquet"
    assert (store / oof).read_bytes() == (demo_trained.store / oof).read_bytes()
    assert _scores(store, head_id) == _scores(demo_trained.store, head_id)


def _interrupt_after(fold: int, first: int):
    """A ``progress`` that checks which fold is trained first and stops the run (Ctrl-C) after ``fold``."""
    def progress(f: int) -> None:
        progress.seen.append(f)
        assert progress.seen[0] == first, f"fold {progress.seen[0]} trained first, expected {first}"
        if f == fold:
            raise KeyboardInterrupt

    progress.seen = []
    return progress


def test_folds_are_kept_only_for_the_same_bytes(demo_embedded_store, store_copy) -> None:
    """A stopped run's fold is kept only when its files are as written and the inputs are the same: a
    changed fold file, or features re-embedded under the same extractor version (the same head id),
    make it train again (the prior head: the rule is the writer's, not the head kind's)."""
    store = store_copy(demo_embedded_store, "train_resume_inputs")
    spec = FrameSpec("classical")
    with pytest.raises(KeyboardInterrupt):
        train_head(store, "prior", spec, progress=_interrupt_after(1, first=0))
    (stopped,) = list((store / HEADS_DIR).iterdir())
    assert sorted(p.name for p in stopped.glob("fold_*")) == ["fold_0", "fold_1"]

    arrays = stopped / "fold_1" / "arrays.npz"           # one byte of fold 1 changes after it was finished
    data = bytearray(arrays.read_bytes())
    data[-30] ^= 1
    arrays.write_bytes(bytes(data))
    with pytest.raises(KeyboardInterrupt):             # fold 0 kept, fold 1 trained again
        train_head(store, "prior", spec, progress=_interrupt_after(2, first=1))

    trained_on = pq.read_table(stopped / "fold_0" / "train_windows.parquet").column("window_id")[0].as_py()
    with FeatureStore.open(store) as fs:               # a window fold 0 trained on is re-embedded, other numbers
        row = fs.sql(f"SELECT * FROM classical_windows WHERE window_id = '{trained_on}'")
        assert row.num_rows == 1
        features = np.asarray(row.column("features")[0].as_py(), np.float32) + 1.0
        fs.append_part("classical_windows", row.set_column(
            row.schema.get_field_index("features"), row.schema.field("features"),
            pa.array([features.tolist()], row.schema.field("features").type)).set_column(
            row.schema.get_field_index("written_at"), row.schema.field("written_at"),
            pa.array([datetime.now()], row.schema.field("written_at").type)))
    moved = _interrupt_after(99, first=0)
    result = train_head(store, "prior", spec, progress=moved)
    assert result.kept_folds == () and moved.seen == [0, 1, 2, 3, 4]
    assert [p.name for p in (store / HEADS_DIR).iterdir()] == [result.head_id]


def _open_audio(pid: int, folder: Path) -> bool:
    """Whether the process or one of its children has a file of ``folder`` open (it is reading audio)."""
    pending, seen = [pid], set()
    while pending:
        p = pending.pop()
        seen.add(p)
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                with_target = os.readlink(f"/proc/{p}/fd/{fd}")
                if with_target.startswith(str(folder) + "/"):
                    return True
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                pending += [int(c) for c in children if int(c) not in seen]
        except OSError:
            continue
    return False


def test_ingest_and_predict_say_what_an_interrupt_keeps(demo_trained, demo_data: Path, tmp_path: Path) -> None:
    # ingest: the parts finished before Ctrl-C stay in the store
    store = tmp_path / "store"
    job = _job("pipelines.ingest", "--data", str(demo_data), "--store", str(store), "--workers", "1",
               "--batch-size", "2", "--quiet")
    parts = store / "parts" / "audio_inventory"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None and len(
            list(parts.glob("*.parquet")) if parts.exists() else []) < 2:
        time.sleep(0.01)
    assert job.poll() is None, "ingest ended before two parts were seen"
    os.killpg(job.pid, signal.SIGINT)
    before = {p.name for p in parts.glob("*.parquet")}
    _out, err = job.communicate(timeout=60)
    assert job.returncode == 130 and err.strip().splitlines()[-1] == INGEST_LINE, err[-2000:]
    assert before and before <= {p.name for p in parts.glob("*.parquet")}
    assert pq.read_table(sorted(parts.glob("*.parquet"))).num_rows >= 2

    # predict (a submission): interrupted while reading audio, it keeps nothing and leaves --out alone
    audio = tmp_path / "audio"
    audio.mkdir()
    sources = sorted((demo_data / "test_soundscapes").glob("*.ogg"))
    for i in range(8):
        src = sources[i % len(sources)]
        (audio / src.name.replace("_0", f"_{i}", 1)).write_bytes(src.read_bytes())
    out = tmp_path / "submission.csv"
    job = _job("pipelines.predict", "--store", str(demo_trained.store), "--head-id", demo_trained.head("classical"),
               "--audio", str(audio), "--out", str(out), "--workers", "1", "--quiet")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None and not _open_audio(job.pid, audio):
        time.sleep(0.002)
    assert job.poll() is None, "predict ended before it was seen reading audio"
    os.killpg(job.pid, signal.SIGINT)
    _out, err = job.communicate(timeout=60)
    assert job.returncode == 130 and err.strip().splitlines()[-1] == PREDICT_LINE, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "store"]   # no out, no parts, no tmp file
