"""The embed job on real data: exact frames, store == in-memory path, bad files, shards, kill -9 resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from ai_edge_litert.interpreter import Interpreter
from embed_helpers import birdnet_cache, build_tiny_tflite
from scipy.signal import resample_poly

from embed.birdnet import BirdNet, class_layer, patched_model
from embed.classical import Classical
from embed.features import embed_file, embed_file_with_names, extractors_from_store, load_window_features
from embed.job import in_shard, parse_shard, run_embed
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
        with pytest.raises(ValueError, match="unknown feature view 'perch'"):
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
