"""Window features for training and inference: read them from the store, or embed one file in memory.

Views (comma-join them to concatenate, e.g. ``"birdnet,classical"``), as the registered families
declare them (:attr:`embed.extractors.Extractor.views`, parsed by :func:`embed.registry.parse_view`):

==========================  ===================  ==========================================
view                        part table           columns
==========================  ===================  ==========================================
``birdnet``                 birdnet_frames       ``birdnet:<i>`` (1,024, pooled frames)
``birdnet_logits``          birdnet_frames       ``birdnet_logit:<primary_label>``
``classical``               classical_windows    ``classical:<statistic>`` (815)
``custom:<name>``           custom_frames        ``custom:<name>:<i>``
``custom_logits:<name>``    custom_frames        ``custom_logit:<name>:<label>``
==========================  ===================  ==========================================

Frame views are pooled per window (``mean``, ``max`` or ``meanmax`` = both, the max half named
``<column>@max``). :func:`load_window_features` (store) and :func:`embed_file` (in memory, for the
Kaggle notebook) share :func:`pool_frames` and the float16 rounding of embeddings, so the same
file gives bit-identical features on both paths.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from embed.audio import Audio
from embed.extractors import Extractor, FrameOutput, WindowOutput, compute_all
from embed.registry import ViewSpec, family_of, rebuild, split_views, stored_params, version_meta
from embed.registry import parse_view as parse_view  # re-exported: models.frame checks view names here
from featurestore.errors import StoreError, UserInputError

if TYPE_CHECKING:  # the in-memory path (embed_file, the Kaggle notebook) imports no pyarrow or duckdb
    import pyarrow as pa

    from featurestore.store import FeatureStore

POOLINGS = ("mean", "max", "meanmax")


def pooled_names(names: list[str], pooling: str, frame_level: bool) -> list[str]:
    if frame_level and pooling == "meanmax":
        return names + [f"{n}@max" for n in names]
    return names


def pool_frames(window_index: np.ndarray, values: np.ndarray, pooling: str) -> np.ndarray:
    """Pool rows of ``values`` that share a (contiguous, sorted) ``window_index``: one row per window.

    The mean accumulates in float64 and is returned as float32; the same call serves the store
    and the in-memory path, so both give identical numbers.
    """
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    values = np.asarray(values, dtype=np.float32)
    if len(values) == 0:
        return np.zeros((0, values.shape[1] * (2 if pooling == "meanmax" else 1)), np.float32)
    keys = np.asarray(window_index)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    out = []
    if pooling in ("mean", "meanmax"):
        counts = np.diff(np.r_[starts, len(values)])[:, None]
        out.append((np.add.reduceat(values.astype(np.float64), starts, axis=0) / counts).astype(np.float32))
    if pooling in ("max", "meanmax"):
        out.append(np.maximum.reduceat(values, starts, axis=0))
    return out[0] if len(out) == 1 else np.hstack(out)


# ---------------------------------------------------------------------------- store path
def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _parts_source(store: FeatureStore, table: str) -> str | None:
    if not store.part_files(table):
        return None
    return f"read_parquet({_sql_str(store.part_glob(table))}, union_by_name = true)"


def stored_versions(store: FeatureStore, extractor: str) -> list[tuple[str, object, int]]:
    """(extractor_version, last written_at, rows) of an extractor's stored rows, newest first."""
    source = _parts_source(store, family_of(extractor).table)
    if source is None:
        return []
    return store.rows(f"SELECT extractor_version, max(written_at), count(*) FROM {source} WHERE extractor = ? "
                      "GROUP BY 1 ORDER BY 2 DESC, 1", [extractor])


def resolve_version(store: FeatureStore, extractor: str, versions: dict | None = None) -> str:
    """The pinned version (``versions[extractor]``) or the most recently written one."""
    if versions and versions.get(extractor):
        return versions[extractor]
    found = stored_versions(store, extractor)
    if not found:
        raise StoreError(f"no {extractor} features in the store {store.root}; run python -m pipelines.embed "
                         f"--store {store.root} --extractor {family_of(extractor).family}")
    return found[0][0]


def _list_to_matrix(column: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    if arr.null_count:
        raise StoreError(f"{what}: {arr.null_count} row(s) have no values")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise StoreError(f"{what}: rows of different lengths ({lengths.min()}..{lengths.max()})")
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), int(lengths[0]))


def _load_view(store: FeatureStore, spec: ViewSpec, version: str, pooling: str,
               wanted: str | None) -> tuple[list[str], np.ndarray, list[str]]:
    source = _parts_source(store, spec.table)
    if source is None:
        raise StoreError(f"no {spec.table} parts in the store {store.root}; run python -m pipelines.embed")
    keys = "window_id, frame_index" if spec.frame_level else "window_id"
    filter_ids = f" AND window_id IN (SELECT window_id FROM {wanted})" if wanted else ""
    query = (f"SELECT window_id, {spec.column} AS v FROM (SELECT window_id, "
             f"{'frame_index, ' if spec.frame_level else ''}{spec.column}, row_number() OVER "
             f"(PARTITION BY {keys} ORDER BY written_at DESC) AS _rank FROM {source} "
             f"WHERE extractor_version = ?{filter_ids}) WHERE _rank = 1 ORDER BY {keys}")
    table = store.sql(query, [version])
    ids = table.column("window_id").to_numpy(zero_copy_only=False)
    values = _list_to_matrix(table.column("v"), f"{spec.table}.{spec.column} ({version})")
    if spec.frame_level:
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
        X = pool_frames(ids, values, pooling)
        window_ids = ids[starts].tolist()
    else:
        X, window_ids = values, ids.tolist()
    meta = version_meta(store, version)
    names = pooled_names(spec.column_names(values.shape[1], meta), pooling, spec.frame_level)
    return window_ids, X, names


def load_window_features(store: FeatureStore, view: str = "birdnet", pooling: str = "mean",
                         window_ids: Sequence[str] | None = None, versions: dict | None = None,
                         ) -> tuple[list[str], np.ndarray, list[str], dict[str, str]]:
    """Per-window features of ``view`` from the store.

    Returns ``(window_ids, X float32 [n, d], feature_names, versions)``; ``versions`` maps each
    extractor, and nothing else, to the extractor_version read (pin one with
    ``versions={"birdnet": ...}``; default: the most recently written). The pooling is the
    caller's argument (the training frame and the bundle carry it). Windows are sorted by id, or
    follow ``window_ids`` when given; a window missing from any joined view is left out.
    """
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    specs = split_views(view)
    used: dict[str, str] = {}
    wanted = None
    if window_ids is not None:
        wanted = f"_embed_wanted_{uuid.uuid4().hex[:8]}"
        import pyarrow as pa

        store.con.register(wanted, pa.table({"window_id": pa.array(list(window_ids), pa.string())}))
    try:
        loaded = []
        for spec in specs:
            version = used.setdefault(spec.extractor, resolve_version(store, spec.extractor, versions))
            loaded.append(_load_view(store, spec, version, pooling, wanted))
    finally:
        if wanted:
            store.con.unregister(wanted)
    order = list(window_ids) if window_ids is not None else sorted(loaded[0][0])
    present = set(order)
    for ids, _, _ in loaded:
        present &= set(ids)
    order = [w for w in dict.fromkeys(order) if w in present]
    blocks, names = [], []
    for ids, X, cols in loaded:
        position = {w: i for i, w in enumerate(ids)}
        blocks.append(X[[position[w] for w in order]] if order else np.zeros((0, X.shape[1]), np.float32))
        names += cols
    X = np.hstack(blocks).astype(np.float32, copy=False) if blocks else np.zeros((0, 0), np.float32)
    return order, X, names, used


def extractors_from_store(store: FeatureStore, versions: Mapping[str, str], **runtime) -> list[Extractor]:
    """Rebuild the extractors of ``versions`` (extractor name -> version, as returned by
    :func:`load_window_features`) from their stored params, in name order, e.g. to embed test audio
    exactly like the training features. ``runtime``: threads, batch_size, cache_dir, model_path (see
    :func:`embed.registry.from_params`). Raises :class:`~featurestore.errors.StoreError` for a
    version not in ``extractor_versions`` and :class:`~featurestore.errors.BundleError` when this
    machine rebuilds a different version (see :func:`embed.registry.rebuild`)."""
    return rebuild(stored_params(store, versions), dict(versions), owner=f"a model on the features of {store.root}",
                   **runtime)


# ---------------------------------------------------------------------------- in-memory path
def default_views(extractor: Extractor) -> list[str]:
    """The views an extractor produces (:meth:`embed.extractors.Extractor.view_names`)."""
    return extractor.view_names()


def _view_matrix(spec: ViewSpec, extractor: Extractor, out: FrameOutput | WindowOutput,
                 pooling: str) -> tuple[np.ndarray, list[str]]:
    meta = extractor.column_labels()
    if isinstance(out, WindowOutput):
        X = out.features
    else:
        values = out.embedding if spec.column == "embedding" else out.logits
        if values is None:
            raise UserInputError(f"{extractor.name} produced no logits, so view {spec.view!r} is empty")
        X = pool_frames(out.grid.window_index, values.astype(np.float32), pooling)
    return X, pooled_names(spec.column_names(X.shape[1] // (2 if spec.frame_level and pooling == "meanmax" else 1),
                                            meta), pooling, spec.frame_level)


def embed_file_views(path: str | os.PathLike, extractors: Sequence[Extractor],
                     requests: Sequence[tuple[str, str]], *, soundscape: bool = True,
                     window_starts: Sequence[float] | None = None,
                     ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """Decode and embed one file ONCE, then build every requested ``(view, pooling)``:
    ``{(view, pooling): (window_starts, X float32 [windows, d], feature names)}``.

    Several heads (a stack's base heads) can each read their own view and pooling from one pass of
    the extractors. Raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded.
    """
    from featurestore.windows import window_starts as grid

    for _, pooling in requests:
        if pooling not in POOLINGS:
            raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    audio = Audio.open(path)   # a long recording is streamed, not decoded whole
    starts = list(window_starts) if window_starts is not None else grid(audio.duration_s, soundscape)
    results = compute_all(audio, [(ex, starts) for ex in extractors])
    for out in results:
        if isinstance(out, BaseException):
            raise out
    return build_views(extractors, {ex.name: out for ex, out in zip(extractors, results, strict=True)}, starts,
                       requests)


def build_views(extractors: Sequence[Extractor], outputs: Mapping[str, FrameOutput | WindowOutput],
                starts: Sequence[float], requests: Sequence[tuple[str, str]],
                ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """Every requested ``(view, pooling)`` from the extractors' outputs for one file (what
    :func:`embed_file_views` returns; a caller that ran the extractors itself, e.g. to time them,
    builds the views here without running them again)."""
    by_name = {ex.name: ex for ex in extractors}
    result = {}
    for view, pooling in dict.fromkeys(requests):
        blocks, names = [], []
        for spec in split_views(view):
            if spec.extractor not in by_name:
                raise UserInputError(f"view {spec.view!r} needs the {spec.extractor} extractor")
            X, cols = _view_matrix(spec, by_name[spec.extractor], outputs[spec.extractor], pooling)
            blocks.append(X)
            names += cols
        result[(view, pooling)] = (np.asarray(starts, dtype=np.float64),
                                   np.hstack(blocks).astype(np.float32, copy=False), names)
    return result


def embed_file_with_names(path: str | os.PathLike, extractors: Sequence[Extractor], *, soundscape: bool = True,
                          window_starts: Sequence[float] | None = None, views: Sequence[str] | None = None,
                          pooling: str = "mean") -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Like :func:`embed_file`, with the feature names of each view as a third element."""
    views = list(views) if views is not None else [v for ex in extractors for v in default_views(ex)]
    full = embed_file_views(path, extractors, [(v, pooling) for v in views], soundscape=soundscape,
                            window_starts=window_starts)
    return {view: full[(view, pooling)] for view in views}


def embed_file(path: str | os.PathLike, extractors: Sequence[Extractor], *, soundscape: bool = True,
               window_starts: Sequence[float] | None = None, views: Sequence[str] | None = None,
               pooling: str = "mean") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embed one audio file without a store: ``{view: (window_starts, X float32 [windows, d])}``.

    Windows follow the store's grid (:func:`featurestore.windows.window_starts`; ``soundscape``
    selects the 12-window soundscape rule or the focal-clip rule) unless ``window_starts`` is
    given. ``views`` defaults to every view the extractors produce; comma-joined views concatenate.
    Raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded.
    """
    full = embed_file_with_names(path, extractors, soundscape=soundscape, window_starts=window_starts,
                                 views=views, pooling=pooling)
    return {view: (starts, X) for view, (starts, X, _) in full.items()}
