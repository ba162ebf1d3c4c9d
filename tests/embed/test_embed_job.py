"""The embed job on real data: exact frames, store == in-memory path, bad files, shards, kill -9 resume."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from ai_edge_litert.interpreter import Interpreter
from embed_helpers import birdnet_cache, build_tiny_tflite, damage_payload
from scipy.signal import resample_poly

from embed.birdnet import BirdNet, class_layer, patched_model
from embed.classical import Classical
from embed.features import (
    POOL_CHUNK_ROWS,
    POOLINGS,
    embed_file,
    embed_file_with_names,
    extractors_from_store,
    load_window_features,
    pool_frames,
)
from embed.job import in_shard, parse_shard, run_embed, shard_sql
from featurestore.competition import DataError
from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore, StoreError
from pipelines import embed as embed_cli

REPO = Path(__file__).resolve().parents[2]
CLIP = "train_audio/1595929/iNat1242532.ogg"      # 35.1 s real frog recording, 7 windows
CLIP2 = "train_audio/1595929/iNat1242529.ogg"     # 26.2 s, tail window of 1.2 s


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return birdnet_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def embedded(bc2026_store: Path, tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, object]:
    """The real shared clips embedded with BirdNET + classical by one worker."""
    store = tmp_path_factory.mktemp("embedded") / "store"
    shutil.copytree(bc2026_store, store)
    summary = run_embed(store, ["birdnet", "classical"], workers=1, cache_dir=cache)
    return store, summary


def _raw(store: Path, table: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{store}/parts/{table}/*.parquet', union_by_name=true)")
    return con


def test_every_window_once_with_the_expected_frames(embedded) -> None:
    store, summary = embedded
    assert summary.windows_now == {"birdnet": 19, "classical": 19} and summary.errors == []
    assert summary.windows_stored == summary.windows_in_scope == {"birdnet": 19, "classical": 19}
    assert "160 of 162 birds" in summary.render()
    con = _raw(store, "birdnet_frames")
    assert con.execute("SELECT count(*) FROM (SELECT window_id, frame_index FROM raw GROUP BY ALL "
                       "HAVING count(*) > 1)").fetchall() == [(0,)]
    frames = dict(con.execute("SELECT window_id, count(*) FROM raw GROUP BY 1").fetchall())
    assert len(frames) == 19
    # full windows have frames at 0, 1, 2 s; the 0.29-s clip and the 1.2-s tail one padded frame each
    assert frames[f"{CLIP}@10"] == 3 and frames[f"{CLIP2}@25"] == 1
    tiny = con.execute("SELECT frame_start_s, valid_fraction, is_padded, len(embedding), len(logits) FROM raw "
                       "WHERE window_id = 'train_audio/1161364/iNat1264238.ogg@0'").fetchall()
    assert tiny == [(0.0, pytest.approx(0.096), True, 1024, 160)]
    # the last window of the 35.06-s clip is a full one: frames at 30, 31 and 32 s
    starts = [r[0] for r in con.execute(f"SELECT frame_start_s FROM raw WHERE window_id = '{CLIP}@30' "
                                        "ORDER BY 1").fetchall()]
    assert starts == [30.0, 31.0, 32.0]
    with FeatureStore.open(store, read_only=True) as s:
        assert s.count("classical_windows") == 19 and s.count("birdnet_class_map") == 234
        versions = s.sql("SELECT extractor, extractor_version, params FROM extractor_versions").to_pylist()
        assert {v["extractor"] for v in versions} == {"birdnet", "classical"}
        assert json.loads(next(v for v in versions if v["extractor"] == "birdnet")["params"])["hop_s"] == 1.0


def test_rerun_embeds_nothing_new(embedded, cache: Path) -> None:
    store, first = embedded
    parts = sorted((store / "parts").rglob("*.parquet"))
    again = run_embed(store, ["birdnet", "classical"], workers=1, cache_dir=cache)
    assert again.windows_now == {} and again.windows_before == {"birdnet": 19, "classical": 19}
    assert again.versions == first.versions
    assert sorted((store / "parts").rglob("*.parquet")) == parts


def test_stored_frames_equal_a_direct_interpreter_call(embedded, shared_data: Path, cache: Path) -> None:
    store, summary = embedded
    con = _raw(store, "birdnet_frames")
    emb, logits = con.execute(f"SELECT embedding, logits FROM raw WHERE window_id = '{CLIP}@10' AND frame_index = 1"
                              ).fetchall()[0]
    with FeatureStore.open(store, read_only=True) as s:
        matched = [r[0] for r in s.rows("SELECT birdnet_index FROM birdnet_class_map WHERE birdnet_index IS NOT NULL "
                                        "ORDER BY (SELECT class_index FROM taxonomy t WHERE t.primary_label = "
                                        "birdnet_class_map.primary_label)")]
    # independent path: soundfile + scipy polyphase 32 -> 48 kHz, frame 11-14 s, a fresh interpreter
    y, rate = sf.read(str(shared_data / "bc2026" / CLIP), dtype="float32")
    frame = resample_poly(y, 3, 2).astype(np.float32)[11 * 48000: 14 * 48000][None]
    interpreter = Interpreter(model_path=str(patched_model(cache).path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame)
    interpreter.invoke()
    out = {d["name"]: interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()}
    direct_emb, direct_logits = out["model/GLOBAL_AVG_POOL/Mean"], out["Identity"]
    assert len(matched) == len(logits) == 160
    assert np.max(np.abs(np.asarray(logits) - direct_logits[matched])) < 1e-4
    stored = np.asarray(emb, dtype=np.float32)
    assert np.max(np.abs(stored - direct_emb.astype(np.float16).astype(np.float32))) <= np.abs(direct_emb).max() * 2**-10
    W, b = class_layer()
    np.testing.assert_allclose(np.asarray(logits), direct_emb.astype(np.float64) @ W[matched].T + b[matched], atol=5e-4)


def test_store_and_in_memory_paths_give_identical_features(embedded, shared_data: Path, cache: Path) -> None:
    store, summary = embedded
    with FeatureStore.open(store, read_only=True) as s:
        taxonomy = s.read_table("taxonomy")
        ids = [r[0] for r in s.rows("SELECT window_id FROM windows WHERE filename = ? ORDER BY start_s",
                                    [CLIP2.removeprefix("train_audio/")])]
        stored = {(view, pooling): load_window_features(s, view, pooling, window_ids=ids)
                  for view in ("birdnet", "birdnet_logits", "classical", "birdnet,classical")
                  for pooling in ("mean", "meanmax")}
    extractors = [BirdNet(taxonomy, cache_dir=cache), Classical()]
    assert {e.name: e.version for e in extractors} == summary.versions
    with FeatureStore.open(store, read_only=True) as s:
        rebuilt = extractors_from_store(s, stored[("birdnet,classical", "mean")][3], cache_dir=cache)
    assert [e.version for e in rebuilt] == [e.version for e in extractors]
    for pooling in ("mean", "meanmax"):
        memory = embed_file_with_names(shared_data / "bc2026" / CLIP2, extractors, soundscape=False, pooling=pooling,
                                       views=["birdnet", "birdnet_logits", "classical", "birdnet,classical"])
        for view, (starts, X, names) in memory.items():
            got_ids, got_X, got_names, versions = stored[(view, pooling)]
            assert got_ids == ids and starts.tolist() == [0, 5, 10, 15, 20, 25]
            assert got_names == names and got_X.dtype == X.dtype == np.float32
            assert np.array_equal(got_X, X), view
            assert versions and versions == {k: summary.versions[k] for k in versions}  # no "pooling" key
    assert stored[("birdnet_logits", "mean")][2][0] == "birdnet_logit:ashgre1"
    assert stored[("birdnet,classical", "mean")][1].shape == (6, 1024 + 815)
    assert stored[("birdnet", "meanmax")][1].shape == (6, 2048)


def test_pooling_equals_a_recomputation_from_the_parquet_parts(embedded) -> None:
    store, _ = embedded
    raw = pq.read_table(sorted((store / "parts" / "birdnet_frames").glob("*.parquet"))).to_pylist()
    by_window: dict[str, list] = {}
    for r in raw:
        by_window.setdefault(r["window_id"], []).append(np.asarray(r["embedding"], dtype=np.float64))
    with FeatureStore.open(store, read_only=True) as s:
        ids, X_mean, _, _ = load_window_features(s, "birdnet", "mean")
        _, X_max, _, _ = load_window_features(s, "birdnet", "max")
    assert ids == sorted(by_window)
    for i, w in enumerate(ids):
        frames = np.stack(by_window[w])
        np.testing.assert_allclose(X_mean[i], frames.mean(axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(X_max[i], frames.max(axis=0).astype(np.float32))


def _pool_frames_whole(window_index: np.ndarray, values: np.ndarray, pooling: str) -> np.ndarray:
    """pool_frames as it was before chunking: one float64 copy of the whole matrix (the reference)."""
    keys = np.asarray(window_index)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    out = []
    if pooling in ("mean", "meanmax"):
        counts = np.diff(np.r_[starts, len(values)])[:, None]
        out.append((np.add.reduceat(values.astype(np.float64), starts, axis=0) / counts).astype(np.float32))
    if pooling in ("max", "meanmax"):
        out.append(np.maximum.reduceat(values, starts, axis=0))
    return out[0] if len(out) == 1 else np.hstack(out)


@pytest.mark.parametrize("frames", [[3], [1, 4, 2, 7, 1, 1, 3, 5, 2, 6, 1, 3], [5] * 9 + [40, 1, 2]])
def test_pool_frames_in_chunks_is_bit_identical_to_one_float64_pass(frames: list[int]) -> None:
    """Chunk boundaries at every place (chunk_rows 1: one window per chunk; 2-13: cuts inside windows moved
    to window starts; one window longer than the chunk) give the whole-matrix float64 reduceat's numbers."""
    rng = np.random.default_rng(len(frames))
    values = rng.standard_normal((sum(frames), 6)) * 10.0 ** rng.integers(-3, 4, (sum(frames), 6))
    values = values.astype(np.float16).astype(np.float32)
    for ids in (np.repeat(np.arange(len(frames)) * 3, frames),
                np.repeat(np.array([f"w{i:03d}" for i in range(len(frames))], dtype=object), frames)):
        starts = np.r_[0, np.cumsum(frames)[:-1]]
        mean64 = (np.add.reduceat(values.astype(np.float64), starts, axis=0)
                  / np.asarray(frames)[:, None]).astype(np.float32)
        max32 = np.stack([values[a:a + n].max(axis=0) for a, n in zip(starts, frames, strict=True)])
        expected = {"mean": mean64, "max": max32, "meanmax": np.hstack([mean64, max32])}
        for pooling in POOLINGS:
            whole = _pool_frames_whole(ids, values, pooling)
            assert np.array_equal(whole, expected[pooling])
            for chunk_rows in (1, 2, 5, 13, POOL_CHUNK_ROWS):
                got = pool_frames(ids, values, pooling, chunk_rows=chunk_rows)
                assert got.dtype == np.float32 and np.array_equal(got, whole), (pooling, chunk_rows)


def test_pool_frames_peak_memory_is_a_chunk_not_a_float64_copy() -> None:
    values = np.random.default_rng(0).standard_normal((60_000, 128)).astype(np.float32)   # 31 MB
    ids = np.arange(len(values)) // 3
    tracemalloc.start()
    try:
        pooled = pool_frames(ids, values, "meanmax")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(pooled, _pool_frames_whole(ids, values, "meanmax"))
    # the output (20 MB) + one float64 chunk (8,192 x 128 x 8 = 8 MB); the whole float64 copy alone is 61 MB
    assert peak < pooled.nbytes + 2 * POOL_CHUNK_ROWS * 128 * 8 < 2 * values.nbytes


def test_stereo_44k_equals_its_mono_mix(tmp_path: Path, shared_data: Path, cache: Path) -> None:
    y, _ = sf.read(str(shared_data / "field" / "spinetail.wav"), dtype="float32")
    y = y[: int(6.5 * 44100)]
    sf.write(tmp_path / "stereo.flac", np.stack([y, y], axis=1), 44100)
    sf.write(tmp_path / "mono.flac", y, 44100)
    extractors = [BirdNet(full_logits=True, cache_dir=cache), Classical()]
    stereo = embed_file(tmp_path / "stereo.flac", extractors, soundscape=False)
    mono = embed_file(tmp_path / "mono.flac", extractors, soundscape=False)
    assert set(stereo) == {"birdnet", "birdnet_logits", "classical"}
    for view, (starts, X) in stereo.items():
        assert starts.tolist() == [0, 5] and np.all(np.isfinite(X))      # 6.5 s: a full window + a 1.5-s tail
        np.testing.assert_array_equal(X, mono[view][1])
    assert stereo["birdnet_logits"][1].shape == (2, 6522)


def test_corrupt_file_is_recorded_and_skipped(tmp_path: Path, shared_data: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shared_data / "bc2026", data)
    store = tmp_path / "store"
    y, _ = sf.read(str(shared_data / "field" / "spinetail.wav"), dtype="float32")
    stereo = np.stack([y[: 44100 * 7], 0.5 * y[44100: 44100 * 8]], axis=1)   # 7 s, 44.1 kHz, 2 channels
    sf.write(data / "train_audio" / "1595929" / "stereo44k.flac", stereo, 44100)
    run_ingest(data, store, workers=1)
    victim = data / CLIP
    good = victim.read_bytes()
    victim.write_bytes(good[:200] + bytes(5000))                       # damaged after ingest
    summary = run_embed(store, "classical", workers=1)
    assert summary.windows_now == {"classical": 14} and summary.windows_stored == {"classical": 14}
    assert [e["file"] for e in summary.errors] == [CLIP]
    assert "cannot decode audio" in summary.errors[0]["message"] and str(victim) in summary.errors[0]["message"]
    assert "1 file(s) skipped" in summary.render()
    with FeatureStore.open(store, read_only=True) as s:
        assert s.rows("SELECT file FROM embed_errors") == [(CLIP,)]
    victim.write_bytes(good)                                           # fixed: the re-run fills the gap
    again = run_embed(store, "classical", workers=1)
    assert again.windows_now == {"classical": 7} and again.errors == []
    assert again.windows_stored == {"classical": 21}
    with FeatureStore.open(store, read_only=True) as s:
        assert s.count("embed_errors") == 0                            # the fixed file's error is gone
        padded = s.rows("SELECT window_id, valid_fraction FROM classical_windows WHERE window_id LIKE '%stereo44k%' "
                        "ORDER BY 1")
    assert padded == [("train_audio/1595929/stereo44k.flac@0", 1.0),
                      ("train_audio/1595929/stereo44k.flac@5", pytest.approx(0.4))]
    with pytest.raises(DataError, match=r"no windows from source\(s\) \['train_audios'\]"):
        run_embed(store, "classical", sources=["train_audios"])
    with pytest.raises(DataError, match="audio folder .* not found"):
        run_embed(store, "classical", data_dir=tmp_path / "nowhere")


def test_two_shards_give_the_same_rows_as_one_run(demo_store: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(demo_store, one)
    shutil.copytree(demo_store, two)
    whole = run_embed(one, "classical", workers=1, sources=["train_audio"])
    halves = [run_embed(two, "classical", workers=1, shard=f"{i}/2", sources=["train_audio"]) for i in range(2)]
    assert sum(h.windows_now["classical"] for h in halves) == whole.windows_now["classical"]
    assert all(h.windows_now["classical"] > 0 for h in halves)

    def rows(store: Path) -> list:
        con = _raw(store, "classical_windows")
        return con.execute("SELECT window_id, extractor_version, valid_fraction, features FROM raw ORDER BY 1").fetchall()

    assert rows(one) == rows(two)
    assert parse_shard("1/2") == (1, 2) and in_shard("a/b.ogg", (0, 1))
    with pytest.raises(DataError, match="need 0 <= I < N"):
        parse_shard("2/2")


def test_the_plans_sql_shard_rule_picks_the_same_files_as_in_shard(shared_data: Path) -> None:
    """The embed plan splits files in DuckDB (:func:`embed.job.shard_sql`): the same files as :func:`in_shard`
    for the real file names of the shared label files, 2,000 more of their shape and a non-ASCII one."""
    import duckdb

    keys = []
    for name, source in (("train.csv", "train_audio"), ("train_soundscapes_labels.csv", "train_soundscapes")):
        with open(shared_data / "bc2026" / name, newline="", encoding="utf-8") as fh:
            keys += [f"{source}/{r['filename']}" for r in csv.DictReader(fh)]
    keys = sorted(set(keys))                               # the real names, then 2,000 of the same shape
    keys += [f"train_soundscapes/BC2026_Train_{i:05d}_S{i % 23:02d}_20250{i % 9 + 1}01_{i % 24:02d}0000.ogg"
             for i in range(2000)] + ["train_audio/ünïcödé/x'y.ogg"]
    con = duckdb.connect()
    con.execute("CREATE TABLE k AS SELECT unnest(?) AS key", [keys])
    for shard in ((0, 1), (0, 2), (1, 2), (2, 3), (4, 7)):
        got = {r[0] for r in con.execute(f"SELECT key FROM k WHERE {shard_sql('key', shard)}").fetchall()}
        assert got == {k for k in keys if in_shard(k, shard)}, shard


def test_custom_model_job_with_two_workers(tmp_path: Path, bc2026_store: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    build_tiny_tflite(model_dir / "tiny.tflite", 16000, 16, 3)
    (model_dir / "labels.txt").write_text("Guyalna cuta\nnoise\nLysapsus limellum\n")
    config = {"name": "tiny", "sample_rate": 16000, "frame_seconds": 1.0, "hop_seconds": 2.0,
              "embedding_output": "embedding", "logits_output": "logits", "labels_file": "labels.txt"}
    store = tmp_path / "store"
    shutil.copytree(bc2026_store, store)
    summary = run_embed(store, "custom", model=model_dir / "tiny.tflite", model_config=config, workers=2,
                        task_seconds=10)
    assert summary.windows_now == {"custom:tiny": 19} and summary.errors == []
    with FeatureStore.open(store, read_only=True) as s:
        ids, X, names, versions = load_window_features(s, "custom:tiny,custom_logits:tiny")
        assert len(ids) == 19 and X.shape == (19, 16 + 2)
        assert names[-2:] == ["custom_logit:tiny:1161364", "custom_logit:tiny:1595929"]
        assert versions["custom:tiny"] == summary.versions["custom:tiny"]
        assert s.first("SELECT count(DISTINCT extractor) FROM custom_frames") == (1,)


def test_missing_features_and_bad_views_say_what_to_run(bc2026_store: Path, capsys) -> None:
    with FeatureStore.open(bc2026_store, read_only=True) as s:
        with pytest.raises(StoreError, match="run python -m pipelines.embed"):
            load_window_features(s, "birdnet")
        with pytest.raises(ValueError, match="unknown feature view 'perch_v3'"):
            load_window_features(s, "perch_v3")
        with pytest.raises(StoreError, match="run python -m pipelines.embed"):     # a known view not embedded yet
            load_window_features(s, "perch")
        with pytest.raises(ValueError, match="unknown pooling"):
            load_window_features(s, "birdnet", pooling="median")
    with pytest.raises(SystemExit) as exit_info:
        embed_cli.main(["--help"])
    assert exit_info.value.code == 0 and "--shard" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_mid_job_then_rerun_gives_every_window_once(demo_store: Path, tmp_path: Path, cache: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipelines.embed", "--store", str(store), "--extractor", "birdnet",
           "--sources", "train_audio", "--task-seconds", "15", "--cache-dir", str(cache), "--quiet"]
    parts = store / "parts" / "birdnet_frames"
    proc = subprocess.Popen([*cmd, "--workers", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and workers
    deadline = time.monotonic() + 10      # orphaned workers notice the dead parent and exit without writing
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    with FeatureStore.open(store, read_only=True) as s:
        expected = s.first("SELECT count(*) FROM windows WHERE source = 'train_audio'")[0]
    con = _raw(store, "birdnet_frames")
    partial = con.execute("SELECT count(DISTINCT window_id) FROM raw").fetchall()[0][0]
    assert 0 < partial < expected
    done = subprocess.run([*cmd, "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{expected - partial} window(s) embedded now, {partial} already stored" in done.stdout
    con = _raw(store, "birdnet_frames")
    assert con.execute("SELECT count(DISTINCT window_id) FROM raw").fetchall() == [(expected,)]
    assert con.execute("SELECT count(*) FROM (SELECT window_id, frame_index FROM raw GROUP BY ALL "
                       "HAVING count(*) > 1)").fetchall() == [(0,)]
    assert not list(parts.glob(".*.tmp"))


# ---------------------------------------------------------------------------- load_window_features on crafted parts
# Several parts, keys re-written in later parts (some frames of a window only, so its frames come from
# several parts), exact written_at ties (the last part by name wins, then the last row in it), NULL
# written_at (loses), ragged frame counts, a part in several row groups, two versions, a logits column
# and a window-level table; compared with a plain pyarrow read of every part + Python latest-per-key +
# numpy pooling in float64.
_DIM, _LOGITS, _FEATS = 8, 3, 5
_V1, _V2, _VC = "birdnet-crafted-1", "birdnet-crafted-2", "classical-crafted-1"


def _t(seconds: int | None):
    import datetime as dt

    return None if seconds is None else dt.datetime(2026, 1, 1) + dt.timedelta(seconds=seconds)


def _frame_part(rows: list[tuple[str, int, int | None, str]], seed: int, logits: bool = True):
    """Rows (window, frame, written_at seconds, version) with seeded float16 embeddings and float32 logits."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n = len(rows)
    emb = (rng.standard_normal((n, _DIM)) * 3).astype(np.float16)
    cols = {"window_id": pa.array([r[0] for r in rows], pa.string()),
            "frame_index": pa.array([r[1] for r in rows], pa.int16()),
            "extractor": pa.array(["birdnet"] * n, pa.string()),
            "extractor_version": pa.array([r[3] for r in rows], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), _DIM)}
    if logits:
        lg = rng.standard_normal((n, _LOGITS)).astype(np.float32)
        cols["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(lg.ravel(), pa.float32()), _LOGITS)
    cols["written_at"] = pa.array([_t(r[2]) for r in rows], pa.timestamp("us"))
    return pa.table(cols)


def _crafted_store(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = lambda w, n, t, v=_V1: [(w, f, t, v) for f in range(n)]     # noqa: E731
    with FeatureStore.open(root) as s:
        for version, table, labels, names in ((_V1, "birdnet_frames", ["ab", "cd", "ef"], []),
                                              (_V2, "birdnet_frames", ["ab", "cd", "ef"], []),
                                              (_VC, "classical_windows", [], [f"stat{i}" for i in range(_FEATS)])):
            s.append_part("extractor_versions", pa.table({
                "extractor": [version.split("-")[0]], "extractor_version": [version], "table_name": [table],
                "params": ["{}"], "logit_labels": pa.array([labels], pa.list_(pa.string())),
                "feature_names": pa.array([names], pa.list_(pa.string())),
                "written_at": pa.array([_t(0)], pa.timestamp("us"))}))
        s.append_part("birdnet_frames", _frame_part(
            frames("w01", 3, 10) + frames("w02", 1, 10) + frames("w03", 2, 10) + frames("w04", 3, 10)
            + frames("w05", 3, 10) + frames("w06", 2, 10) + frames("w08", 3, 10, _V2), 1), prefix="a")
        s.append_part("birdnet_frames", _frame_part(                       # later: some frames of w01, all of w04
            [("w01", 1, 20, _V1)] + frames("w04", 3, 20) + frames("w07", 2, 20) + frames("w01", 3, 5, _V2), 2),
            prefix="b")
        s.append_part("birdnet_frames", _frame_part(                       # exact ties with part a (c sorts later),
            [("w05", 0, 10, _V1), ("w05", 2, 10, _V1), ("w05", 2, 10, _V1),   # and twice in c: its last row wins
             ("w06", 0, None, _V1), ("w03", 1, 9, _V1)], 3), prefix="c")      # NULL and older written_at lose
        directory = s.parts_dir("birdnet_frames")                            # a part in 4 row groups, 9 frames
        pq.write_table(_frame_part(frames("w09", 4, 30) + frames("w10", 5, 30) + [("w02", 0, 30, _V1)], 4),
                       directory / "d-rowgroups.parquet", row_group_size=3)
        rng = np.random.default_rng(5)
        for prefix, ids, t in (("a", ["w01", "w02", "w03", "w04", "w05", "w07"], 10), ("b", ["w03"], 20),
                               ("c", ["w04"], 10)):
            feats = rng.standard_normal((len(ids), _FEATS)).astype(np.float32)
            s.append_part("classical_windows", pa.table({
                "window_id": ids, "extractor": ["classical"] * len(ids), "extractor_version": [_VC] * len(ids),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), _FEATS),
                "written_at": pa.array([_t(t)] * len(ids), pa.timestamp("us"))}), prefix=prefix)
    return root


def _reference(root: Path, table: str, column: str, version: str, frame_level: bool, pooling: str,
               wanted: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Plain pyarrow read of every part, latest row per key in Python, pooling in float64 with numpy."""
    import pyarrow.parquet as pq

    best: dict[tuple, tuple] = {}
    for path in sorted((root / "parts" / table).glob("*.parquet")):
        for i, r in enumerate(pq.read_table(path).to_pylist()):
            if r["extractor_version"] != version or (wanted is not None and r["window_id"] not in wanted):
                continue
            key = (r["window_id"], r["frame_index"]) if frame_level else (r["window_id"],)
            rank = (r["written_at"] is not None, r["written_at"] or _t(0), path.name, i)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, r[column])
    windows = sorted({k[0] for k in best})
    rows = []
    for w in windows:
        vals = np.array([best[k][1] for k in sorted(k for k in best if k[0] == w)], np.float64)
        if not frame_level:
            rows.append(vals[0].astype(np.float32))
            continue
        total = np.zeros(vals.shape[1])
        for v in vals:                                     # the frames in order, one float64 addition each
            total += v
        mean, high = (total / len(vals)).astype(np.float32), vals.max(axis=0).astype(np.float32)
        rows.append({"mean": mean, "max": high, "meanmax": np.r_[mean, high]}[pooling])
    return windows, np.array(rows, np.float32)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _crafted_store(tmp_path_factory.mktemp("crafted") / "store")


@pytest.mark.parametrize("unit_rows", [2, 8192])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_load_window_features_equals_a_plain_read_latest_per_key_and_float64_pooling(
        crafted: Path, pooling: str, unit_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import embed.features as features

    monkeypatch.setattr(features, "LOAD_UNIT_ROWS", unit_rows)   # 2: nearly every window pooled from pieces
    with FeatureStore.open(crafted, read_only=True) as s:
        for view, column in (("birdnet", "embedding"), ("birdnet_logits", "logits")):
            for wanted in (None, ["w05", "w01", "nope", "w10", "w01", "w03"]):
                for pinned in ({"birdnet": _V1}, {"birdnet": _V2}, None):
                    v = (pinned or {"birdnet": _V1})["birdnet"]   # v1 rows were written last: the default
                    ids, X, names, used = load_window_features(s, view, pooling, window_ids=wanted, versions=pinned)
                    ref_ids, ref = _reference(crafted, "birdnet_frames", column, v, True, pooling,
                                              None if wanted is None else set(wanted))
                    order = ref_ids if wanted is None else [w for w in dict.fromkeys(wanted) if w in ref_ids]
                    assert used == {"birdnet": v} and ids == order
                    assert X.dtype == np.float32 and np.array_equal(X, ref[[ref_ids.index(w) for w in order]])
                    dim = _DIM if column == "embedding" else _LOGITS
                    base = ([f"birdnet:{i}" for i in range(dim)] if column == "embedding"
                            else [f"birdnet_logit:{lab}" for lab in ("ab", "cd", "ef")])
                    assert names == base + ([f"{n}@max" for n in base] if pooling == "meanmax" else [])
        assert load_window_features(s, "birdnet", pooling, versions={"birdnet": _V2})[0] == ["w01", "w08"]
        assert load_window_features(s, "birdnet", pooling)[0] == ["w01", "w02", "w03", "w04", "w05", "w06", "w07",
                                                                  "w09", "w10"]

        ids, X, names, used = load_window_features(s, "birdnet,classical,birdnet_logits", pooling)
        b_ids, b = _reference(crafted, "birdnet_frames", "embedding", _V1, True, pooling)
        c_ids, c = _reference(crafted, "classical_windows", "features", _VC, False, pooling)
        l_ids, lg = _reference(crafted, "birdnet_frames", "logits", _V1, True, pooling)
        assert ids == [w for w in b_ids if w in c_ids] == ["w01", "w02", "w03", "w04", "w05", "w07"]
        expected = np.hstack([m[[r.index(w) for w in ids]] for r, m in ((b_ids, b), (c_ids, c), (l_ids, lg))])
        assert np.array_equal(X, expected) and used == {"birdnet": _V1, "classical": _VC}
        assert names[b.shape[1]:b.shape[1] + _FEATS] == [f"classical:stat{i}" for i in range(_FEATS)]


def test_load_window_features_tie_and_split_rules_by_hand(crafted: Path) -> None:
    import pyarrow.parquet as pq

    parts = {p.name[0]: pq.read_table(p) for p in (crafted / "parts" / "birdnet_frames").glob("*.parquet")}

    def frame(part: str, window: str, index: int, last: bool = False) -> np.ndarray:
        t = parts[part].to_pylist()
        hits = [r["embedding"] for r in t if (r["window_id"], r["frame_index"], r["extractor_version"])
                == (window, index, _V1)]
        return np.array(hits[-1 if last else 0], np.float64)

    with FeatureStore.open(crafted, read_only=True) as s:
        ids, X, _, _ = load_window_features(s, "birdnet", "mean", window_ids=["w01", "w05", "w06", "w03"])
    by_hand = {"w01": [frame("a", "w01", 0), frame("b", "w01", 1), frame("a", "w01", 2)],   # frame 1 re-written
               "w05": [frame("c", "w05", 0), frame("a", "w05", 1), frame("c", "w05", 2, last=True)],  # ties
               "w06": [frame("a", "w06", 0), frame("a", "w06", 1)],                       # NULL written_at lost
               "w03": [frame("a", "w03", 0), frame("a", "w03", 1)]}                       # older row lost
    assert ids == list(by_hand)
    for i, w in enumerate(ids):
        assert np.array_equal(X[i], (((by_hand[w][0] + by_hand[w][1]) + sum(by_hand[w][2:], 0.0))
                                     / len(by_hand[w])).astype(np.float32))


def test_load_window_features_names_a_part_damaged_inside_its_payload_and_parts_missing_a_column(
        crafted: Path, tmp_path: Path) -> None:

    store = tmp_path / "store"
    shutil.copytree(crafted, store)
    part = next((store / "parts" / "birdnet_frames").glob("b-*.parquet"))
    damage_payload(part)                                     # footer intact: only reading the payload fails
    with FeatureStore.open(store, read_only=True) as s:
        with pytest.raises(StoreError) as err:
            load_window_features(s, "birdnet")
        rel = part.relative_to(store)
        assert str(err.value).startswith(f"part {rel} of table birdnet_frames in store {store} is damaged (unreadable")
        assert load_window_features(s, "birdnet_logits")[0]   # its other columns still read
    part.unlink()
    with FeatureStore.open(store) as s:                      # an older part written without the logits column
        s.append_part("birdnet_frames", _frame_part([("w11", 0, 40, _V1), ("w11", 1, 40, _V1)], 6, logits=False))
    with FeatureStore.open(store, read_only=True) as s, pytest.raises(
            StoreError, match=rf"^birdnet_frames\.logits \({_V1}\): 2 row\(s\) have no values$"):
        load_window_features(s, "birdnet_logits")
    os.truncate(next((store / "parts" / "birdnet_frames").glob("a-*.parquet")), 100)
    with FeatureStore.open(store, read_only=True) as s, pytest.raises(StoreError, match="no Parquet footer"):
        load_window_features(s, "birdnet", versions={"birdnet": _V1})


@pytest.mark.parametrize("pooling", POOLINGS)
def test_store_path_pooling_gives_the_bits_of_pool_frames(pooling: str) -> None:
    from embed.features import _pool_rows

    rng = np.random.default_rng(7)
    for trial in range(60):
        counts = rng.integers(1, 12, rng.integers(1, 40))          # 8 frames or more: pool_frames' own sum
        window = np.repeat(rng.permutation(200)[:len(counts)].cumsum(), counts)
        values = (rng.standard_normal((len(window), int(rng.integers(1, 20)))) * 10).astype(np.float32)
        if trial % 2:
            values = values.astype(np.float16).astype(np.float32)
        mask = rng.random(values.shape)
        values[mask < 0.1], values[(mask >= 0.1) & (mask < 0.2)] = 0.0, -0.0
        values[(mask >= 0.2) & (mask < 0.22)], values[(mask >= 0.22) & (mask < 0.24)] = np.inf, -np.inf
        with np.errstate(invalid="ignore"):
            assert _pool_rows(window, values, pooling).tobytes() == pool_frames(window, values, pooling).tobytes()


def test_load_window_features_reads_variable_length_lists_and_names_ragged_rows(tmp_path: Path) -> None:
    import pyarrow as pa

    rng = np.random.default_rng(3)
    with FeatureStore.open(tmp_path / "store") as s:
        for prefix, ids, t in (("a", ["w1", "w2", "w3"], 10), ("b", ["w2"], 20)):   # list<float>, not fixed-size
            feats = rng.standard_normal((len(ids), _FEATS)).astype(np.float32)
            s.append_part("classical_windows", pa.table({
                "window_id": ids, "extractor": ["classical"] * len(ids), "extractor_version": [_VC] * len(ids),
                "features": pa.array(list(feats), pa.list_(pa.float32())),
                "written_at": pa.array([_t(t)] * len(ids), pa.timestamp("us"))}), prefix=prefix)
        ids, X, names, _ = load_window_features(s, "classical", window_ids=["w3", "w2"])
        ref_ids, ref = _reference(tmp_path / "store", "classical_windows", "features", _VC, False, "mean")
        assert ids == ["w3", "w2"] and np.array_equal(X, ref[[2, 1]])
        assert names == [f"classical:{i}" for i in range(_FEATS)]
        s.append_part("classical_windows", pa.table({
            "window_id": ["w4"], "extractor": ["classical"], "extractor_version": [_VC],
            "features": pa.array([[1.0, 2.0]], pa.list_(pa.float32())),
            "written_at": pa.array([_t(30)], pa.timestamp("us"))}), prefix="c")
        with pytest.raises(StoreError, match=rf"^classical_windows\.features \({_VC}\): rows of different lengths "
                                             r"\(2\.\.5\)$"):
            load_window_features(s, "classical")
