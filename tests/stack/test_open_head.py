"""One way to find any trained head of a store, single or stacked (stack.bundle.open_head / head_config)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from featurestore.errors import BundleError, UserInputError
from models.bundle import HEADS_DIR, RECORD_FILE, BundleWriter, HeadBundle, HeadConfig
from models.frame import FeatureVersions, FrameSpec
from models.heads import make_head, make_params
from stack.bundle import STACK_KIND, StackConfig, head_config, head_folder, open_head


def _prior_head(root: Path) -> str:
    """A one-fold ``prior`` head bundle written as training writes it; returns its head id."""
    config = HeadConfig(kind="prior", params=asdict(make_params("prior")), frame=FrameSpec("birdnet"),
                        fold_version="folds-a", data_version=None, feature_versions=FeatureVersions({"birdnet": "v1"}),
                        seed=0, replay=False, training_version="train-1")
    writer = BundleWriter(root / HEADS_DIR, config, {"birdnet": {"kind": "birdnet"}})
    head = make_head("prior", ["a", "b"], ["f0"])
    head.fit(np.zeros((4, 1), np.float32), np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32))
    writer.add_fold(0, head, ["w0", "w1", "w2", "w3"])
    writer.publish()
    return config.head_id


def test_a_single_head_opens_as_its_bundle_and_config(tmp_path: Path) -> None:
    head_id = _prior_head(tmp_path)
    bundle = open_head(tmp_path, head_id)
    assert isinstance(bundle, HeadBundle) and bundle.head_id == head_id and bundle.fold_ids == [0]
    assert head_config(tmp_path, head_id) == bundle.config
    assert head_folder(tmp_path, head_id) == tmp_path / HEADS_DIR / head_id


def test_a_stacked_head_config_is_a_stack_config(tmp_path: Path) -> None:
    config = StackConfig(("linear-x", "lgbm-y"), (), "mean", "blend", {}, (), "folds-a", None)
    folder = tmp_path / HEADS_DIR / config.head_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_json()))
    got = head_config(tmp_path, config.head_id)
    assert isinstance(got, StackConfig) and got == config and got.to_json()["head"] == STACK_KIND


@pytest.mark.parametrize("reader", [open_head, head_config, head_folder])
def test_an_unknown_head_is_one_error(reader, tmp_path: Path) -> None:
    _prior_head(tmp_path)
    with pytest.raises(UserInputError, match=r"no trained head 'nope' in .*; pick one from python -m "
                                             r"pipelines\.leaderboard"):
        reader(tmp_path, "nope")


def test_a_written_head_records_its_folds_and_files_and_open_head_checks_them(tmp_path: Path) -> None:
    head_id = _prior_head(tmp_path)
    folder = tmp_path / HEADS_DIR / head_id
    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["folds"] == [0] and sorted(record["files"]) == [
        "config.json", "extractors.json", "fold_0/arrays.npz", "fold_0/head.json", "fold_0/train_windows.parquet"]
    assert record["files"]["fold_0/train_windows.parquet"]["optional"] is True
    (folder / "fold_0" / "head.json").write_text((folder / "fold_0" / "head.json").read_text() + " ")
    with pytest.raises(BundleError, match=rf"{head_id}: fold_0/head.json changed since training \(\d+ bytes, "
                                          rf"recorded \d+\); .*python -m pipelines.train"):
        open_head(tmp_path, head_id)


def test_a_writer_that_fails_before_publish_leaves_no_partial_folder(tmp_path: Path) -> None:
    config = HeadConfig(kind="prior", params=asdict(make_params("prior")), frame=FrameSpec("birdnet"),
                        fold_version="folds-a", data_version=None, feature_versions=FeatureVersions({"birdnet": "v1"}),
                        seed=0, replay=False, training_version="train-1")
    head = make_head("prior", ["a", "b"], ["f0"])
    head.fit(np.zeros((2, 1), np.float32), np.array([[1, 0], [0, 1]], np.float32))
    with pytest.raises(RuntimeError, match="fold 1 failed"), BundleWriter(tmp_path / HEADS_DIR, config, {}) as writer:
        writer.add_fold(0, head, ["w0", "w1"])
        raise RuntimeError("fold 1 failed")
    assert list((tmp_path / HEADS_DIR).iterdir()) == []
