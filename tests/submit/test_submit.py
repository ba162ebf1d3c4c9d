"""The Kaggle last mile (submit/): input probing, the manifest check, the time guard on real heads, the
planner's arithmetic on measured costs, and (slow) export -> offline dry run of the real notebook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import BundleError, DataError
from submit import runtime
from submit.dryrun import WORK_MARKER, reference_predictions
from submit.plan import Costs, LevelCost, project
from submit.predict import open_predictor
from submit.runtime import BUNDLE_KIND, MANIFEST, file_entries, predict_with_guard, verify_bundle
from submit.submission import expected_ids_for_audio, list_audio, validate_submission

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- probing + manifest
def _tiny_bundle(folder: Path) -> Path:
    (folder / "heads" / "h").mkdir(parents=True)
    (folder / "heads" / "h" / "config.json").write_text('{"a": 1}')
    (folder / "wheels").mkdir()
    (folder / "wheels" / "x-1.0-py3-none-any.whl").write_bytes(b"PK" + bytes(100))
    manifest = {"kind": BUNDLE_KIND, "files": file_entries(folder), "head_id": "h", "levels": ["h"]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_inputs_are_found_in_every_kaggle_mount_layout(tmp_path: Path, monkeypatch) -> None:
    for var in (runtime.ENV_INPUT, runtime.ENV_BUNDLE, runtime.ENV_COMPETITION):
        monkeypatch.delenv(var, raising=False)
    layouts = {"2026": ("competitions/birdclef-2026", "datasets/someone/my-bundle"),
               "classic": ("birdclef-2026", "my-bundle"),
               "renamed": ("comp-copy/inner", "x/y/z/bundle")}
    for name, (comp, bundle) in layouts.items():
        root = tmp_path / name
        (root / comp / "test_soundscapes").mkdir(parents=True)
        (root / comp / "sample_submission.csv").write_text("row_id,a\n")
        (root / "decoy").mkdir()
        (root / "decoy" / MANIFEST).write_text('{"kind": "something-else"}')     # not ours: skipped
        _tiny_bundle(root / bundle)
        assert runtime.find_competition(root) == root / comp
        assert runtime.find_bundle(root) == root / bundle
    monkeypatch.setenv(runtime.ENV_INPUT, str(tmp_path / "2026"))
    assert runtime.find_bundle() == tmp_path / "2026" / "datasets/someone/my-bundle"
    monkeypatch.setenv(runtime.ENV_BUNDLE, str(tmp_path / "elsewhere"))
    assert runtime.find_bundle() == tmp_path / "elsewhere"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no competition folder under"):
        runtime.find_competition(tmp_path / "empty")
    monkeypatch.delenv(runtime.ENV_BUNDLE)
    with pytest.raises(BundleError, match="no birdclef-stack bundle"):
        runtime.find_bundle(tmp_path / "empty")


def test_a_tampered_truncated_or_missing_bundle_file_fails_the_manifest_check(tmp_path: Path) -> None:
    bundle = _tiny_bundle(tmp_path / "b")
    assert verify_bundle(bundle)["head_id"] == "h"
    cfg = bundle / "heads" / "h" / "config.json"
    cfg.write_text('{"a": 2}')                                   # same size, different bytes
    with pytest.raises(BundleError, match=r"bundle file heads/h/config.json does not match manifest.json"):
        verify_bundle(bundle)
    cfg.write_text('{"a": 1}')
    wheel = bundle / "wheels" / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:50])                   # truncated
    with pytest.raises(BundleError, match="wheels/x-1.0-py3-none-any.whl does not match"):
        verify_bundle(bundle)
    wheel.unlink()
    with pytest.raises(BundleError, match="is missing from"):
        verify_bundle(bundle)


# ---------------------------------------------------------------------------- time guard on real heads
@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "submit")


@pytest.fixture(scope="module")
def heads(demo_trained) -> dict[str, str]:
    """A ridge stack over linear heads on BirdNET and on classical statistics; the BirdNET one is the fallback."""
    return {"stack": demo_trained.stack_linear.head_id, "fallback": demo_trained.head("linear")}


def test_time_guard_moves_files_down_the_levels_and_the_submission_stays_exact(store: Path, heads: dict,
                                                                               demo_data: Path, tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    src = list_audio(demo_data / "test_soundscapes")
    for i in range(6):                                          # 6 files: 2 per level
        shutil.copy(src[i % len(src)], audio / src[i % len(src)].name.replace("_Test_0", f"_Test_{i}"))
    files = list_audio(audio)
    predictor = open_predictor(store / "heads" / heads["stack"])
    columns = predictor.class_names
    import time

    messages: list[str] = []
    row_ids, probs, warnings, levels, events = predict_with_guard(
        store / "heads", [heads["stack"], heads["fallback"]], files, columns, workers=1, budget_s=1e-3,
        start=time.perf_counter(), say=messages.append)
    assert levels == {heads["stack"]: 2, heads["fallback"]: 2, "prior": 2} and not warnings
    assert len(events) == 2 and "fallback head " + heads["fallback"] in events[0] and "class prior" in events[1]
    assert any(m.startswith("time guard:") for m in messages)
    assert row_ids == [r for f in files for r in expected_ids_for_audio_of(f)]
    rows = dict(zip(row_ids, probs, strict=True))
    # the dry run's reference: each level's files predicted with that level's head, the rest the top prior
    ids, expected = reference_predictions(store, {"levels": [heads["stack"], heads["fallback"]], "columns": columns},
                                          audio, levels, tmp_path / "links")
    assert ids == row_ids
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    prior = predictor.output_prior
    np.testing.assert_allclose(prior, open_predictor(store / "heads" / heads["stack"]).stack_prior)
    for f in files[4:]:
        for r in expected_ids_for_audio_of(f):
            np.testing.assert_allclose(rows[r], prior, atol=0)


def expected_ids_for_audio_of(path: Path) -> list[str]:
    from submit.submission import expected_row_ids

    return expected_row_ids(path)


def test_no_guard_event_within_budget(store: Path, heads: dict, demo_data: Path) -> None:
    import time

    files = list_audio(demo_data / "test_soundscapes")[:2]
    predictor = open_predictor(store / "heads" / heads["fallback"])
    _, _, _, levels, events = predict_with_guard(store / "heads", [heads["fallback"]], files, predictor.class_names,
                                                 workers=1, budget_s=3600, start=time.perf_counter(), say=lambda _: None)
    assert events == [] and levels == {heads["fallback"]: 2, "prior": 0}


# ---------------------------------------------------------------------------- planner arithmetic
def test_projection_is_the_stated_model_of_the_measured_costs() -> None:
    costs = Costs(files=3, audio_s=60.0, decode_s=0.05, resample_s={"48000": 0.07},
                  extractor_s={"birdnet": 2.0, "classical": 0.25}, extractor_rate={"birdnet": 48000, "classical": 32000},
                  levels=[LevelCost("stack-x", 0.5, ["birdnet", "classical"], 0.3, 2e-4),
                          LevelCost("lin", 0.1, ["birdnet"], 0.01, 0.0)],
                  workers_measured=2, speedup_measured=1.6)
    e = 0.8                                                       # S(2) / 2
    assert costs.efficiency == pytest.approx(e)
    s4 = 4 * e ** 2
    assert costs.speedup(4) == pytest.approx(s4)
    stack, lin = project(costs, n_files=600, cpus=4)
    assert stack.seconds["birdnet"] == pytest.approx(600 * 2.0 / s4)
    assert stack.seconds["stack/finish"] == pytest.approx(600 * 12 * 2e-4)
    assert stack.total_s == pytest.approx(0.5 + 600 * (0.05 + 0.07 + 2.0 + 0.25 + 0.3) / s4 + 600 * 12 * 2e-4)
    assert lin.total_s == pytest.approx(0.1 + 600 * (0.05 + 0.07 + 2.0 + 0.01) / s4)
    assert "classical" not in lin.seconds


def test_planner_times_heads_on_a_full_soundscapes_rows(store: Path, heads: dict, shared_data: Path) -> None:
    """A short real clip's views are grown to the 12 windows of a 60-s soundscape, its real rows repeated in
    order, so the head cost is measured on what a test file gives the heads (not scaled from a clip by 60 s /
    its duration: a head's cost is far from proportional to its rows); a file with no window is not timed."""
    from embed.features import embed_file_views
    from submit.plan import soundscape_views

    predictor = open_predictor(store / "heads" / heads["fallback"])
    clip = sorted((shared_data / "field").glob("*.wav"))[0]                 # 19.5 s: 4 windows
    feats = embed_file_views(clip, predictor.extractors, predictor.requests, soundscape=True)
    (starts, X, names), = feats.values()
    full = soundscape_views(feats)
    (fstarts, FX, fnames), = full.values()
    assert len(X) == 4 and FX.shape == (12, X.shape[1]) and fnames == names
    np.testing.assert_array_equal(fstarts, np.arange(12) * 5.0)
    np.testing.assert_array_equal(FX, X[[0, 1, 2, 3] * 3])
    _, rows = predictor.rows_from_features(clip, feats)
    ids, full_rows = predictor.rows_from_features(clip, full)
    assert len(ids) == 12 and ids[-1].endswith("_60")
    np.testing.assert_allclose(full_rows, rows[[0, 1, 2, 3] * 3], rtol=0, atol=1e-6)   # float32 BLAS: row count
    empty = {k: (v[0][:0], v[1][:0], v[2]) for k, v in feats.items()}
    assert soundscape_views(empty) is None


# ---------------------------------------------------------------------------- export + dry run (slow)
@pytest.mark.slow
def test_export_plan_and_offline_dry_run_of_the_notebook(store: Path, heads: dict, demo_data: Path,
                                                         tmp_path: Path) -> None:
    from submit.dryrun import dry_run
    from submit.export import export_bundle, write_manifest
    from submit.plan import plan_bundle

    bundle = tmp_path / "bundle"
    result = export_bundle(store, heads["stack"], bundle, measure=demo_data / "test_soundscapes", measure_files=2,
                           track="safe", say=lambda _: None)
    manifest = verify_bundle(bundle)
    from featurestore.store import FeatureStore
    from models.experiments import latest_row
    from submit.export import track_minutes

    with FeatureStore.open(store, read_only=True) as fs:        # the track: in the manifest and on the head's row
        track = json.loads(latest_row(fs, heads["stack"])["track"])
    assert manifest["track"] == "safe" and any("track safe recorded" in n for n in result.notes)
    assert track == {"track": "safe", "bundle": str(bundle), "exported_at": manifest["created_at"],
                     "kaggle_minutes": pytest.approx(project(Costs.from_json(manifest["stage_costs"]))[0].total_s / 60)}
    assert track["kaggle_minutes"] == track_minutes(manifest)

    with FeatureStore.open(store, read_only=True) as fs:        # auto fallback: the best one-extractor base head
        best_base = fs.rows("SELECT head_id FROM experiments WHERE head = 'linear' ORDER BY fold_mean DESC")[0][0]
    assert result.levels == [heads["stack"], best_base] == manifest["levels"]
    names = {f["path"] for f in manifest["files"]}
    assert {"birdclef_stack_inference.ipynb", "dataset-metadata.json", "kernel-metadata.json",
            "models/birdnet/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"} <= names
    assert any(n.startswith("wheels/ai_edge_litert-") and "cp311" in n for n in names)
    assert any(n.startswith("wheels/ai_edge_litert-") and "cp312" in n for n in names)
    assert manifest["toolkit_wheel"] in names and not any(n.endswith("train_windows.parquet") for n in names)
    kernel = json.loads((bundle / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["competition_sources"] == ["birdclef-2026"]
    costs = Costs.from_json(manifest["stage_costs"])
    assert costs.extractor_s["birdnet"] > costs.extractor_s["classical"] > 0 and costs.decode_s > 0
    _, text = plan_bundle(bundle, None)
    assert "scaling model: S(n) = n * e^log2(n)" in text and best_base in text

    audio = tmp_path / "audio"
    audio.mkdir()
    for f in list_audio(demo_data / "test_soundscapes")[:3]:
        shutil.copy(f, audio / f.name)
    corrupt = audio / "BC2026_Test_9999_S01_20240101_000000.ogg"
    corrupt.write_bytes(b"OggS" + bytes(300))
    shutil.copy(list_audio(demo_data / "test_soundscapes")[3], audio / "BC2026_Test_9998_S01_20240101_000000.m4a")
    (audio / "day2").mkdir()                                    # skipped by the one listing rule, and said
    run = dry_run(bundle, audio, work=tmp_path / "dry", allow_network=True, say=lambda _: None)
    assert len(run.notes) == 1 and "skipped 2 of its 6 entries" in run.notes[0] and "day2/" in run.notes[0]
    assert any("BC2026_Test_9998_S01_20240101_000000.m4a" in w and "without ffmpeg" in w
               for w in run.run_report["warnings"])              # the notebook's runtime says it too
    assert run.network.startswith("off") or "unshare" in run.network
    assert all(str(tmp_path / "dry" / "venv") in p for p in run.modules.values())
    assert run.max_abs_diff <= 1e-6 and run.agrees and (tmp_path / "dry" / WORK_MARKER).is_file()
    assert f"verified {len(manifest['files'])} files, installed" in (tmp_path / "dry" / "notebook_output.txt").read_text()
    top = open_predictor(bundle / "heads" / heads["stack"])      # the notebook's prior without the toolkit
    assert list(manifest["prior"]) == manifest["columns"]
    np.testing.assert_allclose([manifest["prior"][c] for c in top.class_names], top.output_prior, rtol=0, atol=1e-7)
    assert validate_submission(run.submission, demo_data / "sample_submission.csv",
                               expected_ids_for_audio(audio)) == 4 * 12
    assert any(corrupt.name in w for w in run.run_report["warnings"])
    assert 0 < run.projected_min < 1e4 and run.render().splitlines()[-1].startswith("projected Kaggle minutes: ")
    timing = run.run_report["file_timing"]                     # the real report the projection is made from
    assert len(timing) == 4 and timing[-1]["windows"] == 0 and [t["windows"] for t in timing[:3]] == [12] * 3
    assert 1 <= sum(t["first"] for t in timing) <= min(run.run_report["workers"], 4)
    p = run.projection
    assert p is not None and run.projected_min == pytest.approx(p.projected_s / 60) and p.once_s > 0
    assert p.projected_s == pytest.approx(p.once_s + 600 * p.per_file_s / Costs.from_json(manifest["stage_costs"])
                                          .speedup(4))
    assert [line for line in run.render().splitlines() if line.startswith(("one-time cost here:", "steady rate:"))]

    # a stale toolkit wheel (its runtime predicts sqrt(p)), listed in a rewritten manifest: the files verify, the
    # notebook runs, and the comparison must fail - re-run on the first dry run's own work folder, one file
    stale, one = tmp_path / "stale", tmp_path / "one"
    shutil.copytree(bundle, stale)
    one.mkdir()
    shutil.copy(list_audio(audio)[0], one)
    wheel = stale / manifest["toolkit_wheel"]
    with zipfile.ZipFile(wheel) as z:
        parts = {i: z.read(i) for i in z.infolist()}
    code = next(v for i, v in parts.items() if i.filename == "submit/runtime.py").decode()
    assert "np.asarray(probs)[:, order], strict=True" in code
    patched = code.replace("np.asarray(probs)[:, order], strict=True", "np.sqrt(np.asarray(probs)[:, order]), strict=True")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in parts.items():
            z.writestr(info, patched.encode() if info.filename == "submit/runtime.py" else data)
    write_manifest(stale, {**{k: v for k, v in manifest.items() if k not in ("kind", "format", "files")},
                           "track": "bold"})
    # two tracks side by side (costs stored at export): each bundle's projection and the headroom it leaves
    from submit.plan import plan_tracks, render_tracks

    safe, bold = plan_tracks([bundle, stale], None, budget_min=90.0)
    assert (safe.track, bold.track) == ("safe", "bold") and safe.head_id == heads["stack"]
    assert safe.projected_min == pytest.approx(track["kaggle_minutes"])
    assert safe.headroom_min == pytest.approx(90.0 - safe.projected_min)
    assert safe.headroom_pct == pytest.approx(100 * (90.0 - safe.projected_min) / 90.0)
    table = render_tracks([safe, bold]).splitlines()
    assert f"== bundle {bundle} (track safe) ==" in table and f"== bundle {stale} (track bold) ==" in table
    row = next(line for line in table if line.startswith(str(stale)))
    assert row.split()[1:] == ["bold", heads["stack"], f"{bold.projected_min:.1f}", f"{bold.headroom_min:+.1f}",
                               f"{bold.headroom_pct:+.0f}%"]
    import contextlib
    import io

    from pipelines.plan import main as plan_main

    with contextlib.redirect_stdout(io.StringIO()) as printed:   # the job prints the same table
        assert plan_main(["--bundle", str(bundle), "--bundle", str(stale), "--quiet"]) == 0
    assert printed.getvalue().strip() == render_tracks([safe, bold]).strip()
    cli = subprocess.run([sys.executable, "-m", "pipelines.dryrun", "--bundle", str(stale), "--audio", str(one),
                          "--work", str(tmp_path / "dry"), "--allow-network"], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 1, cli.stderr
    errors = [line for line in cli.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the notebook's predictions differ from pipelines.predict's "
                                                     "by up to ") and "tolerance 0.0001" in errors[0], cli.stderr
    assert "max |notebook - pipelines.predict| = " in cli.stdout

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    cfg = tampered / "heads" / best_base / "config.json"
    cfg.write_text(cfg.read_text().replace('"linear"', '"lineaR"'))
    cli = subprocess.run([sys.executable, "-m", "pipelines.dryrun", "--bundle", str(tampered), "--audio", str(audio)],
                         cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 2
    assert f"error: bundle file heads/{best_base}/config.json does not match manifest.json" in cli.stderr
