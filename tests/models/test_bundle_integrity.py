"""A head folder is whole or refused (issue 23, items 1 and 12): ``record.json`` holds the folds and every file's
size + sha256 at write time, every reader checks the folder against it (a stacked head: its base heads too), and
a full disk while writing a head is one DiskFullError naming the file, leaving no partial folder behind.

Every fault here is real: a deleted fold folder, a flipped byte in a real LightGBM model file, an added fold, a
symlink, and a real full disk (a small tmpfs mounted over ``heads/``; that test needs root and is skipped
otherwise).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.errors import BundleError, DiskFullError
from models.bundle import HEADS_DIR, RECORD_FILE, load_bundle, verify_head_dir
from models.frame import FrameSpec
from stack.bundle import load_stack, open_head, write_stack
from submit.predict import open_predictor

REPO = Path(__file__).resolve().parents[2]


def _copy_heads(demo_trained, root: Path, *names: str) -> Path:
    """Copies of the session's trained head folders ``names`` in ``root/heads/``; returns ``root``."""
    for name in names:
        shutil.copytree(demo_trained.store / HEADS_DIR / name, root / HEADS_DIR / name)
    return root


@pytest.fixture()
def lgbm(demo_trained, tmp_path: Path) -> Path:
    """A private copy of the session's LightGBM head folder (5 folds, 14 model files each)."""
    return _copy_heads(demo_trained, tmp_path, demo_trained.head("lgbm")) / HEADS_DIR / demo_trained.head("lgbm")


def test_every_head_the_repo_writes_carries_a_record_that_checks(demo_trained) -> None:
    heads = sorted((demo_trained.store / HEADS_DIR).iterdir())
    assert {p.name for p in heads} == {*(r.head_id for r in demo_trained.results.values()),
                                       demo_trained.stack.head_id, demo_trained.stack_linear.head_id}
    for folder in heads:
        record = json.loads((folder / RECORD_FILE).read_text())
        assert record["head_id"] == folder.name and record["folds"] == [0, 1, 2, 3, 4]
        on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert sorted(record["files"]) == [p for p in on_disk if p != RECORD_FILE]
        assert verify_head_dir(folder).folds == (0, 1, 2, 3, 4)
        assert open_head(demo_trained.store, folder.name).head_id == folder.name


def test_a_head_with_a_missing_fold_is_refused_not_predicted_with_four(lgbm: Path) -> None:
    shutil.rmtree(lgbm / "fold_2")
    with pytest.raises(BundleError) as info:
        load_bundle(lgbm)
    message = str(info.value)
    assert message == (f"{lgbm}: fold_2 is missing (recorded folds 0,1,2,3,4); re-copy the whole folder from "
                       f"where it was made, or re-run the python -m pipelines.train command that made it (the same "
                       f"arguments give the same head id {lgbm.name})")
    with pytest.raises(BundleError, match="fold_2 is missing"):
        open_head(lgbm.parent.parent, lgbm.name)


def test_a_changed_byte_in_a_model_file_is_refused_naming_the_file(lgbm: Path) -> None:
    model = lgbm / "fold_1" / "lgbm" / "class_0004.txt"
    data = bytearray(model.read_bytes())
    at = data.index(b"leaf_value=") + len(b"leaf_value=")
    data[at] = ord("7") if data[at] != ord("7") else ord("8")          # same size: only the sha256 tells
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^\S+: fold_1/lgbm/class_0004\.txt changed since training \(sha256 "
                                          r"[0-9a-f]{12}\.\.\., recorded [0-9a-f]{12}\.\.\.\); re-copy"):
        load_bundle(lgbm)
    model.write_bytes(bytes(data[:-10]))                                  # truncated: the size tells
    with pytest.raises(BundleError, match=rf"fold_1/lgbm/class_0004\.txt changed since training "
                                          rf"\({len(data) - 10} bytes, recorded {len(data)}\)"):
        load_bundle(lgbm)


def test_an_added_fold_file_or_symlink_is_refused(lgbm: Path, tmp_path: Path) -> None:
    shutil.copytree(lgbm / "fold_0", lgbm / "fold_9")
    with pytest.raises(BundleError, match=r": fold_9 is not a recorded fold \(recorded folds 0,1,2,3,4\); "):
        load_bundle(lgbm)
    shutil.rmtree(lgbm / "fold_9")
    # one more per-class model: load_head would read every lgbm/*.txt and predict with it
    shutil.copy(lgbm / "fold_3" / "lgbm" / "class_0000.txt", lgbm / "fold_3" / "lgbm" / "class_0099.txt")
    with pytest.raises(BundleError, match=r": fold_3/lgbm/class_0099\.txt is not in record\.json \(added after "
                                          r"training\); "):
        load_bundle(lgbm)
    (lgbm / "fold_3" / "lgbm" / "class_0099.txt").unlink()
    outside = tmp_path / "elsewhere.json"
    outside.write_text((lgbm / "fold_0" / "head.json").read_text())
    (lgbm / "fold_0" / "head.json").unlink()
    (lgbm / "fold_0" / "head.json").symlink_to(outside)                  # same bytes, but not the file written
    with pytest.raises(BundleError, match=r": fold_0/head\.json is a symlink or not a regular file"):
        load_bundle(lgbm)


def test_a_folder_without_a_record_is_refused_as_written_by_an_older_version(lgbm: Path) -> None:
    (lgbm / RECORD_FILE).unlink()
    with pytest.raises(BundleError, match=rf"{lgbm.name}: written by an older birdclef-stack \(no record\.json: its "
                                          rf"folds and file checksums were never recorded, so it cannot be "
                                          rf"checked\); re-run the python -m pipelines\.train command that made it "
                                          rf"\(the same arguments give the same head id {lgbm.name}\)"):
        load_bundle(lgbm)


def test_training_provenance_may_be_left_out_but_not_changed(lgbm: Path) -> None:
    """``submit.export`` copies a head without its train_windows.parquet files: that copy still loads."""
    for part in lgbm.glob("fold_*/train_windows.parquet"):
        part.unlink()
    assert load_bundle(lgbm).fold_ids == [0, 1, 2, 3, 4]
    (lgbm / "fold_4" / "train_windows.parquet").write_bytes(b"PAR1 not the windows it was trained on PAR1")
    with pytest.raises(BundleError, match=r"fold_4/train_windows\.parquet changed since training"):
        load_bundle(lgbm)


def test_a_stack_whose_base_head_lost_a_fold_is_refused_naming_the_base_head(demo_trained, tmp_path: Path) -> None:
    stack_id = demo_trained.stack.head_id
    linear, lgbm = demo_trained.head("linear"), demo_trained.head("lgbm")
    root = _copy_heads(demo_trained, tmp_path, stack_id, linear, lgbm)
    assert load_stack(root / HEADS_DIR / stack_id).config.base_heads == (linear, lgbm)
    shutil.rmtree(root / HEADS_DIR / lgbm / "fold_2")
    expected = (rf"^stacked head {stack_id}: base head {lgbm} is not whole: \S+/{lgbm}: fold_2 is missing "
                rf"\(recorded folds 0,1,2,3,4\); ")
    for load in (lambda: load_stack(root / HEADS_DIR / stack_id), lambda: open_head(root, stack_id),
                 lambda: open_predictor(root / HEADS_DIR / stack_id)):
        with pytest.raises(BundleError, match=expected) as info:
            load()
        assert "\n" not in str(info.value)
    shutil.rmtree(root / HEADS_DIR / lgbm)
    with pytest.raises(BundleError, match=rf"stacked head {stack_id} needs its base head folder\(s\) .*{lgbm}"):
        open_head(root, stack_id)
    shutil.rmtree(root / HEADS_DIR / stack_id / "fold_0")                 # and its own folds are checked too
    with pytest.raises(BundleError, match=rf"{stack_id}: fold_0 is missing .*python -m pipelines\.stack"):
        open_head(root, stack_id)


def test_predict_with_a_missing_fold_is_one_error_line_and_no_file(demo_trained, store_copy, demo_data: Path,
                                                                    tmp_path: Path) -> None:
    store = store_copy(demo_trained.store, "missing_fold")
    head_id = demo_trained.head("lgbm")
    shutil.rmtree(store / HEADS_DIR / head_id / "fold_2")
    out = tmp_path / "submission.csv"
    result = subprocess.run([sys.executable, "-m", "pipelines.predict", "--store", str(store), "--head-id", head_id,
                             "--audio", str(demo_data / "test_soundscapes"), "--out", str(out),
                             "--sample", str(demo_data / "sample_submission.csv"), "--workers", "1", "--quiet"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {store / HEADS_DIR / head_id}: fold_2 is missing (recorded folds 0,1,2,3,4); re-copy "
                     "the whole folder from where it was made, or re-run the python -m pipelines.train command that "
                     f"made it (the same arguments give the same head id {head_id})"], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# ---------------------------------------------------------------------------- a real full disk (item 12)
@pytest.fixture()
def full_heads(tmp_path: Path):
    """``mount(folder, size)``: a tmpfs of ``size`` mounted over ``folder`` (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a real full disk needs a small tmpfs and mounting one is not permitted here "
                        f"({done.stderr.strip() or done.returncode}); run the tests as root to include it")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_train_on_a_full_disk_names_the_file_and_leaves_no_partial_head(demo_embedded_store, store_copy,
                                                                        full_heads) -> None:
    from models.training import train_head

    store = store_copy(demo_embedded_store, "full_disk")
    heads = full_heads(store / HEADS_DIR, "48k")          # room for config + about one fold of the prior head
    with pytest.raises(DiskFullError) as info:
        train_head(store, "prior", FrameSpec("birdnet"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"disk full while writing {heads}/.partial-prior-"), message
    written = Path(message.removeprefix("disk full while writing ").split(": free space in ")[0])
    assert written.parent.name.startswith("fold_") and written.name in {"arrays.npz", "head.json",
                                                                        "train_windows.parquet"}
    assert f": free space in {heads} and re-run" in message
    assert list(heads.iterdir()) == []                    # the partial head folder is gone
    assert not (store / "oof").exists() or not list((store / "oof").glob("prior-*"))


def test_a_stack_written_on_a_full_disk_names_the_file_and_leaves_nothing(demo_trained, tmp_path: Path,
                                                                          full_heads) -> None:
    stacked = load_stack(demo_trained.store / HEADS_DIR / demo_trained.stack.head_id)
    heads = full_heads(tmp_path / HEADS_DIR, "64k")
    with pytest.raises(DiskFullError, match=rf"^disk full while writing {heads}/\.partial-{stacked.head_id}-\d+/"
                                            rf"\S+: free space in {heads} and re-run"):
        write_stack(heads, stacked.config, stacked.layout, stacked.extractor_params, stacked.folds, stacked.full)
    assert list(heads.iterdir()) == []
