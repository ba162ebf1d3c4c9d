"""Synthetic frame embeddings with class signal, written through the embed job's own writers.

What tests and benches use to exercise heads, stacks, pseudo-labels and the store without decoding or
embedding any audio (perch-hoplite's ``make_db`` idea): every window of a store's ``windows`` table gets
``frames_per_window`` frames of a ``dim``-d float16 embedding = the sum of its labels' class directions
(random unit vectors, scaled by ``signal``) + standard normal noise. Rows are made by
:func:`embed.job.frame_rows`, grouped into parts by file, appended with :meth:`FeatureStore.append_part`
and described by one :func:`embed.job.version_row` - exactly the tables, columns, keys and catalog rows
the real extractor writes, so every reader (``load_window_features``, training frames, SQL) sees
ordinary features. The version is ``<name>-synthetic-<hash of the parameters>``: such features never mix
with a real model's, and a head trained on them says so in its config.

Guarantees: deterministic for a seed (the same bytes per window whatever the part grouping); windows
already stored for the version are skipped (a re-run writes nothing).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from embed.audio import FrameGrid
from embed.extractors import FrameModel, FrameOutput, params_hash
from embed.job import frame_rows, version_row
from embed.registry import FAMILIES, PART_TABLES, VERSIONS_TABLE
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore, utc_now
from featurestore.windows import WINDOW_LABEL_PARTS, WINDOW_SECONDS, file_of, window_labels_sql


@dataclass(frozen=True)
class SyntheticParams:
    name: str = "birdnet"          # the extractor family whose table and views the features fill
    dim: int = 32
    frames_per_window: int = 1
    signal: float = 1.5            # length of a class direction, against unit noise per dimension
    seed: int = 0
    files_per_part: int = 200

    def check(self) -> SyntheticParams:
        frame_families = sorted(n for n, c in FAMILIES.items() if issubclass(c, FrameModel))
        if self.name not in frame_families:
            raise UserInputError(f"synthetic features: {self.name!r} is not a frame extractor family; "
                                 f"choose from {frame_families}")
        if self.dim < 1 or self.frames_per_window < 1 or self.files_per_part < 1 or self.signal < 0:
            raise UserInputError("synthetic features: dim, frames_per_window, files_per_part >= 1 and signal >= 0")
        return self


@dataclass
class SyntheticExtractor:
    """What :func:`embed.job.frame_rows` and :func:`embed.job.version_row` read from an extractor."""

    p: SyntheticParams
    table: str = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.table = FAMILIES[self.p.name].table
        self.version = f"{self.p.name}-synthetic-{params_hash(self.params())}"

    @property
    def name(self) -> str:
        return self.p.name

    def params(self) -> dict:
        """What the features depend on (the part grouping does not change a window's bytes)."""
        made = {k: v for k, v in asdict(self.p).items() if k != "files_per_part"}
        return {"kind": "synthetic", **made, "embedding_dim": self.p.dim}

    def logit_labels(self) -> list[str]:
        return []

    def feature_names(self) -> list[str]:
        return []


def class_directions(class_names: list[str], dim: int, signal: float, seed: int) -> dict[str, np.ndarray]:
    """One random direction of length ``signal`` per class (seeded by the class order)."""
    rng = np.random.default_rng([seed, 1])
    D = rng.standard_normal((len(class_names), dim))
    D *= signal / np.linalg.norm(D, axis=1, keepdims=True)
    return dict(zip(class_names, D, strict=True))


def window_embedding(window: str, labels: list[str], directions: dict[str, np.ndarray], p: SyntheticParams
                     ) -> np.ndarray:
    """(frames_per_window, dim) float32 of one window: its labels' directions + noise seeded by the window id."""
    # seeded by a hash of the whole id: windows at the same second of different files share id suffixes
    key = int.from_bytes(hashlib.blake2b(window.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng([p.seed, key])
    signal = np.sum([directions[c] for c in labels if c in directions], axis=0) if labels else np.zeros(p.dim)
    return (signal[None, :] + rng.standard_normal((p.frames_per_window, p.dim))).astype(np.float32)


def write_synthetic_features(store_dir: str | os.PathLike, params: SyntheticParams | None = None) -> int:
    """Write synthetic features for every window of the store not yet stored at this version; returns the
    number of windows written. The store must be ingested (``windows`` and the label tables)."""
    p = (params or SyntheticParams()).check()
    ex = SyntheticExtractor(p)
    with FeatureStore.open(store_dir, create=False) as store:
        for name, keys in PART_TABLES.items():
            store.register_part_table(name, keys)
        done: set[str] = set()
        if store.part_files(ex.table):
            glob = store.part_glob(ex.table).replace("'", "''")
            done = {r[0] for r in store.rows(f"SELECT DISTINCT window_id FROM read_parquet('{glob}') "
                                             "WHERE extractor_version = ?", [ex.version])}
        classes = [r[0] for r in store.rows("SELECT primary_label FROM taxonomy ORDER BY class_index")]
        query = window_labels_sql([t for t in WINDOW_LABEL_PARTS if store.has_table(t)])
        labels = {w: list(ls) for w, _, ls in store.rows(query)} if query else {}
        windows = [r[0] for r in store.rows("SELECT window_id FROM windows ORDER BY window_id")]
        todo = [w for w in windows if w not in done]
        if not todo:
            return 0
        if not done:
            store.append_part(VERSIONS_TABLE, version_row(ex))
        directions = class_directions(classes, p.dim, p.signal, p.seed)
        by_file: dict[str, list[str]] = {}
        for w in todo:
            by_file.setdefault(file_of(w), []).append(w)
        files = sorted(by_file)
        written_at = utc_now()
        for i in range(0, len(files), p.files_per_part):
            pieces = []
            for f in files[i:i + p.files_per_part]:
                ids = by_file[f]
                emb = np.vstack([window_embedding(w, labels.get(w, []), directions, p) for w in ids])
                pieces.append(frame_rows(ex, FrameOutput(_grid(ids, p.frames_per_window), emb, None), ids, written_at))
            store.append_part(ex.table, pa.concat_tables(pieces))
        store.refresh_part_views()
    return len(todo)


def _grid(ids: list[str], frames: int) -> FrameGrid:
    """``frames`` full frames per window, evenly spaced inside it (what an extractor's grid records)."""
    starts = np.array([float(w.rpartition("@")[2]) for w in ids])
    offsets = np.arange(frames) * (WINDOW_SECONDS / frames)
    n = len(ids) * frames
    return FrameGrid(np.repeat(np.arange(len(ids), dtype=np.int32), frames),
                     np.tile(np.arange(frames, dtype=np.int16), len(ids)),
                     (starts[:, None] + offsets[None, :]).ravel(), np.zeros(n, np.int64), np.ones(n, np.float32))
