"""Near-duplicate recordings: cosine similarity of per-file BirdNET embeddings.

Exact copies are caught by the PCM hash (``sql/leakage/duplicate_audio.sql``); this catches
re-encodes, trims and gain changes of one recording filed twice. Each file is represented by the
mean of its L2-normalised window embeddings (re-normalised), so the all-pairs search is
files x files rather than windows x windows; a short copy inside a long recording can hide in the
mean and is not guaranteed to be found.

The embeddings come from the embedding stage (``embed.features.load_window_features``); when that
module or its table is absent, :func:`load_file_embeddings` says why and the check is skipped.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import numpy as np

from featurestore.store import FeatureStore

NEAR_DUPLICATE_COSINE = 0.99
FEATURE_VIEW = "birdnet"   # the embedding stage's name for BirdNET frame embeddings (mean-pooled per window)


def file_of(window_id: str) -> str:
    """``train_audio/x/y.ogg@5`` → ``train_audio/x/y.ogg``."""
    return window_id.rsplit("@", 1)[0]


def file_means(window_ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-file unit vectors: mean of the L2-normalised window vectors of each file, normalised."""
    vectors = np.asarray(vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows: dict[str, list[int]] = defaultdict(list)
    for i, wid in enumerate(window_ids):
        rows[file_of(wid)].append(i)
    files = sorted(rows)
    means = np.stack([unit[rows[f]].mean(axis=0) for f in files]) if files else np.zeros((0, vectors.shape[1]))
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return files, means.astype(np.float32)


def near_duplicate_pairs(files: list[str], unit_vectors: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE,
                         chunk: int = 2048) -> list[tuple[str, str, float]]:
    """Pairs of different files with cosine >= ``threshold`` (vectors already unit length), best first."""
    x = np.asarray(unit_vectors, dtype=np.float32)
    pairs = []
    for start in range(0, len(files), chunk):
        sims = x[start:start + chunk] @ x.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c > i:
                pairs.append((files[i], files[c], float(sims[r, c])))
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def load_file_embeddings(store: FeatureStore) -> tuple[list[str], np.ndarray] | str:
    """Per-file BirdNET embeddings from the embedding stage, or a string saying why they are absent."""
    try:
        from embed.features import load_window_features
    except ImportError:
        return "the embedding module (embed.features) is not installed in this checkout"
    try:
        params = inspect.signature(load_window_features).parameters
        kwargs = {"pooling": "mean"} if "pooling" in params else {}
        args = (store, FEATURE_VIEW) if len(params) >= 2 else (store,)
        loaded = load_window_features(*args, **kwargs)
    except Exception as exc:  # absent table or feature view: the check is optional, say why
        return f"no BirdNET embeddings in the store ({type(exc).__name__}: {exc})"
    window_ids, vectors = _unpack(loaded)
    if window_ids is None or len(window_ids) == 0:
        return "the BirdNET embedding table is empty"
    return file_means(list(window_ids), vectors)


def _unpack(loaded) -> tuple[list[str] | None, np.ndarray | None]:
    """Accept ``(window_ids, matrix, ...)``, an object with those attributes, or a mapping."""
    if isinstance(loaded, tuple) and len(loaded) >= 2:
        return list(loaded[0]), np.asarray(loaded[1])
    for ids_name, x_name in (("window_ids", "X"), ("window_ids", "features"), ("window_ids", "matrix")):
        if hasattr(loaded, ids_name) and hasattr(loaded, x_name):
            return list(getattr(loaded, ids_name)), np.asarray(getattr(loaded, x_name))
    if isinstance(loaded, dict) and loaded:
        ids = sorted(loaded)
        return ids, np.stack([np.asarray(loaded[i]) for i in ids])
    return None, None
