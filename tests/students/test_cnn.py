"""The CNN student: its numpy front end, training (distillation, fine-tuning, resume), TFLite export, and
its use as an extractor by heads and predict without TensorFlow.

Real components throughout: TensorFlow trains a (tiny) CNN on the small demo store's real decoded
windows and BirdNET embeddings; ai-edge-litert runs the exported model; the CC0 clips of the shared
data are decoded for the Keras-vs-TFLite check; librosa is the front end's independent reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import spawned_children, survivors

from embed.audio import Audio
from embed.cnn import CnnModel, FrontEnd, Sidecar, front_end, sidecar_path
from featurestore.errors import ModelError, UserInputError
from featurestore.store import FeatureStore
from models.metrics import fold_mean_std
from students import cnn

pytestmark = pytest.mark.tf      # trains and exports the CNN student with TensorFlow
REPO = Path(__file__).resolve().parents[2]
CLIPS = ["train_audio/1595929/iNat1242529.ogg", "train_audio/1161364/iNat1264238.ogg"]
TINY = {"channels": [4, 8], "distill_epochs": 2, "epochs": 2, "batch_size": 16, "steps_per_epoch": 4}


# ---------------------------------------------------------------------------- the front end
def test_front_end_equals_librosa_on_a_real_clip(shared_data: Path) -> None:
    import librosa

    fe = FrontEnd()
    y = Audio.load(shared_data / "bc2026" / CLIPS[0]).at(fe.sample_rate)[: fe.frame_samples]
    ours = fe.logmel(y[None, :])[0]
    mel = librosa.feature.melspectrogram(y=y.astype(np.float64), sr=fe.sample_rate, n_fft=fe.n_fft,
                                         hop_length=fe.hop, n_mels=fe.n_mels, fmin=fe.fmin, power=2.0,
                                         center=True, pad_mode="constant")
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    assert ours.shape == ref.shape == (64, 313) and ours.dtype == np.float32
    loud = ref > ref.max() - 80                                       # float32 vs float64: compare audible bins
    assert np.max(np.abs(ours[loud] - ref[loud])) < 0.01
    # a batch gives each row's own result
    two = fe.logmel(np.stack([y, y[::-1].copy()]))
    assert np.array_equal(two[0], ours)


def test_front_end_and_sidecar_refuse_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown CNN front-end parameter\(s\) \['n_mel'\]"):
        front_end({"n_mel": 32})
    with pytest.raises(ModelError, match="CNN sees whole 5-s windows"):
        front_end({"window_s": 3.0})
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    with pytest.raises(ModelError, match="no m.json beside it"):
        CnnModel(model)
    sidecar_path(model).write_text(json.dumps({"format": 1, "bogus": 1}))
    with pytest.raises(ModelError, match=r"unknown m.json sidecar parameter\(s\) \['bogus'\]"):
        Sidecar.read(model)
    with pytest.raises(UserInputError, match="unknown CNN parameter"):
        cnn.make_cnn_params({"epoch": 3})


def test_augment_keeps_power_mixing_and_shift_exact() -> None:
    fe = FrontEnd()
    rng = np.random.default_rng(0)
    x = rng.normal(-40, 10, size=(3, 4, 10)).astype(np.float32)
    shift_only = cnn.make_cnn_params({"gain_db": 0.0, "mix_prob": 0.0, "shift_s": 0.05})
    out = cnn.augment(x, np.random.default_rng(1), shift_only, fe, None)
    for b in range(3):                          # each row is a circular shift of itself
        assert any(np.array_equal(out[b], np.roll(x[b], s, axis=1)) for s in range(-3, 4))
    mix_only = cnn.make_cnn_params({"gain_db": 0.0, "shift_s": 0.0, "mix_prob": 1.0, "mix_db": [0.0, 0.0]})
    bg = rng.normal(-40, 10, size=x.shape).astype(np.float32)
    mixed = cnn.augment(x, np.random.default_rng(2), mix_only, fe, bg)
    want = 10 * np.log10(10 ** (x.astype(np.float64) / 10) + 10 ** (bg.astype(np.float64) / 10))
    assert np.allclose(mixed, want, atol=1e-4)


# ---------------------------------------------------------------------------- training on the demo
@pytest.fixture(scope="module")
def cnn_store(demo_trained, store_copy) -> Path:
    """The small demo with its trained heads, the BirdNET linear head among them (the comparison row)."""
    return store_copy(demo_trained.store, "cnn_store")


@pytest.fixture(scope="module")
def cnn_run(cnn_store: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cnn_out") / "cnn"
    lines: list[str] = []
    result = cnn.train_cnn(cnn_store, out, teacher="birdnet", params=TINY, folds=True, workers=2, say=lines.append)
    return result, out, lines


def test_cnn_run_reports_fold_mean_beside_birdnet_linear(cnn_run, cnn_store: Path, demo_trained) -> None:
    from models.frame import label_matrix, window_labels

    result, out, lines = cnn_run
    with FeatureStore.open(cnn_store, read_only=True) as store:
        row = store.first("SELECT fold_mean, oof_auc, mode, head, padded_cmap FROM experiments WHERE head_id = ?",
                          [result.cnn_id])
        linear = store.first("SELECT head_id, fold_mean FROM experiments WHERE head_id = ?",
                             [demo_trained.head("linear")])
        oof = store.sql(f"SELECT * FROM read_parquet('{store.root}/oof/{result.cnn_id}.parquet')")
        classes = [r[0] for r in store.rows("SELECT primary_label FROM taxonomy ORDER BY class_index")]
        wl = window_labels(store)
    # the row carries the headline, the pooled score beside it, and the rest of the metric report
    assert row[2] == "cnn" and row[3] == "cnn" and np.isclose(row[0], result.fold_mean)
    assert np.isclose(row[1], result.oof_auc) and row[4] is not None
    assert f"(pooled OOF {result.oof_auc:.4f})" in result.render()
    # the headline recomputed from the OOF file: one fold at a time, on the scored (soundscape) rows
    assert result.scored_on == "soundscape"
    scape = np.array([s == "train_soundscapes" for s in oof.column("source").to_pylist()])
    ids = np.array(oof.column("window_id").to_pylist())[scape]
    Y = label_matrix([wl[w][1] for w in ids], classes)
    P = np.stack([oof.column(c).to_numpy() for c in classes], axis=1)[scape]
    mean, _, _ = fold_mean_std(Y, P, oof.column("fold").to_numpy()[scape])
    assert np.isclose(mean, result.fold_mean, atol=1e-9)
    # reported next to the BirdNET linear head on the same folds
    assert linear[0] in result.compare and f"{linear[1]:.4f}" in result.compare
    assert f"fold mean {result.fold_mean:.4f}" in result.render() and result.compare in result.render()
    # progress: one line per epoch and fold, with the held-out fold's AUC
    assert sum("fold 0 finetune epoch" in line and "fold AUC" in line for line in lines) == TINY["epochs"]
    assert (out / "cnn.tflite").is_file() and (out / "cnn_f16.tflite").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cnn_id"] == result.cnn_id and "int8" in summary["int8"]
    # the results depend on TensorFlow's intra-op thread count: it is in the id (the test session runs one)
    assert json.loads((out / "run.json").read_text())["params"]["threads"] == 1


def test_tensorflow_runs_a_fixed_thread_count(cnn_run) -> None:
    """The weights depend on TensorFlow's intra-op thread count: training pins it (the test session: one, from
    its environment) and refuses another once TensorFlow runs, instead of training a different model."""
    import tensorflow as tf

    assert cnn.deterministic_tensorflow(tf) == 1 == cnn.deterministic_tensorflow(tf, 1)
    with pytest.raises(UserInputError, match=r"CNN threads 2: TensorFlow already runs on 1 intra-op thread\(s\)"):
        cnn.deterministic_tensorflow(tf, 2)
    with pytest.raises(UserInputError, match="CNN threads must be a positive integer"):
        cnn.make_cnn_params({"threads": 0})


def test_distillation_loss_falls(cnn_run) -> None:
    _, out, _ = cnn_run
    for k in (0, 1):
        history = json.loads((out / "work" / f"fold_{k}" / "history.json").read_text())
        distill = [h for h in history if h["stage"] == "distill"]
        assert len(distill) == TINY["distill_epochs"]
        assert distill[-1]["held_out_cosine_loss"] < distill[0]["held_out_cosine_loss"]
        assert distill[-1]["loss"] < 0.9 * distill[0]["loss"]


def test_rerun_resumes_without_training(cnn_run, cnn_store: Path) -> None:
    result, out, _ = cnn_run
    lines: list[str] = []
    again = cnn.train_cnn(cnn_store, out, teacher="birdnet", params=TINY, folds=True, workers=1, say=lines.append)
    assert again.cnn_id == result.cnn_id and again.fold_mean == result.fold_mean
    assert not any(" epoch " in line for line in lines)                 # every epoch was checkpointed
    assert sum("done earlier" in line for line in lines) == len(result.fold_scores) + 1   # + the all-data model
    with pytest.raises(UserInputError, match="holds another CNN run"):
        cnn.train_cnn(cnn_store, out, teacher="birdnet", params={**TINY, "seed": 1}, folds=True, say=lines.append)


def test_exported_tflite_equals_keras_on_real_clips(cnn_run, shared_data: Path, tmp_path: Path) -> None:
    """The trained fold-0 Keras model and its float32 / float16 TFLite exports agree on the real CC0 clips,
    through the extractor's own audio path (decode, 5-s frames, numpy front end)."""
    import keras

    result, out, _ = cnn_run
    side = Sidecar.read(out / "cnn.tflite")
    fe = front_end(side.frontend)
    model = cnn.build_model(fe, len(side.class_names), side.embedding_dim, cnn.make_cnn_params(TINY))
    keras.utils.set_random_seed(3)                                   # non-trivial weights: perturb BN stats too
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(0).normal(size=layer.moving_mean.shape) * 0.1)
    cnn.export(model, tmp_path, fe, side.class_names, name="f32", precision="float32")
    cnn.export(model, tmp_path, fe, side.class_names, name="f16", precision="float16")
    for clip in CLIPS:
        audio = shared_data / "bc2026" / clip
        duration = Audio.load(audio).duration_s
        starts = [float(s) for s in range(0, max(1, int(np.ceil(duration / 5))) * 5, 5)]
        frames = cnn.window_frames_of(audio, starts, fe).astype(np.float32)
        want_emb, want = (np.asarray(t) for t in model(frames[..., None], training=False))
        span = float(np.ptp(want)) or 1.0
        for name, tol in (("f32", 1e-4), ("f16", 2e-2)):
            out_ = CnnModel(tmp_path / f"{name}.tflite").compute(Audio.open(audio), starts)
            assert out_.logits.shape == want.shape
            # the extractor's frames are float32 log-mels; the cache's are float16: compare both paths
            assert np.max(np.abs(out_.logits - want)) / span < tol + 2e-3, (clip, name)
            assert np.max(np.abs(out_.embedding.astype(np.float32) - want_emb)) / float(np.ptp(want_emb)) < tol + 5e-3


def test_cnn_features_train_a_head_and_predict_without_tensorflow(cnn_run, cnn_store: Path, store_copy,
                                                                   demo_data: Path, tmp_path: Path) -> None:
    from embed.job import run_embed
    from models.frame import FrameSpec
    from models.training import train_head

    result, out, _ = cnn_run
    store = store_copy(cnn_store, "cnn_embedded")
    summary = run_embed(store, "cnn", workers=2, model=out / "cnn.tflite")
    assert summary.errors == []
    head = train_head(store, "linear", FrameSpec(features="cnn,cnn_logits"))
    assert head.fold_mean == head.fold_mean                           # scored (not NaN)
    audio = demo_data / "test_soundscapes"
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from pipelines.predict import main\n"
            f"main(['--store', {str(store)!r}, '--head-id', {head.head_id!r}, '--audio', {str(audio)!r}, "
            f"'--out', {str(tmp_path / 'sub.csv')!r}])\n"
            "assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    with FeatureStore.open(store, read_only=True) as s:
        n_classes = s.count("taxonomy")
    assert len(lines) > 1 and len(lines[0].split(",")) == 1 + n_classes


def test_cli_help_and_errors(cnn_store: Path, tmp_path: Path) -> None:
    help_ = subprocess.run([sys.executable, "-m", "pipelines.cnn", "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0 and "python -m pipelines.cnn --store work/store --teacher birdnet" in help_.stdout
    bad = subprocess.run([sys.executable, "-m", "pipelines.cnn", "--store", str(cnn_store), "--teacher", "classical",
                          "--out", str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: --teacher 'classical': use birdnet or custom:<name>" in bad.stderr


def test_kaggle_bundle_ships_the_cnn_and_its_sidecar(cnn_run, shared_data: Path, tmp_path: Path) -> None:
    """The export copies the .tflite and its .json into models/cnn/; the notebook's runtime options point the
    rebuilt extractor at the copies (the originals moved away), and it computes the same outputs."""
    from embed import registry
    from submit.export import copy_models
    from submit.runtime import bundle_runtime

    _, out, _ = cnn_run
    ex = CnnModel(out / "cnn.tflite")
    params = json.loads(json.dumps(ex.params()))
    work = tmp_path / "bundle"
    manifest = copy_models({"cnn": params}, work)
    assert manifest["cnn_model"] == "models/cnn/cnn.tflite"
    assert (work / "models" / "cnn" / "cnn.json").is_file()
    moved = {**params, "model_path": str(tmp_path / "gone" / "cnn.tflite")}
    rebuilt = registry.from_params(moved, **bundle_runtime(work, manifest))
    assert rebuilt.version == ex.version and rebuilt.model_path == (work / "models" / "cnn" / "cnn.tflite").resolve()
    clip = shared_data / "bc2026" / CLIPS[0]
    a, b = ex.compute(Audio.open(clip), [0.0, 5.0]), rebuilt.compute(Audio.open(clip), [0.0, 5.0])
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.embedding, b.embedding)


def test_front_end_cache_recomputes_only_rows_not_marked_done(cnn_store: Path) -> None:
    """The cache holds the extractor's own front end of each window; rows not marked done (a killed build)
    are recomputed and nothing else is touched."""
    fe = FrontEnd()
    with FeatureStore.open(cnn_store, create=False) as store:
        ids = [r[0] for r in store.rows("SELECT window_id FROM windows WHERE source = 'train_audio' "
                                        "ORDER BY window_id LIMIT 6")]
        folder, cache = cnn.build_cache(store, ids, fe, workers=1, say=lambda _: None)
        first = np.array(cache)
        done = np.load(folder / "done.npy")
        done[[1, 4]] = False                                         # as if killed before these were saved
        np.save(folder / "done.npy", done)
        rw = np.lib.format.open_memmap(folder / "logmel.npy", mode="r+")
        rw[[1, 4]] = 0
        rw[0] = 7                                                    # a done row: must stay as it is
        rw.flush()
        del rw
        said: list[str] = []
        _, again = cnn.build_cache(store, ids, fe, workers=1, say=said.append)
        assert "2 of 6 windows to compute" in said[0]
        assert np.array_equal(again[[1, 4]], first[[1, 4]]) and np.all(again[0] == 7)
        # the cached row is the extractor's front end of the same window, rounded to float16
        from featurestore.windows import file_of, start_of

        data_dir = Path(store.first("SELECT data_dir FROM ingest_runs ORDER BY run_at DESC LIMIT 1")[0])
        path = data_dir / file_of(ids[1])
        frames = Audio.load(path).at(fe.sample_rate)
        s0 = start_of(ids[1]) * fe.sample_rate
        frame = np.zeros(fe.frame_samples, np.float32)
        chunk = frames[s0: s0 + fe.frame_samples]
        frame[: len(chunk)] = chunk
        assert np.array_equal(first[1], fe.logmel(frame[None])[0].astype(np.float16))


def test_killed_training_resumes_at_its_last_epoch(cnn_store: Path, store_copy, tmp_path: Path) -> None:
    import os
    import signal
    import time

    store = store_copy(cnn_store, "cnn_kill")
    out = tmp_path / "cnn"
    params = json.dumps({**TINY, "distill_epochs": 3, "epochs": 3, "steps_per_epoch": 6})
    cmd = [sys.executable, "-m", "pipelines.cnn", "--store", str(store), "--out", str(out), "--params", params,
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "work" / "all" / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(json.loads(history.read_text())) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(history.read_text()))
    assert 2 <= done_before < 6, "the run finished before it could be killed"
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "all data: resuming after epoch" in run.stdout
    final = json.loads(history.read_text())
    assert [(h["stage"], h["epoch"]) for h in final] == [("distill", e) for e in range(3)] + \
        [("finetune", e) for e in range(3)]
    assert (out / "cnn.tflite").is_file() and Sidecar.read(out / "cnn.tflite").trained_on == "all"
    # reproducible: the same configuration trained straight through, in this process, gives the same bytes as the
    # run killed and resumed in another (before: the dropout state restarted on resume, and the weights moved)
    straight = tmp_path / "straight"
    again = cnn.train_cnn(store, straight, params=json.loads(params), folds=False, workers=1, say=lambda _: None)
    assert again.cnn_id == json.loads((out / "run.json").read_text())["cnn_id"]
    names = sorted(p.name for p in out.iterdir() if p.suffix in (".tflite", ".json"))
    assert names == sorted(p.name for p in straight.iterdir() if p.suffix in (".tflite", ".json"))
    assert {"cnn.tflite", "cnn.json", "cnn_f16.tflite", "cnn_f16.json", "summary.json"} <= set(names)
    for name in names:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_undecodable_audio_is_named_and_left_out(cnn_store: Path, store_copy, demo_data: Path, tmp_path: Path) -> None:
    """A corrupt clip: the cache build names it and caches every other file; once the embed job
    has recorded it in embed_errors (as it does for a file it cannot decode), the CNN trains without it."""
    import shutil

    import duckdb

    from embed.job import error_rows, part_path
    from featurestore.errors import AudioError
    from featurestore.store import write_parquet_atomic
    from featurestore.windows import file_of

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    store = store_copy(cnn_store, "cnn_corrupt")
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE ingest_runs SET data_dir = ?", [str(data)])
    with FeatureStore.open(store, create=False) as s:
        ids = [r[0] for r in s.rows("SELECT window_id FROM windows WHERE source = 'train_audio' ORDER BY window_id")]
    files = sorted({file_of(w) for w in ids})
    bad = files[2]
    (data / bad).write_bytes(b"OggS" + bytes(range(256)) * 8)                # not audio any more
    wanted = [w for w in ids if file_of(w) in files[:3]]
    with FeatureStore.open(store, create=False) as s, \
            pytest.raises(AudioError, match=rf"1 file\(s\) could not be decoded \(first: .*{bad.rpartition('/')[2]}"):
        cnn.build_cache(s, wanted, FrontEnd(), workers=1, say=lambda _: None)
    folder = next(f for f in (store / cnn.CACHE_DIR).iterdir() if (f / "windows.txt").read_text().split() == wanted)
    done = np.load(folder / "done.npy")
    assert done[[file_of(w) in files[:2] for w in wanted]].all()         # the other two files are cached
    assert not done[[file_of(w) == bad for w in wanted]].any()

    with FeatureStore.open(store, create=False) as s:
        version = s.first("SELECT extractor_version FROM birdnet_frames LIMIT 1")[0]
        write_parquet_atomic(error_rows([{"file": bad, "extractor_version": version, "message": "corrupt"}]),
                             part_path(s.root / "parts", "embed_errors"))
        s.refresh_part_views()
        said: list[str] = []
        loaded = cnn.load_data(s, "birdnet", cnn.make_cnn_params(TINY), FrontEnd(), workers=1, say=said.append)
    assert not any(file_of(w) == bad for w in loaded.window_ids)
    n_bad = sum(file_of(w) == bad for w in ids)
    assert f"cnn: {n_bad} window(s) of 1 undecodable file(s) left out" in said[0]


def test_real_shared_files_nothing_scorable(bc2026_store: Path, store_copy, shared_data: Path,
                                            tmp_path: Path) -> None:
    """On the store of the real competition files (4 focal clips, the 0.29-s one among them; labelled
    soundscapes without audio) the CNN trains and exports, and says the headline is undefined instead
    of inventing one: the experiments row holds NULL, never a score of windows the model saw."""
    from embed.job import run_embed
    from featurestore.folds import make_folds

    store = store_copy(bc2026_store, "cnn_real")
    make_folds(store)
    assert run_embed(store, "birdnet", workers=1).errors == []
    result = cnn.train_cnn(store, tmp_path / "cnn", params={**TINY, "batch_size": 4}, folds=True, workers=1,
                           say=lambda _: None)
    assert result.scored_on == "none" and np.isnan(result.fold_mean) and np.isnan(result.oof_auc)
    assert "headline is undefined" in result.render()
    assert "int8 not exported: no held-out fold score" in result.int8_note
    with FeatureStore.open(store, read_only=True) as s:
        assert s.first("SELECT fold_mean, oof_auc, mode FROM experiments WHERE head_id = ?",
                       [result.cnn_id]) == (None, None, "cnn")
    out = CnnModel(result.model_path).compute(Audio.open(shared_data / "bc2026" / CLIPS[1]), [0.0])
    assert out.logits.shape == (1, len(Sidecar.read(result.model_path).class_names)) and np.isfinite(out.logits).all()


# ---------------------------------------------------------------------------- the cache's worker pool, a full disk
CACHE_JOB = """
import sys
from pipelines._cli import run_main

def main(argv):
    from embed.cnn import FrontEnd
    from featurestore.store import FeatureStore
    from featurestore.windows import TEST
    from students import cnn
    with FeatureStore.open(argv[0], create=False) as store:
        ids = [r[0] for r in store.rows("SELECT window_id FROM windows WHERE source <> ? ORDER BY window_id", [TEST])]
        cnn.build_cache(store, ids, FrontEnd(), workers=2)
    return 0

if __name__ == "__main__":
    run_main(main, sys.argv[1:])
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="looks the workers up in /proc")
def test_killed_cache_build_leaves_no_workers(demo_trained, store_copy) -> None:
    """kill -9 of the CNN job while its workers compute the front-end cache: they exit too (before: they waited
    forever on their task pipe, re-parented to init)."""
    import os
    import signal
    import time

    store = store_copy(demo_trained.store, "cnn_kill_cache")
    job = subprocess.Popen([sys.executable, "-c", CACHE_JOB, str(store)], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and job.poll() is None and len(workers) < 2:
            workers = spawned_children(job.pid)
            time.sleep(0.05)
        assert len(workers) == 2 and job.poll() is None, "the cache was built before its workers were seen"
        time.sleep(0.5)
        assert job.poll() is None, "the cache was built before it could be killed"
        os.kill(job.pid, signal.SIGKILL)
        assert job.wait(timeout=30) == -signal.SIGKILL                  # killed, not ended on its own
        left = survivors(workers)                       # killed too: a failure leaves nothing behind
    finally:
        job.kill()
        job.wait()
    assert not left, f"cache workers {left} outlived the killed job"


def test_full_disk_while_caching_is_one_error_line(demo_trained, store_copy) -> None:
    """A real full disk: the store's cnn_cache/ on a 1-MB tmpfs (needs root to mount). Before: "Bus error", exit
    135, no message (the cache was a memory map of a sparse file); now one line naming the file, exit 2, and the
    partial file removed."""
    import os

    store = store_copy(demo_trained.store, "cnn_full_disk")
    mount = store / cnn.CACHE_DIR
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    err = store.parent / "cache_job.err"         # a file, not a pipe: orphaned workers would hold a pipe open
    try:
        with open(err, "w") as fh:
            run = subprocess.run([sys.executable, "-c", CACHE_JOB, str(store)], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=fh, timeout=300)
        left = sorted(p.name for p in mount.rglob("*") if p.is_file())
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
    stderr = err.read_text()
    assert run.returncode == 2, (run.returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full while writing {mount}/"), lines
    assert lines[0].split(": ")[1].endswith("/logmel.npy"), lines
    assert left == []                                               # no partial cache left on the full disk

