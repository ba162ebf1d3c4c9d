"""Level-2 inputs: the OOF tables of several heads aligned by window id, and features built on them.

:func:`load_inputs` reads ``STORE/oof/<head_id>.parquet`` of each head (written by
``pipelines.train``), the labels, taxon groups, folds, and each soundscape's site and hour, and
optionally a stored zero-shot logit view (e.g. ``birdnet_logits``), into one :class:`StackInputs`.
:func:`align_oof` does the same from in-memory tables (no store).

Guarantees:

* every head covers exactly the same windows, with the same fold for each window, and exactly the
  taxonomy's class columns; otherwise :class:`~featurestore.errors.DataError` names the head and a
  window (or the classes) that disagree. A head id without an OOF file is a
  :class:`~featurestore.errors.UserInputError` listing the heads present;
* rows are sorted by window id, classes are in taxonomy order; ``P[h]`` is head ``h``'s OOF
  probability exactly as stored (float32);
* a zero-shot source gives ``sigmoid(logit)`` for the classes it has a logit column for (matched the
  way ``models.heads.ZeroShotHead`` matches: column ``<prefix><primary_label>``); its other classes
  are marked unavailable in ``available`` (their ``P`` is 0.5) and blends and the ridge ignore them.

Features (:func:`base_features`) are per (window, class), in logit space: each head's logit, the
same for the previous and next window of the same file (a missing neighbour or a file edge repeats
the window's own value), and the file's max / mean / top-k mean per class. Site and hour priors
(:func:`prior_features`) are computed from the rows a fold model trains on only, so the fold-k
model never sees a fold-k label through them. :func:`head_correlation` is the diversity matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import DataError, StoreError, UserInputError
from featurestore.windows import SOUNDSCAPE, WINDOW_LABEL_PARTS, file_of, window_labels_sql
from stack.post import FileLayout, logit, sigmoid

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.store import FeatureStore

OOF_DIR = "oof"                     # STORE/oof/<head_id>.parquet, as models.training writes it
META_COLUMNS = ("window_id", "head_id", "fold", "source")
FILE_STATS = ("max", "mean", "topk")


@dataclass
class StackInputs:
    """Aligned level-2 inputs: ``H`` sources (heads, then zero-shot views) x ``n`` windows x ``C`` classes.

    Treat as immutable: features and per-fold sums are cached on the object (``subset`` / ``select``
    or a new object for changed arrays)."""

    window_ids: np.ndarray               # (n,) str, sorted
    heads: tuple[str, ...]               # head ids, then zero-shot source names
    class_names: list[str]               # taxonomy order
    class_groups: np.ndarray             # (C,) taxon group (taxonomy class_name: Aves, Amphibia, ...)
    P: np.ndarray                        # (H, n, C) float32 OOF probabilities
    available: np.ndarray                # (H, C) bool: the source predicts this class
    Y: np.ndarray                        # (n, C) float32 0/1 labels
    folds: np.ndarray                    # (n,) int64, -1 = in no fold
    source: np.ndarray                   # (n,) str: train_audio | train_soundscapes
    site: np.ndarray                     # (n,) object: soundscape site, None for focal windows
    hour: np.ndarray                     # (n,) int64: soundscape hour, -1 when unknown
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.window_ids)

    @property
    def logits(self) -> np.ndarray:
        """``logit(P)`` in float32 (probabilities clipped to [1e-9, 1 - 1e-9]), computed once."""
        if "logits" not in self._cache:
            self._cache["logits"] = logit(self.P).astype(np.float32)
        return self._cache["logits"]

    @property
    def layout(self) -> FileLayout:
        """Files and time neighbours of the rows (one block per file)."""
        if "layout" not in self._cache:
            self._cache["layout"] = FileLayout(self.window_ids)
        return self._cache["layout"]

    def fold_layout(self) -> FileLayout:
        """Like :attr:`layout` but blocks never span two folds (what post-processing in CV uses)."""
        if "fold_layout" not in self._cache:
            self._cache["fold_layout"] = FileLayout(self.window_ids, groups=self.folds)
        return self._cache["fold_layout"]

    def head_index(self, head: str) -> int:
        if head not in self.heads:
            raise UserInputError(f"unknown input {head!r}; the stack inputs are {list(self.heads)}")
        return self.heads.index(head)

    def subset(self, rows: np.ndarray) -> StackInputs:
        """The same sources and classes on the rows of boolean mask ``rows`` (file features are then
        computed over the kept windows only)."""
        m = np.asarray(rows, bool)
        return StackInputs(self.window_ids[m], self.heads, self.class_names, self.class_groups, self.P[:, m],
                           self.available, self.Y[m], self.folds[m], self.source[m], self.site[m], self.hour[m])

    def select(self, heads: Sequence[str]) -> StackInputs:
        """The same windows with only ``heads`` (in that order)."""
        idx = [self.head_index(h) for h in heads]
        return StackInputs(self.window_ids, tuple(heads), self.class_names, self.class_groups, self.P[idx],
                           self.available[idx], self.Y, self.folds, self.source, self.site, self.hour)


# ---------------------------------------------------------------------------- alignment
def _column(table: pa.Table, name: str, head: str) -> list:
    if name not in table.column_names:
        raise DataError(f"head {head}: OOF table has no {name!r} column")
    return table.column(name).to_pylist()


def align_oof(tables: Mapping[str, pa.Table], class_names: Sequence[str], class_groups: Sequence[str],
              labels: Mapping[str, Sequence[str]], *, file_meta: Mapping[str, tuple[str | None, int | None]] | None = None,
              zero_shot: Mapping[str, tuple[Sequence[str], np.ndarray, Sequence[str]]] | None = None) -> StackInputs:
    """Align OOF tables (columns ``window_id, fold, [head_id, source,] <one float column per class>``).

    ``labels`` maps each window id to its labels; ``file_meta`` maps a file key
    (``<source>/<filename>``) to ``(site, hour)``; ``zero_shot`` maps a source name to
    ``(window_ids, logits (n, k), label of each logit column)``. See the module doc for the guarantees.
    """
    if not tables:
        raise UserInputError("no heads to stack: give at least one head id")
    classes = list(class_names)
    if len(set(classes)) != len(classes):
        raise DataError("the taxonomy has duplicate class names")
    if len(class_groups) != len(classes):
        raise DataError(f"{len(class_groups)} taxon groups for {len(classes)} classes")
    ref_head, ref_ids, ref_folds = None, None, None
    probs: list[np.ndarray] = []
    for head, table in tables.items():
        ids = [str(w) for w in _column(table, "window_id", head)]
        folds = np.asarray(_column(table, "fold", head), dtype=np.int64)
        if len(set(ids)) != len(ids):
            dup = next(w for w, c in zip(*np.unique(ids, return_counts=True), strict=True) if c > 1)
            raise DataError(f"head {head}: window {dup} appears more than once in its OOF table")
        present = [c for c in table.column_names if c not in META_COLUMNS]
        missing, extra = sorted(set(classes) - set(present)), sorted(set(present) - set(classes))
        if missing or extra:
            raise DataError(f"head {head}: OOF class columns differ from the taxonomy: missing {missing[:10]}, "
                            f"unknown {extra[:10]} (was it trained on another store?)")
        order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
        ids_sorted = np.asarray(ids, dtype=object)[order]
        folds = folds[order]
        if ref_ids is None:
            ref_head, ref_ids, ref_folds = head, ids_sorted, folds
        else:
            _check_same_windows(ref_head, ref_ids, head, ids_sorted)
            differ = np.flatnonzero(folds != ref_folds)
            if differ.size:
                w = ref_ids[differ[0]]
                raise DataError(f"window {w} is in fold {ref_folds[differ[0]]} for head {ref_head} but fold "
                                f"{folds[differ[0]]} for head {head} ({differ.size} window(s) disagree): the heads "
                                "were trained on different fold versions; retrain them on one")
        P = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in classes]).astype(np.float32)
        P = P[order]
        bad = ~np.isfinite(P)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"head {head}: OOF value for window {ids_sorted[r]}, class {classes[c]} is not finite")
        probs.append(P)
    assert ref_ids is not None
    n, C = len(ref_ids), len(classes)
    available = [np.ones(C, bool) for _ in probs]
    names = list(tables)
    position = {w: i for i, w in enumerate(ref_ids.tolist())}
    for name, (z_ids, Z, z_labels) in (zero_shot or {}).items():
        if name in names:
            raise UserInputError(f"zero-shot source {name!r} has the name of a head")
        Z = np.asarray(Z, dtype=np.float64)
        have = {str(w): i for i, w in enumerate(z_ids)}
        lacking = [w for w in ref_ids.tolist() if w not in have]
        if lacking:
            raise DataError(f"zero-shot source {name}: no logits for window {lacking[0]} ({len(lacking)} of {n} "
                            "windows lack them); run pipelines.embed for those files")
        col_of = {str(lab): j for j, lab in enumerate(z_labels)}
        matched = [(c, col_of[lab]) for c, lab in enumerate(classes) if lab in col_of]
        if not matched:
            raise DataError(f"zero-shot source {name}: none of its logit columns matches a taxonomy class")
        rows = np.array([have[w] for w in ref_ids.tolist()])
        P = np.full((n, C), 0.5, np.float32)
        avail = np.zeros(C, bool)
        for c, j in matched:
            P[:, c] = sigmoid(Z[rows, j]).astype(np.float32)
            avail[c] = True
        probs.append(P)
        available.append(avail)
        names.append(name)
    Y = np.zeros((n, C), np.float32)
    index = {c: i for i, c in enumerate(classes)}
    for w, r in position.items():
        if w not in labels:
            raise DataError(f"window {w} has OOF predictions but no labels in the store (window_labels)")
        for lab in labels[w]:
            if lab not in index:
                raise DataError(f"window {w}: label {lab!r} is not a taxonomy class")
            Y[r, index[lab]] = 1.0
    meta = file_meta or {}
    files = [file_of(w) for w in ref_ids.tolist()]
    site = np.array([meta.get(f, (None, None))[0] for f in files], dtype=object)
    hour = np.array([-1 if meta.get(f, (None, None))[1] is None else int(meta[f][1]) for f in files], dtype=np.int64)
    source = np.array([f.split("/", 1)[0] for f in files], dtype=object)
    return StackInputs(ref_ids.astype(str), tuple(names), classes, np.asarray(class_groups, dtype=object),
                       np.stack(probs), np.stack(available), Y, ref_folds, source, site, hour)


def _check_same_windows(ref_head: str, ref_ids: np.ndarray, head: str, ids: np.ndarray) -> None:
    if len(ref_ids) == len(ids) and (ref_ids == ids).all():
        return
    a, b = set(ref_ids.tolist()), set(ids.tolist())
    only_ref, only_head = sorted(a - b), sorted(b - a)
    if only_ref:
        raise DataError(f"head {head} has no OOF row for window {only_ref[0]} ({len(only_ref)} window(s) of head "
                        f"{ref_head} missing): heads trained on different data or feature coverage cannot be stacked")
    raise DataError(f"head {ref_head} has no OOF row for window {only_head[0]} ({len(only_head)} window(s) of head "
                    f"{head} missing): heads trained on different data or feature coverage cannot be stacked")


# ---------------------------------------------------------------------------- from a store
def available_heads(store_dir: str | Path) -> list[str]:
    """Head ids with an OOF table in the store."""
    return sorted(p.stem for p in (Path(store_dir) / OOF_DIR).glob("*.parquet"))


def load_inputs(store_dir: str | Path, heads: Sequence[str], *, zero_shot: Sequence[str] = (),
                zero_shot_pooling: str = "mean", focal: bool = False) -> StackInputs:
    """:class:`StackInputs` of ``heads`` (head ids) from a store, plus the zero-shot logit views in
    ``zero_shot`` (e.g. ``("birdnet_logits",)``), read at the extractor version stored most recently.

    Only the labelled soundscape windows are loaded (what level-2 models learn from and are scored
    on) unless ``focal``, which adds every focal window of the OOF tables (large on the real data:
    ~100k windows x classes x heads). Opens the store read-only; writes nothing.
    """
    import pyarrow.parquet as pq

    from featurestore.store import FeatureStore

    root = Path(store_dir)
    if not heads:
        raise UserInputError("no heads to stack: give at least one head id")
    if len(set(heads)) != len(heads):
        raise UserInputError(f"head ids repeat: {list(heads)}")
    present = available_heads(root)
    unknown = [h for h in heads if h not in present]
    if unknown:
        raise UserInputError(f"no OOF table for head(s) {unknown} in {root / OOF_DIR}; heads present: {present} "
                             "(train them with pipelines.train)")
    filters = None if focal else [("source", "=", SOUNDSCAPE)]
    tables = {h: pq.read_table(root / OOF_DIR / f"{h}.parquet", filters=filters) for h in heads}
    with FeatureStore.open(root, create=False, read_only=True) as store:
        taxonomy = store.rows("SELECT primary_label, class_name FROM taxonomy ORDER BY class_index")
        labels = store_labels(store)
        meta = soundscape_meta(store)
        logits = {}
        if zero_shot:
            ids = sorted(str(w) for w in tables[heads[0]].column("window_id").to_pylist())
            for view in zero_shot:
                logits[view] = zero_shot_logits(store, view, ids, zero_shot_pooling)
    return align_oof(tables, [t[0] for t in taxonomy], [t[1] for t in taxonomy], labels, file_meta=meta,
                     zero_shot=logits)


def store_labels(store: FeatureStore) -> dict[str, list[str]]:
    """window id -> labels of every labelled window (the store's ``window_labels`` definition)."""
    query = window_labels_sql([t for t in WINDOW_LABEL_PARTS if store.has_table(t)])
    if query is None:
        raise StoreError("the store has no labels (no recordings or soundscape_labels table); run pipelines.ingest")
    return {wid: list(labs) for wid, _source, labs in store.rows(query)}


def soundscape_meta(store: FeatureStore) -> dict[str, tuple[str | None, int | None]]:
    """file key (``<source>/<filename>``) -> (site, hour) of each soundscape with windows."""
    if not (store.has_table("soundscapes") and store.has_table("windows")):
        return {}
    rows = store.rows("SELECT DISTINCT w.source, w.filename, s.site, s.hour FROM windows w "
                      "JOIN soundscapes s ON w.filename = s.filename")
    return {f"{src}/{fn}": (site, None if hour is None else int(hour)) for src, fn, site, hour in rows}


def zero_shot_logits(store: FeatureStore, view: str, window_ids: Sequence[str],
                     pooling: str = "mean") -> tuple[list[str], np.ndarray, list[str]]:
    """``(window_ids, logits, label of each column)`` of a stored logit view whose columns are
    ``<prefix>:<primary_label>`` (e.g. ``birdnet_logit:banana``)."""
    from embed.features import load_window_features

    ids, X, names, _ = load_window_features(store, view, pooling, window_ids=list(window_ids))
    labels = [n.rpartition(":")[2] for n in names]
    return list(ids), X, labels


# ---------------------------------------------------------------------------- features
@dataclass(frozen=True)
class FeatureParams:
    """Which level-2 features to build (all per window and class, in logit space)."""

    neighbours: bool = True              # previous and next window's logit per head
    file_stats: tuple[str, ...] = FILE_STATS   # subset of max, mean, topk: per head, over the window's file
    top_k: int = 2
    site_prior: bool = False             # logit of the class's smoothed positive rate at the window's site
    hour_prior: bool = False             # ... at the soundscape's hour
    prior_strength: float = 5.0          # pseudo-windows pulling a site/hour rate toward the class's overall rate

    def check(self) -> FeatureParams:
        unknown = sorted(set(self.file_stats) - set(FILE_STATS))
        if unknown:
            raise UserInputError(f"unknown file statistic(s) {unknown}; choose from {list(FILE_STATS)}")
        if self.top_k < 1 or self.prior_strength <= 0:
            raise UserInputError("top_k must be >= 1 and prior_strength > 0")
        return self


def base_features(data: StackInputs, params: FeatureParams) -> tuple[np.ndarray, list[str]]:
    """``(F (n, C, k) float32, feature names)``: the fold-independent features of :class:`FeatureParams`.

    For each source ``h``: ``h`` (its logit), then with ``neighbours`` ``h:prev`` and ``h:next``, then
    ``h:file_<stat>`` for each file statistic. A source's unavailable classes hold 0 in all its features.
    Computed once per (inputs, params) and cached on ``data``.
    """
    params.check()
    key = ("features", params.neighbours, tuple(params.file_stats), params.top_k)
    if key in data._cache:
        return data._cache[key]
    Z = data.logits
    layout = data.layout
    blocks, names = [], []
    prev_idx, next_idx = layout.neighbour(-1), layout.neighbour(1)
    for h, head in enumerate(data.heads):
        z = Z[h]
        parts = [(head, z)]
        if params.neighbours:
            parts += [(f"{head}:prev", z[prev_idx]), (f"{head}:next", z[next_idx])]
        for stat in params.file_stats:
            parts.append((f"{head}:file_{stat}", layout.file_reduce(z, stat, params.top_k)))
        for name, values in parts:
            blocks.append(np.where(data.available[h], values, 0.0).astype(np.float32))
            names.append(name)
    F = np.stack(blocks, axis=2) if blocks else np.zeros((data.n, len(data.class_names), 0), np.float32)
    data._cache[key] = (F, names)
    return F, names


@dataclass(frozen=True)
class PriorTable:
    """A learnt site or hour prior: the logit of each class's smoothed positive rate per key value,
    and for a key that is unknown or unseen in training. Applies to any inputs (e.g. test windows)."""

    key: str                             # site | hour
    values: tuple                        # key values seen in training
    logits: np.ndarray                   # (len(values) + 1, C): one row per value, last row: unseen/unknown

    def apply(self, data: StackInputs) -> np.ndarray:
        """(n, C) float32: each row's prior by its site or hour."""
        index = {v: i for i, v in enumerate(self.values)}
        keys = _keys(data, self.key)
        rows = np.array([index.get(k, len(self.values)) if k is not None else len(self.values) for k in keys],
                        dtype=np.int64)
        return self.logits[rows].astype(np.float32)


def _keys(data: StackInputs, key: str) -> list:
    return data.site.tolist() if key == "site" else [None if h < 0 else int(h) for h in data.hour.tolist()]


def fit_priors(data: StackInputs, train: np.ndarray, params: FeatureParams) -> list[PriorTable]:
    """The site and/or hour :class:`PriorTable` of ``params`` learnt from the rows in boolean mask ``train`` only.

    For a key value ``v`` (a site or an hour) and class ``c``: ``logit((pos_vc + s * rate_c) / (n_v + s))``
    with ``rate_c = (pos_c + 1) / (n + 2)`` over the training rows that have a key, ``n_v`` / ``pos_vc``
    the training rows with key ``v`` and their positives, ``s = prior_strength``. A key that is unknown
    or absent from the training rows gets ``logit(rate_c)``. Labels outside ``train`` are never read.
    """
    tables = []
    for wanted, key in ((params.site_prior, "site"), (params.hour_prior, "hour")):
        if not wanted:
            continue
        keys = _keys(data, key)
        use = np.flatnonzero(np.asarray(train, bool) & np.array([k is not None for k in keys], bool))
        values = tuple(sorted({keys[i] for i in use}, key=str))
        index = {v: i for i, v in enumerate(values)}
        Yt = data.Y[use].astype(np.float64)
        rate = (Yt.sum(axis=0) + 1.0) / (len(Yt) + 2.0)
        onehot = np.zeros((len(use), len(values)))
        onehot[np.arange(len(use)), [index[keys[i]] for i in use]] = 1.0
        s = float(params.prior_strength)
        p = (onehot.T @ Yt + s * rate) / (onehot.sum(axis=0)[:, None] + s)         # (values, C)
        tables.append(PriorTable(key, values, logit(np.vstack([p, rate[None, :]]))))
    return tables


def prior_features(data: StackInputs, train: np.ndarray, params: FeatureParams) -> tuple[np.ndarray, list[str]]:
    """Site and hour priors ``(n, C, k)`` learnt from the rows of ``train`` only (:func:`fit_priors`)
    and applied to every row, with their names (``site_prior``, ``hour_prior``)."""
    return apply_priors(fit_priors(data, train, params), data)


def apply_priors(tables: Sequence[PriorTable], data: StackInputs) -> tuple[np.ndarray, list[str]]:
    """``(G (n, C, k) float32, names)`` of learnt prior tables applied to ``data``."""
    if not tables:
        return np.zeros((data.n, len(data.class_names), 0), np.float32), []
    return np.stack([t.apply(data) for t in tables], axis=2), [f"{t.key}_prior" for t in tables]


# ---------------------------------------------------------------------------- diversity
@dataclass
class Diversity:
    """Mean over classes of the Spearman correlation between two sources' OOF scores."""

    heads: tuple[str, ...]
    matrix: np.ndarray                   # (H, H); NaN where no class has varying scores for both
    n_classes: np.ndarray                # (H, H): classes averaged

    def render(self) -> str:
        width = max(len(h) for h in self.heads)
        lines = [" " * width + "  " + " ".join(f"{i:>6d}" for i in range(len(self.heads)))]
        for i, h in enumerate(self.heads):
            lines.append(f"{h:>{width}}  " + " ".join(f"{v:6.3f}" for v in self.matrix[i]) + f"   [{i}]")
        return "\n".join(lines)


def head_correlation(data: StackInputs, rows: np.ndarray | None = None) -> Diversity:
    """OOF diversity: per class, the Spearman correlation across ``rows`` (default: the labelled
    soundscape windows) between every pair of sources; averaged over the classes where both sources
    are available and not constant. 1 on the diagonal for any source with a varying class."""
    from scipy.stats import rankdata

    mask = (data.source == SOUNDSCAPE) if rows is None else np.asarray(rows)
    H = len(data.heads)
    if not mask.any():                      # nothing to correlate over: undefined, not a warning
        return Diversity(data.heads, np.full((H, H), np.nan), np.zeros((H, H), np.int64))
    R = rankdata(data.P[:, mask, :].astype(np.float64), axis=1)          # (H, m, C)
    R -= R.mean(axis=1, keepdims=True)
    norm = np.sqrt((R ** 2).sum(axis=1))                                # (H, C)
    varying = (norm > 0) & data.available
    with np.errstate(invalid="ignore", divide="ignore"):
        U = R / norm[:, None, :]
    U[:, :, ~varying.any(axis=0)] = 0.0
    corr = np.einsum("amc,bmc->abc", np.nan_to_num(U), np.nan_to_num(U))     # (H, H, C)
    both = varying[:, None, :] & varying[None, :, :]
    counts = both.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(counts > 0, (corr * both).sum(axis=2) / counts, np.nan)
    return Diversity(data.heads, matrix, counts)
