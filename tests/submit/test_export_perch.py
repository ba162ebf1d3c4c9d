"""Perch heads in the Kaggle bundle: the export ships the perch extractor's .tflite (its sha256 checked against
the head's extractor version; a SavedModel-made version refused), the planner measures Perch's cost, the time
guard falls back to a BirdNET-only head, and the offline dry run runs the bundle with TensorFlow hidden.

The model is the tiny Perch stand-in (tests/embed_helpers.py: a real SavedModel with Perch v2's signature,
converted by TensorFlow's TFLite converter) embedded on the demo store. Wall time: ~3 min alone (the demo chain
~1 min of it when not already built; the dry run ~70 s)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from embed_helpers import (
    build_tiny_perch,
    build_tiny_perch_onnx,
    convert_tiny_perch_tflite,
    write_perch_labels,
)

from embed import registry
from featurestore.errors import BundleError
from featurestore.files import file_sha256
from submit.dryrun import reference_predictions
from submit.export import copy_models, export_bundle
from submit.plan import Costs
from submit.runtime import bundle_environment, bundle_runtime, predict_with_guard, verify_bundle
from submit.submission import list_audio


def read_submission(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[0] for r in rows], np.array([[float(x) for x in r[1:]] for r in rows])


@pytest.fixture(scope="module")
def models(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny Perch as a SavedModel folder and as the .tflite converted from it (labels.csv beside it): three
    of the demo taxonomy's species, an FSD50K event and a species of no demo genus."""
    root = tmp_path_factory.mktemp("perch_models")
    with open(demo_data / "taxonomy.csv", newline="", encoding="utf-8") as f:
        names = [row["scientific_name"] for row in csv.DictReader(f)][:3]
    labels = [*names, "Speech_synthesizer", "Rana temporaria"]
    saved = build_tiny_perch(root / "perch_savedmodel", labels)
    tflite = convert_tiny_perch_tflite(saved, root / "perch.tflite")
    write_perch_labels(root / "labels.csv", labels)
    return SimpleNamespace(saved=saved, tflite=tflite, labels=labels, root=root)


@pytest.fixture(scope="module")
def perch_store(models: SimpleNamespace, demo_trained, store_copy) -> SimpleNamespace:
    """The trained demo store plus ``perch`` embedded from the .tflite and a linear head on it."""
    from embed.job import run_embed
    from models.frame import FrameSpec
    from models.training import train_head

    store = store_copy(demo_trained.store, "perch_export")
    run_embed(store, ("perch",), model=models.tflite, workers=1)
    head = train_head(store, "linear", FrameSpec("perch")).head_id
    return SimpleNamespace(store=store, head=head, fallback=demo_trained.head("linear"))


def test_copy_models_ships_the_tflite_and_refuses_savedmodel_mismatch_and_two_models(models: SimpleNamespace,
                                                                                     tmp_path: Path) -> None:
    tflite = registry.build("perch", None, model=models.tflite).params()
    assert tflite["runtime"] == "tflite" and tflite["model_sha256"] == file_sha256(models.tflite)
    extra = copy_models({"perch": tflite}, tmp_path / "ok")
    assert extra == {"perch_model": "models/perch/perch.tflite"}
    shipped = [p.relative_to(tmp_path / "ok").as_posix() for p in (tmp_path / "ok").rglob("*") if p.is_file()]
    assert shipped == ["models/perch/perch.tflite"]          # the class map is in params: no labels.csv
    assert (tmp_path / "ok" / "models/perch/perch.tflite").read_bytes() == models.tflite.read_bytes()

    saved = registry.build("perch", None, model=models.saved).params()
    assert saved["runtime"] == "savedmodel"
    with pytest.raises(BundleError) as err:
        copy_models({"perch": saved}, tmp_path / "saved")
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "the Kaggle runtime runs no TensorFlow: convert the SavedModel (python -m pipelines.convert --model DIR "
        "--to tflite --out perch.tflite), embed with --extractor perch --model perch.tflite and retrain")

    other = tmp_path / "other" / "perch.tflite"          # same name, one byte more: not the trained-on model
    other.parent.mkdir()
    other.write_bytes(models.tflite.read_bytes() + b"\0")
    with pytest.raises(BundleError) as err:
        copy_models({"perch": {**tflite, "model_path": str(other)}}, tmp_path / "changed")
    message = str(err.value)
    assert file_sha256(other) in message and tflite["model_sha256"] in message and "\n" not in message
    assert file_sha256(other) != tflite["model_sha256"]

    custom = {"kind": "custom", "model_path": str(models.tflite), "model_sha256": tflite["model_sha256"],
              "config": {}}
    with pytest.raises(BundleError, match=r"a bundle carries one"):
        copy_models({"perch": tflite, "custom:x": custom}, tmp_path / "two")


@pytest.mark.slow
def test_export_plan_guard_and_dry_run_without_tensorflow(models: SimpleNamespace, perch_store: SimpleNamespace,
                                                          demo_data: Path, shared_data: Path,
                                                          tmp_path: Path) -> None:
    from submit.dryrun import dry_run
    from submit.predict import open_predictor

    store, head, fallback = perch_store.store, perch_store.head, perch_store.fallback
    bundle = tmp_path / "bundle"
    result = export_bundle(store, head, bundle, fallback=fallback, measure=demo_data / "test_soundscapes",
                           measure_files=1, say=lambda _: None)
    manifest = verify_bundle(bundle)
    assert result.levels == manifest["levels"] == [head, fallback]
    params = json.loads((bundle / "heads" / head / "extractors.json").read_text())["perch"]
    assert params["runtime"] == "tflite"
    assert manifest["perch_model"] == "models/perch/perch.tflite" and manifest["extractors"]["perch"] == "perch"
    entry = next(f for f in manifest["files"] if f["path"] == manifest["perch_model"])
    assert entry["sha256"] == params["model_sha256"] == file_sha256(models.tflite)
    assert not any(f["path"].startswith(("models/perch/labels", "models/custom")) for f in manifest["files"])
    assert "onnxruntime" not in manifest["runtime_packages"]       # a .tflite needs ai-edge-litert only
    assert "Perch v2" in (bundle / "LICENSES.md").read_text()

    # the planner measured Perch per window like any extractor; each level lists its own extractors
    costs = Costs.from_json(manifest["stage_costs"])
    assert costs.extractor_s["perch"] > 0 and costs.extractor_rate["perch"] == 32000
    by_level = {lv.head_id: lv for lv in costs.levels}
    assert by_level[head].extractors == ["perch"] and by_level[fallback].extractors == ["birdnet"]
    assert by_level[head].per_file_s >= costs.extractor_s["perch"]

    # the time guard: with a budget Perch overruns, files go to the BirdNET-only head; each level predicts what
    # its head does from the store (the shipped .tflite through bundle_runtime = the embedded one)
    audio = tmp_path / "audio"
    audio.mkdir()
    for f in list_audio(demo_data / "test_soundscapes")[:4]:
        shutil.copy(f, audio / f.name)
    files = list_audio(audio)
    columns = manifest["columns"]
    with bundle_environment(bundle):
        row_ids, probs, warnings, levels, events = predict_with_guard(
            bundle / "heads", manifest["levels"], files, columns, workers=1, budget_s=1e-3,
            start=time.perf_counter(), runtime=bundle_runtime(bundle, manifest), say=lambda _: None)
    assert levels == {head: 2, fallback: 2, "prior": 0} and not warnings
    assert len(events) == 1 and f"fallback head {fallback}" in events[0]
    ids, expected = reference_predictions(store, manifest, audio, levels, tmp_path / "links")
    assert ids == row_ids
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert bundle_runtime(bundle, manifest) == {"model_path": str(bundle / "models/perch/perch.tflite")}
    shipped = open_predictor(bundle / "heads" / head, **bundle_runtime(bundle, manifest))
    assert [e.model_path for e in shipped.extractors] == [bundle / "models/perch/perch.tflite"]

    # the offline dry run on a real clip (the shared CC0 field recording, 19.5 s) and a demo soundscape, the
    # notebook's venv unable to import TensorFlow
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(files[0], one / files[0].name)
    shutil.copy(shared_data / "field" / "spinetail.wav", one / "BC2026_Test_0777_S01_20240101_000000.wav")
    run = dry_run(bundle, one, work=tmp_path / "dry", allow_network=True, say=lambda _: None)
    assert run.agrees and run.max_abs_diff <= 1e-6
    assert run.run_report["levels"] == {head: 2, fallback: 0, "prior": 0}
    warnings = run.run_report["warnings"]                  # the 19.5-s clip: 4 windows, the prior for the rest
    assert len(warnings) == 1 and "BC2026_Test_0777" in warnings[0] and "prior for the other 8 rows" in warnings[0]
    assert all(str(tmp_path / "dry" / "venv") in p for p in run.modules.values())
    venv_python = tmp_path / "dry" / "venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import ai_edge_litert, numpy\nimport tensorflow"],
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'tensorflow' (hidden by the dry run" in probe.stderr
    assert subprocess.run([str(venv_python), "-c", "import ai_edge_litert"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_onnx_and_savedmodel_forms_from_store_to_submission(models: SimpleNamespace, perch_store: SimpleNamespace,
                                                            demo_data: Path, store_copy, tmp_path: Path) -> None:
    """The other two forms end to end: the .onnx (a second perch version) and the SavedModel folder (a third)
    each embed the store, train a head and a ridge stack with Perch's zero-shot logits as a source, and predict
    a validated submission from the store; the .onnx stack exports (the .onnx shipped, onnxruntime listed) and
    its bundle predicts the store's numbers; the SavedModel stack is refused by the export in one line."""
    from embed.job import run_embed
    from models.frame import FrameSpec
    from models.training import train_head
    from stack.run import run_stack
    from submit.predict import open_predictor, predict_audio, predict_submission

    onnx = build_tiny_perch_onnx(models.root / "perch.onnx", len(models.labels))
    store = store_copy(perch_store.store, "perch_forms")
    audio = tmp_path / "audio"
    audio.mkdir()
    for f in list_audio(demo_data / "test_soundscapes")[:2]:
        shutil.copy(f, audio / f.name)
    heads, stacks, subs, versions = {}, {}, {}, {}
    for form, path in (("onnx", onnx), ("savedmodel", models.saved)):
        versions[form] = run_embed(store, ("perch",), model=path, workers=1).versions["perch"]
        result = train_head(store, "linear", FrameSpec("perch"))      # the most recent perch version
        heads[form] = result.head_id
        stacks[form] = run_stack(store, [heads[form], perch_store.fallback], "ridge", {"min_positives": 3},
                                 zero_shot=("perch_logits",)).head_id
        subs[form] = predict_submission(store, audio, tmp_path / f"{form}.csv", head_id=stacks[form])
        assert subs[form].n_rows == 24 and not subs[form].warnings
        used = json.loads((store / "heads" / heads[form] / "extractors.json").read_text())["perch"]
        assert used["runtime"] == form and registry.from_params(used).version == versions[form]
    tflite_version = json.loads((store / "heads" / perch_store.head / "extractors.json").read_text())["perch"]
    assert len({*versions.values(), registry.from_params(tflite_version).version}) == 3
    assert len({*heads.values(), perch_store.head}) == 3 and stacks["onnx"] != stacks["savedmodel"]
    # the same math in three runtimes: the submissions agree closely though each head fit its own features
    (ids_a, a), (ids_b, b) = (read_submission(tmp_path / f"{form}.csv") for form in ("onnx", "savedmodel"))
    assert ids_a == ids_b
    np.testing.assert_allclose(a, b, atol=1e-3)

    bundle = tmp_path / "bundle"
    export_bundle(store, stacks["onnx"], bundle, fallback=None, measure=audio, measure_files=1, say=lambda _: None)
    manifest = verify_bundle(bundle)
    assert manifest["perch_model"] == "models/perch/perch.onnx" and "onnxruntime" in manifest["runtime_packages"]
    entry = next(f for f in manifest["files"] if f["path"] == manifest["perch_model"])
    assert entry["sha256"] == file_sha256(onnx)
    with bundle_environment(bundle):
        shipped = open_predictor(bundle / "heads" / stacks["onnx"], **bundle_runtime(bundle, manifest))
        row_ids, probs, warnings = predict_audio(bundle / "heads" / stacks["onnx"], audio, manifest["columns"],
                                                 workers=1, runtime=bundle_runtime(bundle, manifest))
    assert shipped is not None and not warnings and len(row_ids) == 24
    ids, expected, _ = predict_audio(store / "heads" / stacks["onnx"], audio, manifest["columns"], workers=1)
    assert ids == row_ids
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)

    with pytest.raises(BundleError) as err:
        export_bundle(store, stacks["savedmodel"], tmp_path / "saved_bundle", fallback=None, measure=audio,
                      measure_files=1, say=lambda _: None)
    assert "\n" not in str(err.value) and "the Kaggle runtime runs no TensorFlow" in str(err.value)
