"""The stacked head's folder: one writer and one reader, beside :mod:`models.bundle`.

A stacked head is one more head kind (``stack``); its bundle ``<store>/heads/stack-<hash>/`` holds::

    config.json        StackConfig: base head ids, zero-shot views, stacker kind + params, post steps,
                       fold and data versions (the head id is ``stack-<hash of config.json>``)
    inputs.json        the level-2 sources in order, class names and taxon groups, which classes each
                       source predicts, and the zero-shot views' extractor versions
    extractors.json    stored parameters of the zero-shot views' extractors ({} without zero-shot views)
    fold_<k>/          the level-2 model cross-validation fitted without fold k
    full/              the level-2 model fitted on every folded window: what predict applies
      model.json       kind, parameters, feature names, site/hour prior keys
      model.npz        ridge arrays, prior logits and the training window ids (no pickles)

The base heads' own bundles are not copied: they sit beside it in ``heads/`` (copy ``heads/`` to
predict elsewhere). :func:`load_stack` needs neither the store nor pyarrow/duckdb (inference path).
The bundle is assembled under a hidden name and renamed into place (``models.bundle.BundleWriter``:
a failed or disk-full write leaves no partial folder) with a ``record.json`` of its folds and every
file's checksum. :func:`load_stack` checks the stacked head's folder and each base head's folder
against their records (:func:`models.bundle.verify_head_dir`) before loading anything: a missing
base head, a lost fold or a changed file in any of them is one :class:`BundleError` line naming it.

Any head of a store, single or stacked, is found here (the lowest floor that knows both kinds):
:func:`open_head` loads it (a :class:`~models.bundle.HeadBundle` or a :class:`StackBundle`),
:func:`head_config` reads only its config, and both refuse an unknown head id with one message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError, UserInputError
from models.bundle import (
    CONFIG_FILE,
    EXTRACTORS_FILE,
    BundleWriter,
    HeadBundle,
    HeadConfig,
    bundle_dir,
    fold_dir_name,
    load_bundle,
    verify_head_dir,
)
from models.heads import config_hash, naming
from stack.inputs import PriorTable
from stack.post import PostStep, parse_post
from stack.stackers import FittedStacker, RidgeStacker, make_stack_params

STACK_KIND = "stack"
STACK_VERSION = "stack-1"
INPUTS_FILE = "inputs.json"
MODEL_JSON = "model.json"
MODEL_NPZ = "model.npz"
FULL_DIR = "full"
RIDGE_ARRAYS = ("mean_", "scale_", "coef_", "intercept_", "shared_coef_", "own_weights_")


@dataclass(frozen=True)
class StackConfig:
    """What ``config.json`` holds; :attr:`head_id` (``stack-<hash>``) names the stacked run."""

    base_heads: tuple[str, ...]
    zero_shot: tuple[str, ...]
    zero_shot_pooling: str
    stacker: str
    params: dict
    post: tuple                        # PostStep.to_json() of each step, in order
    fold_version: str
    data_version: str | None
    stack_version: str = STACK_VERSION

    def to_json(self) -> dict:
        return {"head": STACK_KIND, "base_heads": list(self.base_heads), "zero_shot": list(self.zero_shot),
                "zero_shot_pooling": self.zero_shot_pooling, "stacker": self.stacker,
                "params": json.loads(json.dumps(self.params)), "post": json.loads(json.dumps(list(self.post))),
                "fold_version": self.fold_version, "data_version": self.data_version,
                "stack_version": self.stack_version}

    @classmethod
    def from_json(cls, data: Mapping, where: str = CONFIG_FILE) -> StackConfig:
        keys = {"head", "base_heads", "zero_shot", "zero_shot_pooling", "stacker", "params", "post", "fold_version",
                "data_version", "stack_version"}
        if not isinstance(data, Mapping) or set(data) != keys or data.get("head") != STACK_KIND:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise BundleError(f"{where}: not a stacked head config (keys {got}; expected {sorted(keys)})")
        return cls(tuple(data["base_heads"]), tuple(data["zero_shot"]), data["zero_shot_pooling"], data["stacker"],
                   dict(data["params"]), tuple(data["post"]), data["fold_version"], data["data_version"],
                   data["stack_version"])

    @property
    def head_id(self) -> str:
        return f"{STACK_KIND}-{config_hash(self.to_json())}"

    def steps(self) -> tuple[PostStep, ...]:
        return parse_post(self.post)


@dataclass(frozen=True)
class StackLayout:
    """``inputs.json``: the level-2 sources (base heads, then zero-shot views) and the class axis."""

    sources: tuple[str, ...]
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]
    available: np.ndarray                      # (sources, classes) bool
    zero_shot_versions: dict[str, str]         # extractor name -> version of the zero-shot views

    def to_json(self) -> dict:
        return {"sources": list(self.sources), "class_names": list(self.class_names),
                "class_groups": [str(g) for g in self.class_groups],
                "available": np.asarray(self.available, bool).astype(int).tolist(),
                "zero_shot_versions": dict(self.zero_shot_versions)}

    @classmethod
    def from_json(cls, data: Mapping, where: str = INPUTS_FILE) -> StackLayout:
        try:
            available = np.asarray(data["available"], dtype=bool)
            out = cls(tuple(data["sources"]), tuple(data["class_names"]), tuple(data["class_groups"]), available,
                      dict(data["zero_shot_versions"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed ({exc})") from None
        if available.shape != (len(out.sources), len(out.class_names)) or len(out.class_groups) != len(out.class_names):
            raise BundleError(f"{where}: 'available' is {available.shape} for {len(out.sources)} sources x "
                              f"{len(out.class_names)} classes")
        return out


# ---------------------------------------------------------------------------- one fitted level-2 model
def save_stacker(fitted: FittedStacker, folder: Path) -> Path:
    """Write one :class:`~stack.stackers.FittedStacker` as ``model.json`` + ``model.npz`` (no pickles)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"train_windows": np.asarray(fitted.train_windows, dtype=str)}
    if fitted.class_prior is not None:
        arrays["class_prior"] = np.asarray(fitted.class_prior, dtype=np.float64)
    meta: dict = {"kind": fitted.kind, "params": asdict(fitted.params), "priors": []}
    if fitted.model is not None:
        m = fitted.model
        meta["feature_names"] = list(m.feature_names)
        meta["class_groups"] = [str(g) for g in m.class_groups]
        arrays["feature_mask"] = np.asarray(m.feature_mask, bool)
        for name in RIDGE_ARRAYS:
            arrays[name] = np.asarray(getattr(m, name))
    for i, table in enumerate(fitted.priors):
        meta["priors"].append({"key": table.key, "values": list(table.values)})
        arrays[f"prior_{i}"] = np.asarray(table.logits, dtype=np.float64)
    with naming(folder / MODEL_JSON):
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=1))
    with naming(folder / MODEL_NPZ):
        np.savez(folder / MODEL_NPZ, **arrays)
    return folder


def load_stacker(folder: Path) -> FittedStacker:
    """The inverse of :func:`save_stacker`; BundleError naming the folder when a file is missing."""
    folder = Path(folder)
    if not (folder / MODEL_JSON).exists() or not (folder / MODEL_NPZ).exists():
        raise BundleError(f"{folder}: not a saved level-2 model (missing {MODEL_JSON} or {MODEL_NPZ})")
    meta = json.loads((folder / MODEL_JSON).read_text())
    params = make_stack_params(meta["kind"], meta["params"])
    with np.load(folder / MODEL_NPZ, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    model = None
    if meta["kind"] == "ridge":
        model = RidgeStacker(params, meta["feature_names"], arrays["feature_mask"], meta["class_groups"])
        for name in RIDGE_ARRAYS:
            setattr(model, name, arrays[name])
    priors = [PriorTable(p["key"], tuple(p["values"]), arrays[f"prior_{i}"]) for i, p in enumerate(meta["priors"])]
    return FittedStacker(meta["kind"], params, arrays["train_windows"], model, priors, arrays.get("class_prior"))


# ---------------------------------------------------------------------------- writer / reader
def write_stack(heads_dir: str | os.PathLike, config: StackConfig, layout: StackLayout,
                extractor_params: Mapping[str, dict], fold_models: Mapping[int, FittedStacker],
                full: FittedStacker) -> Path:
    """Write and publish a stacked head's folder (see the module doc); returns its final path. A full
    disk is one DiskFullError naming the file being written, and no partial folder is left."""
    with BundleWriter(heads_dir, config, extractor_params) as writer:
        writer.write_text(INPUTS_FILE, json.dumps(layout.to_json(), indent=1))
        for k, fitted in sorted(fold_models.items()):
            folder = writer.fold_folder(k)
            with writer.writing(folder):
                save_stacker(fitted, folder)
        with writer.writing(writer.work_dir / FULL_DIR):
            save_stacker(full, writer.work_dir / FULL_DIR)
        return writer.publish()


@dataclass
class StackBundle:
    head_id: str
    folder: Path
    config: StackConfig
    layout: StackLayout
    extractor_params: dict[str, dict]
    folds: dict[int, FittedStacker]
    full: FittedStacker

    @property
    def class_names(self) -> list[str]:
        return list(self.layout.class_names)


def is_stack_dir(head_dir: str | os.PathLike) -> bool:
    """Whether ``head_dir`` holds a stacked head (its config names head kind ``stack``)."""
    path = Path(head_dir) / CONFIG_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("head") == STACK_KIND
    except (json.JSONDecodeError, AttributeError):
        return False


def load_stack(head_dir: str | os.PathLike) -> StackBundle:
    """Load a stacked head's folder after checking it and its base heads' folders against their
    records; BundleError naming the folder (a base head's: which one) when incomplete, changed or
    malformed."""
    head_dir = Path(head_dir)
    for required in (CONFIG_FILE, INPUTS_FILE, EXTRACTORS_FILE, FULL_DIR):
        if not (head_dir / required).exists():
            raise BundleError(f"{head_dir}: not a stacked head folder (missing {required})")
    record = verify_head_dir(head_dir)
    try:
        config = StackConfig.from_json(json.loads((head_dir / CONFIG_FILE).read_text()), str(head_dir / CONFIG_FILE))
        layout = StackLayout.from_json(json.loads((head_dir / INPUTS_FILE).read_text()), str(head_dir / INPUTS_FILE))
        extractor_params = json.loads((head_dir / EXTRACTORS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{head_dir}: unreadable JSON ({exc})") from None
    if layout.sources != (*config.base_heads, *config.zero_shot):
        raise BundleError(f"{head_dir}: {INPUTS_FILE} sources {list(layout.sources)} do not match the config's "
                          f"base heads and zero-shot views")
    bundle = StackBundle(head_dir.name, head_dir, config, layout, extractor_params,
                         {k: load_stacker(head_dir / fold_dir_name(k)) for k in record.folds},
                         load_stacker(head_dir / FULL_DIR))
    for base in base_head_dirs(bundle):
        try:
            verify_head_dir(base)
        except BundleError as exc:
            raise BundleError(f"stacked head {bundle.head_id}: base head {base.name} is not whole: {exc}") from None
    return bundle


# ---------------------------------------------------------------------------- any head of a store
def head_folder(store_root: str | os.PathLike, head_id: str) -> Path:
    """The folder of trained (or stacked) head ``head_id`` in a store (or a Kaggle bundle: both keep
    heads in ``heads/``); UserInputError when there is none."""
    folder = bundle_dir(store_root, head_id)
    if not folder.is_dir():
        raise UserInputError(f"no trained head {head_id!r} in {store_root}; pick one from "
                             "python -m pipelines.leaderboard")
    return folder


def load_head_dir(head_dir: str | os.PathLike) -> HeadBundle | StackBundle:
    """The head in ``head_dir``: a stacked head (:func:`load_stack`) or one head bundle
    (:func:`models.bundle.load_bundle`); BundleError naming the folder when it is incomplete."""
    return load_stack(head_dir) if is_stack_dir(head_dir) else load_bundle(head_dir)


def open_head(store_root: str | os.PathLike, head_id: str) -> HeadBundle | StackBundle:
    """Trained head ``head_id`` of a store, single or stacked (:func:`head_folder`, :func:`load_head_dir`)."""
    return load_head_dir(head_folder(store_root, head_id))


def head_config(store_root: str | os.PathLike, head_id: str) -> HeadConfig | StackConfig:
    """Only the ``config.json`` of :func:`open_head` (no fold model is loaded): a
    :class:`~models.bundle.HeadConfig`, or a :class:`StackConfig` for a stacked head."""
    path = head_folder(store_root, head_id) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: not a trained head folder (missing {CONFIG_FILE})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path.parent}: unreadable JSON ({exc})") from None
    if isinstance(data, Mapping) and data.get("head") == STACK_KIND:
        return StackConfig.from_json(data, str(path))
    return HeadConfig.from_json(data, str(path))


def base_head_dirs(bundle: StackBundle) -> list[Path]:
    """The base heads' bundle folders: beside the stacked head's folder in ``heads/``."""
    dirs = [bundle.folder.parent / h for h in bundle.config.base_heads]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise BundleError(f"stacked head {bundle.head_id} needs its base head folder(s) {missing} beside it")
    return dirs


def steps_json(steps: Sequence[PostStep]) -> tuple:
    return tuple(s.to_json() for s in steps)
