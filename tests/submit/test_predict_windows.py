"""``pipelines.predict --format windows``: batch prediction of any audio, resumable after kill -9.

Checked against the submission path (the same head's :func:`submit.predict.predict_audio` rows, float32
for float32), the long format against the wide rows filtered in numpy, CSV against Parquet, and a run killed
with SIGKILL after its first file then re-run against an uninterrupted run (every window exactly once).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from processes import survivors

from featurestore.errors import UserInputError
from stack.bundle import head_folder
from submit.predict import predict_audio
from submit.windows import parts_dir, predict_windows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def audio(demo_data: Path, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Two demo test soundscapes at the top, the real field recording in a nested folder, an undecodable file."""
    folder = tmp_path_factory.mktemp("monitoring")
    for path in sorted((demo_data / "test_soundscapes").glob("*.ogg"))[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "site_b" / "2026").mkdir(parents=True)
    shutil.copy(shared_data / "field" / "spinetail.wav", folder / "site_b" / "2026" / "spinetail.wav")
    (folder / "site_b" / "broken.ogg").write_bytes(b"OggS not really")
    return folder


@pytest.fixture(scope="module")
def wide(demo_trained, audio: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("wide") / "windows.parquet"
    warnings: list[str] = []
    summary = predict_windows(demo_trained.store, audio, out, head_id=demo_trained.stack.head_id,
                              on_warning=warnings.append)
    return out, summary, warnings


def test_wide_rows_equal_the_submission_rows_of_the_same_head(demo_trained, audio: Path, wide) -> None:
    out, summary, warnings = wide
    table = pq.read_table(out)
    head_dir = head_folder(demo_trained.store, demo_trained.stack.head_id)
    classes = [f.name for f in table.schema][3:]
    row_ids, probs, _ = predict_audio(head_dir, audio, classes)     # the submission path: the top folder's files
    files = table.column("file").to_pylist()
    ours = [f"{Path(f).stem}_{e}" for f, e in zip(files, table.column("end_s").to_pylist(), strict=True)
            if "/" not in f]
    assert ours == row_ids                                       # 12 windows a 60-s file, in order
    got = np.stack([table.column(c).to_numpy() for c in classes], axis=1)[[("/" not in f) for f in files]]
    np.testing.assert_array_equal(got, probs.astype(np.float32))
    # the nested field recording: its own duration's windows, [start, start + 5) from 0
    seconds = sf.info(str(audio / "site_b" / "2026" / "spinetail.wav")).duration
    field = [i for i, f in enumerate(files) if f == "site_b/2026/spinetail.wav"]
    assert len(field) == max(1, round(seconds / 5))
    assert table.column("start_s").to_numpy()[field].tolist() == list(range(0, 5 * len(field), 5))
    assert np.all(np.isfinite(np.stack([table.column(c).to_numpy() for c in classes])))
    # the broken file: no rows, one warning naming it, and the run says so
    assert "site_b/broken.ogg" not in files
    assert len(warnings) == 1 and "broken.ogg" in warnings[0]
    assert summary.windows == table.num_rows == 24 + len(field)
    assert "1 file(s) could not be predicted" in summary.render()
    assert parts_dir(out).exists()            # kept: the broken file is retried by the next run


def test_long_rows_are_the_wide_rows_above_min_prob_and_csv_equals_parquet(demo_trained, audio: Path, wide,
                                                                         tmp_path: Path) -> None:
    out, _, _ = wide
    table = pq.read_table(out)
    classes = [f.name for f in table.schema][3:]
    P = np.stack([table.column(c).to_numpy() for c in classes], axis=1)
    long_pq = tmp_path / "long.parquet"
    predict_windows(demo_trained.store, audio, long_pq, head_id=demo_trained.stack.head_id, fmt="long",
                    min_prob=0.3)
    got = pq.read_table(long_pq)
    rows, cols = np.nonzero(P >= 0.3)
    assert got.column("class").to_pylist() == [classes[c] for c in cols]
    np.testing.assert_array_equal(got.column("prob").to_numpy(), P[rows, cols])
    assert got.column("start_s").to_pylist() == table.column("start_s").to_numpy()[rows].tolist()
    assert 0 < got.num_rows < P.size
    long_csv = tmp_path / "long.csv"
    predict_windows(demo_trained.store, audio, long_csv, head_id=demo_trained.stack.head_id, fmt="long",
                    min_prob=0.3)
    csv = pacsv.read_csv(long_csv)
    assert csv.column("file").to_pylist() == got.column("file").to_pylist()
    assert csv.column("class").to_pylist() == got.column("class").to_pylist()
    np.testing.assert_allclose(csv.column("prob").to_numpy(), got.column("prob").to_numpy(), rtol=1e-6)
    # a resume with other arguments is refused, not mixed in
    with pytest.raises(UserInputError, match="another run"):
        predict_windows(demo_trained.store, audio, out, head_id=demo_trained.stack.head_id, fmt="long")


def test_a_run_killed_after_its_first_file_resumes_to_the_same_rows(demo_trained, demo_data: Path,
                                                                    tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for path in sorted((demo_data / "test_soundscapes").glob("*.ogg"))[:3]:
        shutil.copy(path, audio / path.name)
    head = demo_trained.head("linear")
    reference = tmp_path / "reference.parquet"
    predict_windows(demo_trained.store, audio, reference, head_id=head)
    out = tmp_path / "resumed.parquet"
    command = [sys.executable, "-m", "pipelines.predict", "--store", str(demo_trained.store), "--head-id", head,
               "--audio", str(audio), "--format", "windows", "--out", str(out), "--workers", "1", "--quiet"]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts_dir(out).glob("*.parquet")) and job.poll() is None:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not survivors([job.pid])
    kept = len(list(parts_dir(out).glob("*.parquet")))
    assert 1 <= kept < 3 and not out.exists()
    done = subprocess.run(command[:-1], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{3 - kept} predicted now, {kept} kept from an earlier run" in done.stdout
    assert pq.read_table(out).equals(pq.read_table(reference))
    assert not parts_dir(out).exists()


def test_bad_arguments_are_refused_in_one_line(demo_trained, audio: Path, tmp_path: Path) -> None:
    for args, says in ((["--out", str(tmp_path / "x.json")], "write .parquet or .csv"),
                       (["--out", str(tmp_path / "no" / "x.csv")], "does not exist"),
                       (["--out", str(tmp_path / "x.csv"), "--min-prob", "0.5"], "long format only"),
                       (["--out", str(tmp_path / "x.csv"), "--long", "--min-prob", "1.5"], "must be in [0, 1]")):
        result = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(demo_trained.store),
                                 "--audio", str(audio), "--format", "windows", *args], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), result.stderr


@pytest.fixture(scope="module")
def ray_runtime():
    """A real Ray runtime on this machine (2 CPUs), shared by the engine tests of this file."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_the_ray_engine_writes_the_same_rows_and_submission_as_the_local_one(demo_trained, audio: Path, wide,
                                                                           ray_runtime, tmp_path: Path) -> None:
    out, _, _ = wide
    got = tmp_path / "ray.parquet"
    warnings: list[str] = []
    summary = predict_windows(demo_trained.store, audio, got, head_id=demo_trained.stack.head_id, engine="ray",
                              actors=2, on_warning=warnings.append)
    assert pq.read_table(got).equals(pq.read_table(out))          # row for row, bit for bit
    assert len(warnings) == 1 and "broken.ogg" in warnings[0] and summary.predicted == 4
    # the submission path through Ray: the local engine's rows (the wide rows of the top folder's files, equal
    # to predict_audio's in the first test), in file order
    table = pq.read_table(out)
    classes = [f.name for f in table.schema][3:]
    top = np.array(["/" not in f for f in table.column("file").to_pylist()])
    row_ids, probs, said = predict_audio(head_folder(demo_trained.store, demo_trained.stack.head_id), audio, classes,
                                         engine="ray", actors=2)
    assert row_ids == [f"{Path(f).stem}_{e}" for f, e, t in zip(table.column("file").to_pylist(),
                                                                 table.column("end_s").to_pylist(), top, strict=True) if t]
    np.testing.assert_array_equal(probs, np.stack([table.column(c).to_numpy() for c in classes], axis=1)[top])
    # the submission reads only the folder's own files, and says what it left (issue 28 item 9)
    assert len(said) == 1 and said[0].startswith(f"{audio}: skipped 1 of its ")
    assert "1 sub-folder(s) not searched (site_b/, holding 2 audio file(s))" in said[0]


def test_each_engine_refuses_the_others_options(demo_trained, audio: Path, tmp_path: Path) -> None:
    for job, args, says in (("predict", ["--engine", "ray", "--workers", "2"], "use --actors"),
                            ("embed", ["--actors", "2"], "--address and --actors need --engine ray")):
        extra = ["--audio", str(audio), "--out", str(tmp_path / "x.csv")] if job == "predict" else []
        result = subprocess.run([sys.executable, "-m", f"pipelines.{job}", "--store", str(demo_trained.store), *extra,
                                 *args], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 2 and says in result.stderr.splitlines()[-1], result.stderr
    assert not (tmp_path / "x.csv").exists()
