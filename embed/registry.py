"""The one registry of extractor families: names, presets, views, part tables, rebuilding from params.

A family is one :class:`embed.extractors.Extractor` subclass in its own module, which declares its
part table, its feature views (and how their columns are named), its side tables and how it is
built from the job's options or from stored ``params``. Registering it is one entry in
:data:`FAMILIES`; everything that used to branch on extractor names reads from here:

* ``--extractor`` names (:data:`NAMES`) and :func:`build` (the embed job's options -> extractor);
* :func:`from_params` (stored ``params`` -> the same extractor, by ``params["kind"]``) and
  :func:`rebuild` (an extractor -> version map -> extractors, refusing any whose version changed);
* feature views: :func:`parse_view` / :func:`split_views` (view name -> storage and column names);
* storage: :data:`PART_TABLES` (each family's part table and key, plus ``extractor_versions``),
  :func:`family_of` (extractor name -> family), :func:`version_meta` and :func:`stored_params`
  (what ``extractor_versions`` records about a version).

Presets are plain data, in the manner of perch-hoplite's ``zoo/model_configs.py``: a name, the
family that runs it and its config. The Perch v2 configs live here and nowhere else: ``perch_v2``
for ``--extractor custom`` (``--model-config perch_v2`` resolves through :func:`model_config`) and
``perch``, the same plus perch-hoplite's logit rescaling, for ``--extractor perch``. Defaults a family needs
without any preset (BirdNET's 1-s hop) stay its constructor's defaults, stated once in its module.

Importing this module imports every family but neither pyarrow nor duckdb (the Kaggle
inference path imports it); :mod:`embed.extractors` imports no family, so there is no import loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from embed.birdnet import BirdNet
from embed.classical import Classical
from embed.cnn import CnnModel
from embed.custom import CustomModel, ModelConfig, load_config
from embed.extractors import Extractor, View
from embed.perch import Perch
from featurestore.errors import BundleError, DataError, ModelError, StoreError, UserInputError

if TYPE_CHECKING:
    import os

    import pyarrow as pa

    from featurestore.store import FeatureStore

# ---------------------------------------------------------------------------- families and presets
FAMILIES: dict[str, type[Extractor]] = {cls.family: cls for cls in (BirdNet, Classical, CustomModel, CnnModel, Perch)}
NAMES: tuple[str, ...] = tuple(FAMILIES)   # --extractor choices, in help order


@dataclass(frozen=True)
class Preset:
    """A ready-made config of one family, as plain data (what the family's ``build`` is given)."""

    family: str
    config: dict = field(default_factory=dict)
    about: str = ""


_PERCH_V2 = {"name": "perch_v2", "sample_rate": 32000, "frame_seconds": 5.0, "hop_seconds": 5.0,
             "input_scaling": "peak_normalize", "target_peak": 0.25, "embedding_output": "embedding",
             "embedding_dim": 1536, "logits_output": "label", "logits_dim": 14795, "labels_file": "labels.csv"}

PRESETS: dict[str, Preset] = {
    "perch_v2": Preset(
        "custom", dict(_PERCH_V2),
        "Perch v2 (Google, 2025) as a user model (--extractor custom): 5-s frames at 32 kHz, each "
        "peak-normalised to 0.25 as perch-hoplite feeds it; 1,536-d embedding, 14,795 class logits"),
    # the perch family's one config (--extractor perch): perch_v2 plus the logit rescaling perch-hoplite applies
    # to Perch v2 by default (zoo/model_configs.py: logit_slope 0.97, logit_intercept -10.0; affine, so ranks
    # and AUC are unchanged, sigmoid probabilities shift). labels_file is looked up in a SavedModel's assets/.
    Perch.PRESET: Preset(
        "perch", {**_PERCH_V2, "logit_slope": 0.97, "logit_intercept": -10.0},
        "Perch v2 (--extractor perch): the official SavedModel folder, or its .onnx / .tflite form; logits "
        "mapped to the taxonomy (exact species, else genus max) and rescaled by 0.97 x - 10 as perch-hoplite"),
}


def presets_of(family: str) -> dict[str, dict]:
    """The presets of one family: name -> a fresh copy of its config."""
    return {name: dict(p.config) for name, p in PRESETS.items() if p.family == family}


def model_config(spec: str | os.PathLike | dict | ModelConfig) -> ModelConfig:
    """A user-model config (``--model-config``): a preset name (``perch_v2``), a JSON file, a dict or a config."""
    return load_config(spec, presets_of(CustomModel.family))


def family_of(extractor: str) -> type[Extractor]:
    """The family of an extractor name (``birdnet``, ``classical``, ``perch``, ``custom:<model>``)."""
    family, _, member = extractor.partition(":")
    cls = FAMILIES.get(family)
    if cls is None or bool(member) != cls.member_named:
        raise UserInputError(f"unknown extractor {extractor!r}; use {', '.join(_extractor_forms())}")
    return cls


def _extractor_forms() -> list[str]:
    return [f"{name}:<name>" if cls.member_named else name for name, cls in FAMILIES.items()]


# ---------------------------------------------------------------------------- building and rebuilding
def build(name: str, taxonomy: pa.Table | None, **options) -> Extractor:
    """The extractor ``--extractor name`` runs, from the embed job's options (hop_s, full_logits,
    batch_size, threads, cache_dir, model, cnn_model, perch_model, model_config, labels_file; each family uses its
    own)."""
    cls = FAMILIES.get(name)
    if cls is None:
        raise DataError(f"unknown extractor {name!r}; use {', '.join(NAMES)}")
    return cls.build(taxonomy, presets=presets_of(name), **options)


def from_params(params: Mapping, **runtime) -> Extractor:
    """Rebuild an extractor from its stored ``params`` (``extractor_versions.params``, ``extractors.json``).

    ``runtime`` passes options that do not change the outputs (threads, batch_size, cache_dir,
    model_path for a user or Perch model that moved); a family ignores those it does not use.
    """
    kind = params.get("kind")
    cls = FAMILIES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelError(f"unknown extractor kind {kind!r} in params")
    return cls.from_params(dict(params), **runtime)


def rebuild(params_by_name: dict[str, dict], versions: dict[str, str], *, owner: str,
            **runtime) -> list[Extractor]:
    """The extractors of ``versions`` (extractor name -> version), in name order, from their params.

    Raises :class:`BundleError` naming ``owner`` (e.g. ``"head 1a2b3c"``) when an extractor has no
    recorded params or its rebuilt version differs (a changed model file or extractor code), so
    features are never silently computed differently from the ones a model was trained on.
    """
    out = []
    for name, version in sorted(versions.items()):
        params = params_by_name.get(name)
        if params is None:
            raise BundleError(f"{owner}: no parameters recorded for extractor {name!r}")
        extractor = from_params(params, **runtime)
        if extractor.version != version:
            raise BundleError(f"{owner} was trained on {name} features version {version}, but this machine's "
                              f"{name} extractor is version {extractor.version} (model file or code changed); "
                              "re-embed and retrain, or restore the original model")
        out.append(extractor)
    return out


# ---------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewSpec:
    """The storage behind one (non-joined) view name, and how its columns are named."""

    view: str
    extractor: str          # extractor name: birdnet, classical, custom:<name>
    table: str
    column: str             # embedding | logits | features
    frame_level: bool
    declared: View
    member: str = ""

    def column_names(self, dim: int, meta: Mapping) -> list[str]:
        """Column names before pooling suffixes; ``meta`` holds logit_labels / feature_names."""
        return self.declared.column_names(dim, meta, self.member)


def parse_view(view: str) -> ViewSpec:
    """The storage behind one (non-joined) view name, from the views the families declare."""
    view = view.strip()
    stem, _, member = view.partition(":")
    for cls in FAMILIES.values():
        if bool(member) != cls.member_named:
            continue
        for declared in cls.views:
            if declared.stem == stem:
                extractor = f"{cls.family}:{member}" if member else cls.family
                return ViewSpec(view, extractor, cls.table, declared.column, cls.output == "frames", declared, member)
    forms = [v.view_name("<name>" if cls.member_named else "") for cls in FAMILIES.values() for v in cls.views]
    raise UserInputError(f"unknown feature view {view!r}: use {', '.join(forms)} (comma-join to concatenate)")


def split_views(view: str) -> list[ViewSpec]:
    """The views of a comma-joined view name, in order."""
    specs = [parse_view(v) for v in view.split(",") if v.strip()]
    if not specs:
        raise UserInputError("empty feature view")
    return specs


# ---------------------------------------------------------------------------- storage
VERSIONS_TABLE = "extractor_versions"
PART_TABLES: dict[str, list[str]] = {**{cls.table: cls.part_keys() for cls in FAMILIES.values()},
                                     VERSIONS_TABLE: ["extractor_version"]}


def version_meta(store: FeatureStore, version: str) -> dict:
    """The ``extractor_versions`` row of a version (latest written, params decoded), or {} when absent."""
    if not store.part_files(VERSIONS_TABLE):
        return {}
    glob = store.part_glob(VERSIONS_TABLE).replace("'", "''")
    rows = store.sql(f"SELECT * FROM read_parquet('{glob}', union_by_name = true) WHERE extractor_version = ? "
                     "ORDER BY written_at DESC LIMIT 1", [version]).to_pylist()
    if not rows:
        return {}
    meta = rows[0]
    meta["params"] = json.loads(meta.get("params") or "{}")
    return meta


def stored_params(store: FeatureStore, versions: Mapping[str, str]) -> dict[str, dict]:
    """The stored params of each extractor version (extractor name -> params, in ``versions`` order),
    i.e. what :func:`rebuild` needs; :class:`StoreError` when a version is not in ``extractor_versions``."""
    out = {}
    for name, version in versions.items():
        meta = version_meta(store, version)
        if not meta:
            raise StoreError(f"extractor version {version} has no {VERSIONS_TABLE} row in {store.root}")
        out[name] = meta["params"]
    return out
