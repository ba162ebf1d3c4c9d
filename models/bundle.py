"""The bundle: the folder a cross-validated head kind leaves behind, one writer and one reader.

Words: a *head kind* is a model family (``prior``, ``linear``, ...); a *Head*
(:class:`models.heads.Head`) is one fitted fold model; a *bundle* is the folder
``<store>/heads/<head_id>/`` holding everything inference needs::

    config.json          HeadConfig: head kind, parameters, frame, fold/data/feature versions, seed
    extractors.json      the stored parameters of every extractor the features came from
    fold_<k>/            one saved Head per fold (models.heads.Head.save) and
    fold_<k>/train_windows.parquet   the window ids that fold model was trained on

Guarantees:

* The JSON on disk is exactly what earlier versions wrote (same keys, ``config.json`` with sorted
  keys, ``feature_versions`` with a flat ``"pooling"`` key beside the extractor versions), so a
  head id - the hash of :meth:`HeadConfig.to_json` - names the same run as before and existing
  bundles keep loading. :meth:`HeadConfig.from_json` is the exact inverse of ``to_json``.
* :class:`BundleWriter` assembles a bundle under a hidden temporary name and renames it into place
  only after its last fold (:meth:`BundleWriter.publish`): no reader ever sees half a bundle.
* :func:`load_bundle` refuses an incomplete or malformed folder with :class:`BundleError` naming it.

Only numpy and the head code are imported here (the Kaggle inference path loads bundles without
pyarrow or duckdb; writing ``train_windows.parquet`` imports pyarrow when it happens).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError
from models.frame import FeatureVersions, FrameSpec
from models.heads import Head, config_hash, load_head

HEADS_DIR = "heads"                      # bundles live in <store>/heads/<head_id>/
CONFIG_FILE = "config.json"
EXTRACTORS_FILE = "extractors.json"
TRAIN_WINDOWS_FILE = "train_windows.parquet"
HEAD_FILE = "head.json"                  # written by Head.save: marks a complete fold folder


def fold_dir_name(fold: int) -> str:
    return f"fold_{fold}"


def fold_of_dir(folder: Path) -> int:
    """The fold a ``fold_<k>`` folder holds (the inverse of :func:`fold_dir_name`)."""
    try:
        return int(folder.name.removeprefix("fold_"))
    except ValueError:
        raise BundleError(f"{folder}: not a fold folder (expected fold_<k>)") from None


def bundle_dir(store_root: str | os.PathLike, head_id: str) -> Path:
    """Where the bundle of ``head_id`` lives in a store."""
    return Path(store_root) / HEADS_DIR / head_id


@dataclass(frozen=True)
class HeadConfig:
    """What ``config.json`` holds: everything that defines one cross-validated run of a head kind.

    :attr:`head_id` (``<kind>-<hash of to_json()>``) names the run: the same inputs give the same id.
    ``subsample`` is set for the tuner's fast runs; ``feature_coverage`` and ``allow_partial`` for a
    run trained on a partial frame; ``pseudo`` for a student trained with pseudo-labels (each is
    omitted from the JSON when None).
    """

    kind: str                       # head kind ("head" in the JSON)
    params: dict                    # the head kind's parameters (dataclasses.asdict of its params)
    frame: FrameSpec
    fold_version: str
    data_version: str | None
    feature_versions: FeatureVersions
    seed: int
    replay: bool
    training_version: str
    subsample: dict | None = None
    feature_coverage: dict | None = None
    allow_partial: bool | None = None
    pseudo: dict | None = None      # pseudo-labels trained on: {"version", "weight", "teacher_id", "n_windows"}

    def to_json(self) -> dict:
        out = {"head": self.kind, "params": dict(self.params), "frame": asdict(self.frame),
               "fold_version": self.fold_version, "data_version": self.data_version,
               "feature_versions": self.feature_versions.to_json(), "seed": self.seed, "replay": self.replay,
               "training_version": self.training_version}
        for key in _OPTIONAL:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: Mapping, where: str = CONFIG_FILE) -> HeadConfig:
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: not a JSON object")
        known = set(_REQUIRED) | set(_OPTIONAL)
        unknown = sorted(set(data) - known)
        missing = sorted(set(_REQUIRED) - set(data))
        if unknown or missing:
            raise BundleError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; known: {sorted(known)}")
        frame_fields = {f.name for f in fields(FrameSpec)}
        if not isinstance(data["frame"], Mapping) or set(data["frame"]) - frame_fields:
            raise BundleError(f"{where}: 'frame' must be an object with keys from {sorted(frame_fields)}")
        return cls(kind=data["head"], params=dict(data["params"]), frame=FrameSpec(**data["frame"]),
                   fold_version=data["fold_version"], data_version=data["data_version"],
                   feature_versions=FeatureVersions.from_json(data["feature_versions"], f"{where}: feature_versions"),
                   seed=data["seed"], replay=data["replay"], training_version=data["training_version"],
                   **{key: data.get(key) for key in _OPTIONAL})

    @property
    def head_id(self) -> str:
        return f"{self.kind}-{config_hash(self.to_json())}"


_REQUIRED = ("head", "params", "frame", "fold_version", "data_version", "feature_versions", "seed", "replay",
             "training_version")
_OPTIONAL = ("subsample", "feature_coverage", "allow_partial", "pseudo")


# ---------------------------------------------------------------------------- writer
class BundleWriter:
    """Writes one bundle: config and extractor parameters, then the fold Heads, then :meth:`publish`.

    Everything goes to ``heads/.partial-<head_id>-<pid>/``; partial folders a killed run left for
    the same head id are removed when a new writer starts. :meth:`publish` renames the folder to
    ``heads/<head_id>`` (replacing an older copy), so a bundle appears complete or not at all.
    """

    def __init__(self, heads_dir: str | os.PathLike, config: HeadConfig, extractor_params: Mapping[str, dict]):
        heads_dir = Path(heads_dir)
        self.head_id = config.head_id
        self.final_dir = heads_dir / self.head_id
        self.work_dir = heads_dir / f".partial-{self.head_id}-{os.getpid()}"
        for stale in heads_dir.glob(f".partial-{self.head_id}-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        (self.work_dir / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=1, sort_keys=True))
        (self.work_dir / EXTRACTORS_FILE).write_text(json.dumps(dict(extractor_params), indent=1))

    def add_fold(self, fold: int, head: Head, train_window_ids: Sequence[str] | np.ndarray,
                 pseudo_teacher_fold: Sequence[int | None] | None = None) -> Path:
        """Save the fold's Head and the ids of the windows it was trained on (for leakage audits);
        with pseudo-labels, ``pseudo_teacher_fold`` names the teacher fold model that labelled each
        pseudo-labelled window (None for labelled windows)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = head.save(self.work_dir / fold_dir_name(fold))
        columns = {"window_id": pa.array(list(train_window_ids), pa.string())}
        if pseudo_teacher_fold is not None:
            columns["pseudo_teacher_fold"] = pa.array(list(pseudo_teacher_fold), pa.int32())
        pq.write_table(pa.table(columns), folder / TRAIN_WINDOWS_FILE, compression="zstd")
        return folder

    def publish(self) -> Path:
        """Make the fully written bundle visible under its final name (an older copy is replaced)."""
        if self.final_dir.exists():
            trash = self.final_dir.with_name(f".old-{self.final_dir.name}-{os.getpid()}")
            self.final_dir.rename(trash)
            self.work_dir.rename(self.final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.work_dir.rename(self.final_dir)
        return self.final_dir


# ---------------------------------------------------------------------------- reader
@dataclass
class HeadBundle:
    """A bundle as loaded from its folder: its config, extractor parameters and fold Heads."""

    head_id: str
    config: HeadConfig
    extractor_params: dict[str, dict]
    folds: list[Head]
    fold_ids: list[int]                  # the fold each of ``folds`` held out, ascending

    @property
    def class_names(self) -> list[str]:
        return self.folds[0].class_names


def load_bundle(head_dir: str | os.PathLike) -> HeadBundle:
    """Load the bundle in ``head_dir``; BundleError naming the folder when it is incomplete or malformed."""
    head_dir = Path(head_dir)
    for required in (CONFIG_FILE, EXTRACTORS_FILE):
        if not (head_dir / required).exists():
            raise BundleError(f"{head_dir}: not a trained head folder (missing {required})")
    fold_dirs = sorted((p for p in head_dir.glob("fold_*") if (p / HEAD_FILE).exists()), key=fold_of_dir)
    folds = [load_head(p) for p in fold_dirs]
    if not folds:
        raise BundleError(f"{head_dir}: no fold models")
    try:
        config_json = json.loads((head_dir / CONFIG_FILE).read_text())
        extractor_params = json.loads((head_dir / EXTRACTORS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{head_dir}: unreadable JSON ({exc})") from None
    config = HeadConfig.from_json(config_json, str(head_dir / CONFIG_FILE))
    return HeadBundle(head_dir.name, config, extractor_params, folds, [fold_of_dir(p) for p in fold_dirs])


def class_prior(bundle: HeadBundle) -> np.ndarray:
    """The bundle's class base rates (mean over its fold Heads), float32 in [0, 1]."""
    return np.clip(np.mean([h.prior_ for h in bundle.folds], axis=0), 0.0, 1.0).astype(np.float32)
