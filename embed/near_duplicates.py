"""Near-duplicate recordings: cosine similarity of per-file BirdNET embeddings.

Exact copies are caught by the PCM hash (``sql/leakage/duplicate_audio.sql``); this catches
re-encodes, trims and gain changes of one recording filed twice. Each file is represented by the
mean of its L2-normalised window embeddings (re-normalised), so the all-pairs search is
files x files rather than windows x windows; a short copy inside a long recording can hide in the
mean and is not guaranteed to be found.

The embeddings are the store's mean-pooled ``birdnet`` view (:func:`embed.features.load_window_features`);
when the store has none yet, :func:`load_file_embeddings` says why and the check is skipped.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from embed.features import load_window_features
from featurestore.windows import file_of

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

NEAR_DUPLICATE_COSINE = 0.99
FEATURE_VIEW = "birdnet"   # BirdNET frame embeddings, mean-pooled per window


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
    """Per-file BirdNET embeddings (:func:`file_means` of the stored windows), or a string saying why
    there are none (no BirdNET features in the store yet, or an empty table)."""
    try:
        window_ids, vectors, _, _ = load_window_features(store, FEATURE_VIEW, pooling="mean")
    except Exception as exc:  # absent table or feature view: the check is optional, say why
        return f"no BirdNET embeddings in the store ({type(exc).__name__}: {exc})"
    if len(window_ids) == 0:
        return "the BirdNET embedding table is empty"
    return file_means(list(window_ids), vectors)
