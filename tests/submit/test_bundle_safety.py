"""A bundle is untrusted input (issue 23): the manifest check refuses every path that leaves the bundle,
every link, every unlisted file and every level outside ``heads/`` with one ``error:`` line; the notebook
checks the files with the standard library before it installs anything and, whatever fails, still writes
the prior-only submission; a dry run never deletes a folder it did not make; a full disk during export
names the bundle file being written.

The bundle here is small and real: the demo's ridge stack over two linear heads (copied from the session's
trained store with :func:`submit.export.copy_head`) and its fallback head, a tiny hand-made toolkit wheel,
the generated notebook and a manifest written by :func:`submit.export.write_manifest` - no wheel is built.
Each hostile variant is a copy of it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import BundleError, UserInputError
from submit import runtime
from submit.dryrun import WORK_ENTRIES, WORK_MARKER, prepare_work
from submit.export import copy_head, head_prior, write_manifest
from submit.notebook import FALLBACK, NOTEBOOK, kaggle_files
from submit.runtime import MANIFEST, verify_bundle
from submit.submission import (
    expected_ids_for_audio,
    expected_row_ids,
    list_audio,
    read_header,
    validate_submission,
)

REPO = Path(__file__).resolve().parents[2]
WHEEL = "wheels/birdclef_stack-0.0.0-py3-none-any.whl"


def tiny_wheel(path: Path) -> Path:
    """A valid, empty ``birdclef-stack`` wheel (pip installs it; it holds no module)."""
    info = "birdclef_stack-0.0.0.dist-info"
    files = {f"{info}/METADATA": "Metadata-Version: 2.1\nName: birdclef-stack\nVersion: 0.0.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return path


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    return store_copy(demo_trained.store, "bundle_safety")


@pytest.fixture(scope="module")
def good(demo_trained, store: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified bundle: levels [ridge stack over the two linear heads, the BirdNET linear head]."""
    stack, fallback = demo_trained.stack_linear.head_id, demo_trained.head("linear")
    bundle = tmp_path_factory.mktemp("good") / "bundle"
    heads = [stack, *json.loads((store / "heads" / stack / "config.json").read_text())["base_heads"]]
    for h in heads:
        copy_head(store / "heads" / h, bundle / "heads" / h)
    tiny_wheel(bundle / WHEEL)
    for name, text in kaggle_files(owner="o", slug="s", competition="birdclef-2026", head_id=stack,
                                   levels=[stack, fallback]).items():
        (bundle / name).write_text(text, encoding="utf-8")
    columns = read_header(demo_data / "sample_submission.csv")[1:]
    write_manifest(bundle, {"toolkit_version": "0.0.0", "toolkit_wheel": WHEEL, "head_id": stack,
                            "levels": [stack, fallback], "columns": columns, "runtime_packages": {},
                            "prior": head_prior(bundle, stack, columns)})
    assert verify_bundle(bundle)["levels"] == [stack, fallback]
    return bundle


def hostile(good: Path, tmp_path: Path) -> tuple[Path, dict]:
    bundle = tmp_path / "bundle"
    shutil.copytree(good, bundle)
    return bundle, json.loads((bundle / MANIFEST).read_text())


def save(bundle: Path, manifest: object) -> None:
    (bundle / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def remanifest(bundle: Path, manifest: dict) -> None:
    """Re-list the files, as an attacker who edits the bundle also rewrites its manifest."""
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("kind", "format", "files")})


# ---------------------------------------------------------------------------- item 2: every case refused
def test_an_extra_fold_folder_is_refused_real_or_a_link_out_of_the_bundle(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    base = m["levels"][1]
    shutil.copytree(bundle / "heads" / base / "fold_0", bundle / "heads" / base / "fold_9")
    with pytest.raises(BundleError, match=rf"heads/{base}/fold_9/\S+ is not listed in manifest.json \(\d+ unlisted"):
        verify_bundle(bundle)
    shutil.rmtree(bundle / "heads" / base / "fold_9")
    outside = tmp_path / "elsewhere"
    shutil.copytree(good / "heads" / base / "fold_1", outside)
    (bundle / "heads" / base / "fold_9").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match=rf"heads/{base}/fold_9 is a symbolic link \(to {outside}\)"):
        verify_bundle(bundle)
    (bundle / "heads" / base / "fold_9").unlink()
    (bundle / "heads" / base / "fold_9").mkdir()                  # even an empty one
    with pytest.raises(BundleError, match=rf"folder heads/{base}/fold_9 holds no listed file"):
        verify_bundle(bundle)


def test_a_symlinked_config_is_refused_even_with_the_right_bytes(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    config = bundle / "heads" / m["levels"][1] / "config.json"
    shutil.copy(config, tmp_path / "config.json")
    config.unlink()
    config.symlink_to(tmp_path / "config.json")
    with pytest.raises(BundleError, match=rf"heads/{m['levels'][1]}/config.json is a symbolic link"):
        verify_bundle(bundle)


def test_levels_must_name_heads_inside_the_bundle(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.copytree(good / "heads" / m["levels"][1], outside / m["levels"][1])
    for levels in ([f"../../elsewhere/{m['levels'][1]}"], [f"heads/{m['levels'][1]}"], [".."], [], "x", [3]):
        save(bundle, {**m, "levels": levels, "head_id": levels[0] if isinstance(levels, list) and levels else "x"})
        with pytest.raises(BundleError, match=r"\"levels\" must be a non-empty list of head folder names under heads/"):
            verify_bundle(bundle)
    save(bundle, {**m, "levels": ["prior-nothere"], "head_id": "prior-nothere"})
    with pytest.raises(BundleError, match=r"head prior-nothere is not in the bundle \(no heads/prior-nothere/config.json\)"):
        verify_bundle(bundle)
    save(bundle, {**m, "head_id": m["levels"][1]})                  # the dry run's reference would be another head
    with pytest.raises(BundleError, match=r"head_id .* is not the first level"):
        verify_bundle(bundle)


def test_a_stacked_level_must_find_its_base_heads_inside_the_bundle(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    config_path = bundle / "heads" / m["levels"][0] / "config.json"
    config = json.loads(config_path.read_text())
    config["base_heads"][0] = f"../../elsewhere/{config['base_heads'][0]}"
    config_path.write_text(json.dumps(config))
    remanifest(bundle, m)                                           # every listed file matches its sha256
    with pytest.raises(BundleError, match=r"config.json: base heads .* are not head folder names under heads/"):
        verify_bundle(bundle)


def test_an_empty_files_list_with_an_edited_config_is_refused(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    config = bundle / "heads" / m["levels"][1] / "config.json"
    config.write_text(config.read_text().replace('"linear"', '"lineaR"'))
    save(bundle, {**m, "files": []})
    with pytest.raises(BundleError, match=r"is not listed in manifest.json \(\d+ unlisted file\(s\)\)"):
        verify_bundle(bundle)


@pytest.mark.parametrize("path", ["../x", "heads/../../x", "/etc/hostname", "./LICENSES.md", "wheels//x", "", "."])
def test_a_files_entry_outside_or_not_normalised_is_refused(good: Path, tmp_path: Path, path: str) -> None:
    bundle, m = hostile(good, tmp_path)
    (tmp_path / "x").write_text("x")
    entry = {"path": path, "bytes": 1, "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}
    save(bundle, {**m, "files": [*m["files"], entry]})
    with pytest.raises(BundleError, match=r"files\[\d+\] path .* is not a normalised relative path inside the bundle"):
        verify_bundle(bundle)


def test_manifest_names_must_be_bundle_files(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    for key in ("toolkit_wheel", "custom_model", "cnn_model"):
        save(bundle, {**m, key: "../../elsewhere/x.whl"})
        with pytest.raises(BundleError, match=rf"{key} '../../elsewhere/x.whl' is not a file of the bundle"):
            verify_bundle(bundle)
    save(bundle, {**m, "prior": {"a": 2.0}})
    with pytest.raises(BundleError, match=r"\"prior\" must map each column to a probability"):
        verify_bundle(bundle)
    for key, value in (("competition", "../../elsewhere"), ("columns", "a,b"), ("budget_min", "90"),
                       ("runtime_packages", ["x"])):      # the dry run makes competitions/<competition>/ in its work
        save(bundle, {**m, key: value})
        with pytest.raises(BundleError, match=rf"manifest.json: malformed '{key}'"):
            verify_bundle(bundle)


def test_a_head_whose_extractor_needs_a_model_file_the_bundle_lacks_is_refused(good: Path, tmp_path: Path) -> None:
    """A custom/CNN extractor would load its model from the path recorded at training time, outside the bundle."""
    bundle, m = hostile(good, tmp_path)
    path = bundle / "heads" / m["levels"][1] / "extractors.json"
    params = json.loads(path.read_text())
    params["custom:evil"] = {"kind": "custom", "model_path": "/elsewhere/evil.onnx"}
    path.write_text(json.dumps(params))
    remanifest(bundle, m)
    with pytest.raises(BundleError, match=r"extractor custom:evil needs a model file, but the manifest names no "
                                          r"custom_model shipped in the bundle"):
        verify_bundle(bundle)


def test_a_file_named_manifest_json_below_the_root_is_checked_like_any_other(good: Path, tmp_path: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    (bundle / "heads" / m["levels"][1] / MANIFEST).write_text("{}")
    with pytest.raises(BundleError, match=rf"heads/{m['levels'][1]}/manifest.json is not listed"):
        verify_bundle(bundle)


@pytest.mark.parametrize("manifest", [
    "no files", "files not a list", "entry not an object", "path not a string", "bytes a string", "json list",
    "duplicate"])
def test_a_malformed_manifest_is_one_bundle_error(good: Path, tmp_path: Path, manifest: str) -> None:
    bundle, m = hostile(good, tmp_path)
    entry = m["files"][0]
    bad = {"no files": {k: v for k, v in m.items() if k != "files"}, "files not a list": {**m, "files": {}},
           "entry not an object": {**m, "files": ["x"]}, "path not a string": {**m, "files": [{**entry, "path": 3}]},
           "bytes a string": {**m, "files": [{**entry, "bytes": "12"}]}, "json list": [m],
           "duplicate": {**m, "files": [*m["files"], entry]}}[manifest]
    save(bundle, bad)
    with pytest.raises(BundleError, match=r"manifest.json: "):
        verify_bundle(bundle)


def test_the_bundle_root_may_be_reached_through_a_link(good: Path, tmp_path: Path) -> None:
    """Kaggle and the dry run mount the dataset folder as a link: only what is inside it must be plain."""
    link = tmp_path / "datasets" / "owner" / "bundle"
    link.parent.mkdir(parents=True)
    link.symlink_to(good, target_is_directory=True)
    assert verify_bundle(link)["head_id"] == json.loads((good / MANIFEST).read_text())["head_id"]


def test_runtime_run_and_the_dry_run_cli_refuse_a_hostile_bundle_with_one_line(good: Path, tmp_path: Path,
                                                                                demo_data: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    base = m["levels"][1]
    outside = tmp_path / "elsewhere"
    shutil.copytree(good / "heads" / base / "fold_1", outside)
    (bundle / "heads" / base / "fold_9").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match="fold_9 is a symbolic link"):
        runtime.run(bundle, demo_data, tmp_path / "out" / "submission.csv", say=lambda _: None)
    assert not (tmp_path / "out").exists()
    (bundle / "heads" / base / "fold_9").unlink()
    save(bundle, {k: v for k, v in m.items() if k != "files"})      # was: KeyError 'files', a traceback
    cli = subprocess.run([sys.executable, "-m", "pipelines.dryrun", "--bundle", str(bundle), "--audio",
                          str(demo_data / "test_soundscapes")], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.splitlines() == [f"error: {bundle / MANIFEST}: no \"files\" list (every file with path, bytes, "
                                       "sha256); re-export it with pipelines.export and upload the whole folder"]


# ---------------------------------------------------------------------------- item 6: the notebook never ends empty
def run_notebook(bundle: Path, demo_data: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The generated notebook's code cells, in order, as one python process (what a kernel runs) against a
    fake /kaggle/input; pip installs into a target folder of its own, never into this environment."""
    root = tmp_path / "input"
    comp = root / "competitions" / "birdclef-2026"
    (comp / "test_soundscapes").mkdir(parents=True)
    for f in list_audio(demo_data / "test_soundscapes")[:2]:
        shutil.copy(f, comp / "test_soundscapes" / f.name)
    shutil.copy(demo_data / "sample_submission.csv", comp / "sample_submission.csv")
    (root / "datasets" / "owner").mkdir(parents=True)
    (root / "datasets" / "owner" / "bundle").symlink_to(bundle, target_is_directory=True)
    nb = json.loads((bundle / NOTEBOOK).read_text())
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"))
    working = tmp_path / "working"
    working.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDCLEF_STACK_")}
    env.update(BIRDCLEF_STACK_INPUT=str(root), BIRDCLEF_STACK_WORKING=str(working), PIP_NO_INDEX="1",
               PIP_TARGET=str(tmp_path / "pip-target"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([sys.executable, str(script)], cwd=working, env=env, capture_output=True, text=True)
    return result, working / "submission.csv", comp


def assert_prior_submission(submission: Path, comp: Path, bundle: Path) -> None:
    n = validate_submission(submission, comp / "sample_submission.csv", expected_ids_for_audio(comp / "test_soundscapes"))
    assert n == 2 * 12
    prior = json.loads((bundle / MANIFEST).read_text())["prior"]
    with open(submission, newline="") as f:
        rows = list(csv.reader(f))
    expected = [prior[c] for c in rows[0][1:]]
    for row in rows[1:]:
        np.testing.assert_allclose([float(x) for x in row[1:]], expected, rtol=0, atol=1e-12)


def test_a_truncated_toolkit_wheel_still_gives_the_prior_submission_and_says_why(good: Path, tmp_path: Path,
                                                                                  demo_data: Path) -> None:
    bundle, _ = hostile(good, tmp_path)
    wheel = bundle / WHEEL
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    result, submission, comp = run_notebook(bundle, demo_data, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{FALLBACK} ValueError: bundle file {WHEEL} does not match manifest.json (truncated or modified)" in result.stdout
    assert "prior-only submission: ValueError" in result.stdout
    assert not (tmp_path / "pip-target").exists()                   # checked before anything was installed
    assert_prior_submission(submission, comp, bundle)


def test_a_wheel_pip_refuses_still_gives_the_prior_submission(good: Path, tmp_path: Path, demo_data: Path) -> None:
    bundle, m = hostile(good, tmp_path)
    (bundle / WHEEL).write_bytes(b"PK not a zip")                   # listed with its own sha256: pip must refuse it
    remanifest(bundle, m)
    result, submission, comp = run_notebook(bundle, demo_data, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{FALLBACK} RuntimeError: pip install failed: " in result.stdout
    assert_prior_submission(submission, comp, bundle)


def test_a_run_that_fails_in_cell_2_still_gives_the_prior_submission(good: Path, tmp_path: Path,
                                                                     demo_data: Path) -> None:
    """The files are intact and pip installs (a tiny wheel, into a target folder), but the runtime's full rules
    refuse the manifest: cell 2 fails, and the prior is written."""
    bundle, m = hostile(good, tmp_path)
    save(bundle, {**m, "head_id": m["levels"][1]})
    result, submission, comp = run_notebook(bundle, demo_data, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"verified {len(m['files'])} files, installed [] + {WHEEL}" in result.stdout
    assert f"{FALLBACK} BundleError: " in result.stdout and "is not the first level" in result.stdout
    assert_prior_submission(submission, comp, bundle)


# ---------------------------------------------------------------------------- item 4: only its own work folder
def test_the_dry_run_refuses_a_folder_it_did_not_make_and_deletes_nothing(good: Path, tmp_path: Path,
                                                                           demo_data: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    cli = subprocess.run([sys.executable, "-m", "pipelines.dryrun", "--bundle", str(good), "--audio",
                          str(demo_data / "test_soundscapes"), "--work", str(precious)], cwd=REPO,
                         capture_output=True, text=True)
    assert cli.returncode == 2
    assert cli.stderr.splitlines() == [f"error: --work {precious} is not empty and was not made by pipelines.dryrun "
                                       f"(no {WORK_MARKER} in it); nothing was touched - choose a new or empty folder"]
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]


def test_a_rerun_clears_only_what_a_dry_run_makes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    prepare_work(work)                                              # new: made, marked
    assert (work / WORK_MARKER).is_file()
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "a.ogg").write_bytes(b"OggS")
    for name in WORK_ENTRIES[1:]:
        (work / name).mkdir() if "." not in name else (work / name).write_text("x")
    (work / "input" / "a.ogg").symlink_to(audio / "a.ogg")        # the fake input links the user's audio
    (work / "input" / "bundle").symlink_to(audio, target_is_directory=True)
    (work / "my-notes.txt").write_text("mine")
    prepare_work(work)
    assert sorted(p.name for p in work.iterdir()) == sorted([WORK_MARKER, "my-notes.txt"])
    assert (audio / "a.ogg").read_bytes() == b"OggS"                # links removed, never followed
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_work(empty)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file, not a folder"):
        prepare_work(tmp_path / "file")


# ---------------------------------------------------------------------------- item 12: a full disk during export
def _tmpfs_prefix(probe: Path) -> list[str] | None:
    """A private mount namespace (unshare's default propagation is private: nothing leaks to this machine)
    where a small tmpfs can be mounted: as root ``unshare -m``, else in a user namespace ``unshare -rm``;
    None when neither is permitted here."""
    probe.mkdir(exist_ok=True)
    for prefix in ([["unshare", "-m"]] if os.geteuid() == 0 else []) + [["unshare", "-rm"]]:
        if subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                          capture_output=True).returncode == 0:
            return prefix
    return None


def test_a_full_disk_during_export_names_the_bundle_file_and_removes_the_partial_bundle(demo_trained, store: Path,
                                                                                         tmp_path: Path) -> None:
    """A real full disk: a 4-MB tmpfs mounted in a private mount namespace (gone with the process); the
    zero-shot head (92 kB) fits, the 51-MB BirdNET model it needs does not."""
    prefix = _tmpfs_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (neither unshare -m nor unshare -rm is permitted)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=4m tmpfs "$1" && {sys.executable} -m pipelines.export --store "$2" '
              f'--head-id "$3" --fallback-head none --out "$1/bundle" --wheels "$4" --quiet; rc=$?; '
              'echo "left: $(ls -A "$1")"; exit $rc')
    (tmp_path / "wheels").mkdir()
    result = subprocess.run([*prefix, "sh", "-c", script, "sh", str(disk), str(store), demo_trained.head("zeroshot"),
                             str(tmp_path / "wheels")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == [line for line in result.stderr.splitlines() if line.strip()]       # one line
    assert error[0].startswith("error: disk full while writing models/birdnet/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite "
                               f"into the bundle (no space left on device in {disk}): the partial bundle "
                               f"{disk}/.bundle.partial was removed, nothing was exported")
    assert "kept" not in error[0] and "site-packages" not in error[0]
    assert result.stdout.strip() == "left:"                          # nothing left on the full disk


def test_the_runtime_predicts_one_of_two_files_with_one_stem_and_warns(good: Path, tmp_path: Path,
                                                                       demo_data: Path) -> None:
    """pipelines.predict refuses two files with one stem (tests/submit/test_predict.py); the notebook must
    always leave a submission, so its runtime predicts the first by name and says which it skipped."""
    import soundfile as sf

    first = list_audio(demo_data / "test_soundscapes")[0]
    comp = tmp_path / "comp"
    (comp / "test_soundscapes").mkdir(parents=True)
    shutil.copy(first, comp / "test_soundscapes" / first.name)
    audio, rate = sf.read(first)
    sf.write(comp / "test_soundscapes" / f"{first.stem}.flac", audio, rate)     # same stem, another format
    shutil.copy(demo_data / "sample_submission.csv", comp / "sample_submission.csv")
    said: list[str] = []
    report = runtime.run(good, comp, tmp_path / "out" / "submission.csv", workers=1, say=said.append)
    assert report.n_files == 1 and report.n_rows == 12
    assert report.warnings[0].endswith(f"kept the first file of each stem ({first.stem}.flac) and skipped {first.name}")
    assert any(line.startswith("warning: ") and "have the same stem" in line for line in said)
    with open(tmp_path / "out" / "submission.csv", newline="") as f:
        ids = [r[0] for r in csv.reader(f)][1:]
    assert ids == expected_row_ids(comp / "test_soundscapes" / f"{first.stem}.flac") and len(set(ids)) == 12
    # its run report times the file apart from the predictor's load (loaded before it, in this process), and the
    # dry run's projection from one file says it cannot trust the rate (issue 28 item 10)
    from submit.dryrun import project_dry_run

    saved = json.loads((tmp_path / "out" / runtime.REPORT_FILE).read_text())
    assert [(t["first"], t["windows"], t["pool"], t["load_s"]) for t in saved["file_timing"]] == [(True, 12, 1, 0.0)]
    assert 0 < saved["file_timing"][0]["s"] <= saved["stage_seconds"]["predict"]
    p = project_dry_run(saved, {}, 600, 4, wall=saved["stage_seconds"]["total"])
    assert (p.rate_files, p.steady, p.trusted) == (1, False, False) and p.lines()[-1].startswith("warning: too few")
    assert p.per_file_s == pytest.approx(saved["file_timing"][0]["s"])
