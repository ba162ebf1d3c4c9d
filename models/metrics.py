"""The BirdCLEF competition metric, exactly, plus the per-class, sliced and bootstrapped views of it.

Competition metric (Kaggle BirdCLEF 2024-2026 ``score``): drop every class column with no positive
in the solution, then ``sklearn.metrics.roc_auc_score(solution, submission, average="macro")``.
:func:`competition_auc` is that, with strict input checks. Everything else here is diagnostics:

* :func:`competition_score` - the same on solution / submission tables matched by ``row_id``;
* :func:`per_class_auc` / :func:`per_class_table` - ROC-AUC and PR-AUC (average precision) per class;
* :func:`padded_cmap` - the BirdCLEF 2021-22 padded class-mean average precision (rare-class view);
* :func:`row_slices` - the macro AUC on subsets of windows (fold, site, hour bucket, overlap-heavy, ...);
* :func:`hour_bucket` - the time-of-day bucket (:data:`HOUR_BUCKETS`) of a soundscape's hour;
* :func:`class_slices` - the macro AUC over subsets of classes (class_name, frequency bucket, ...);
* :func:`fold_mean_std` and :func:`bootstrap_ci` (resampling whole files).

Two semantics, on purpose. :func:`competition_auc` / :func:`competition_score` raise where Kaggle's
scorer raises (a scored class positive in every window), so a submission check stays exact. The
validation views (:func:`evaluate`, slices, folds) instead drop a class from a set when it has no
negative there (a *degenerate* class: four frog species can call in all 12 windows of a file) and
count it, so a cross-validation run is always scored and never lost to one such class.

This module is on the training/inference path: only numpy, scipy, scikit-learn and pyarrow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from featurestore.errors import MetricError

FREQUENCY_BUCKETS = (10, 100)  # training count < 10 -> rare, < 100 -> mid, else head
OVERLAP_HEAVY_LABELS = 3
# Time-of-day buckets of a soundscape's hour (the hour of its file name, [start, end) hours) for the Pantanal
# (16-22 S, local time UTC-4): sunrise 05:30-06:30 and sunset 17:30-18:50 across the year, so "dawn" holds the
# pre-dawn and dawn chorus up to ~3 h after sunrise, "dusk" the sunset chorus and the first hours of the frog
# chorus, "night" the nocturnal frogs, insects, nightjars and owls. The hour is taken as the recorder's local
# clock: the labelled train soundscapes cover 18-07 h and none 08-17 h (dusk, night and dawn), which is local
# time's pattern; read as UTC it would be local 14-03 h, a labelled set with no morning chorus at all.
HOUR_BUCKETS: tuple[tuple[int, int, str], ...] = ((0, 5, "night"), (5, 9, "dawn"), (9, 17, "day"),
                                                  (17, 21, "dusk"), (21, 24, "night"))
UNKNOWN_HOUR = "(unknown)"     # the bucket of a window with no hour (a focal clip, an unparsed file name)


# ---------------------------------------------------------------------------- input checks
def check_inputs(y_true, y_score, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(y_true as 0/1 int8, y_score as float64)``, both (n_windows, n_classes)."""
    t = np.asarray(y_true)
    s = np.asarray(y_score)
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or s.ndim != 2:
        raise MetricError(f"y_true and y_score must be 2-D (windows x classes); got {t.ndim}-D and {s.ndim}-D")
    if t.shape != s.shape:
        raise MetricError(f"shape mismatch: y_true {t.shape} vs y_score {s.shape}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise MetricError(f"empty input: shape {t.shape}")
    if class_names is not None and len(class_names) != t.shape[1]:
        raise MetricError(f"{len(class_names)} class names for {t.shape[1]} class columns")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise MetricError(f"y_score must be numeric; got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        r, c = np.argwhere(~np.isfinite(s))[0]
        raise MetricError(f"y_score has {int((~np.isfinite(s)).sum())} NaN/inf value(s); first at row {r}, "
                          f"class {_name(class_names, c)}")
    if not (np.issubdtype(t.dtype, np.number) or t.dtype == bool):
        raise MetricError(f"y_true must be 0/1; got dtype {t.dtype}")
    tf = t.astype(np.float64)
    bad = ~np.isin(tf, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MetricError(f"y_true must be 0/1; row {r}, class {_name(class_names, c)} is {tf[r, c]!r}")
    return tf.astype(np.int8), s


def _name(class_names: Sequence[str] | None, index: int) -> str:
    return f"{class_names[index]!r} (column {index})" if class_names is not None else f"column {index}"


def select_columns(matrix: np.ndarray, all_names: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Columns ``wanted`` of ``matrix`` whose columns are ``all_names``; unknown names raise MetricError."""
    index = {n: i for i, n in enumerate(all_names)}
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise MetricError(f"unknown class column(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    return np.asarray(matrix)[:, [index[w] for w in wanted]]


def scored_mask(y_true: np.ndarray) -> np.ndarray:
    """Classes the competition scores: those with at least one positive in the solution."""
    return np.asarray(y_true).sum(axis=0) > 0


# ---------------------------------------------------------------------------- the metric
def competition_auc(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None) -> float:
    """The competition score: macro ROC-AUC over the classes with >= 1 positive (sklearn semantics).

    Like the Kaggle scorer, a scored class with no negative (every window positive) is an error.
    """
    t, s = check_inputs(y_true, y_score, class_names)
    keep = scored_mask(t)
    if not keep.any():
        raise MetricError("no class has a positive in y_true; the competition metric is undefined")
    all_pos = keep & (t.sum(axis=0) == t.shape[0])
    if all_pos.any():
        c = int(np.flatnonzero(all_pos)[0])
        raise MetricError(f"class {_name(class_names, c)} is positive in every window; ROC-AUC is undefined")
    return float(roc_auc_score(t[:, keep], s[:, keep], average="macro"))


def per_class_auc(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
    """ROC-AUC of each class column (sklearn ``roc_auc_score``); NaN where a class lacks positives or negatives."""
    t, s = check_inputs(y_true, y_score, class_names)
    out = np.full(t.shape[1], np.nan)
    n_pos = t.sum(axis=0)
    for c in np.flatnonzero((n_pos > 0) & (n_pos < t.shape[0])):
        out[c] = roc_auc_score(t[:, c], s[:, c])
    return out


def per_class_ap(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Average precision (PR-AUC) of each class; NaN where a class has no positive."""
    t, s = check_inputs(y_true, y_score, class_names)
    out = np.full(t.shape[1], np.nan)
    for c in np.flatnonzero(t.sum(axis=0) > 0):
        out[c] = average_precision_score(t[:, c], s[:, c])
    return out


def padded_cmap(y_true: np.ndarray, y_score: np.ndarray, padding_factor: int = 5) -> float:
    """BirdCLEF 2021-22 padded cmAP: add ``padding_factor`` all-positive rows to both, then macro AP.

    The padding keeps classes with few positives from dominating (a rare class gets AP >= 5/(5+n)).
    """
    t, s = check_inputs(y_true, y_score)
    pad = np.ones((padding_factor, t.shape[1]))
    return float(average_precision_score(np.vstack([t, pad]), np.vstack([s, pad]), average="macro"))


def fast_auc(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-column ROC-AUC via the Mann-Whitney rank sum (ties count 1/2), NaN where undefined.

    Hand-written because the bootstrap calls it hundreds of times: one vectorised rank over all
    columns is ~8x faster than a per-column ``roc_auc_score`` loop (2000 x 234: 0.05 s vs 0.38 s) and equal to it to 1e-12
    (tested against sklearn).
    """
    t = np.asarray(t, dtype=np.float64)
    ranks = rankdata(np.asarray(s, dtype=np.float64), axis=0)
    n_pos = t.sum(axis=0)
    n_neg = t.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * t).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def macro_auc_defined(t: np.ndarray, s: np.ndarray) -> tuple[float, int]:
    """Macro AUC over classes with both positives and negatives (for slices), and how many there were."""
    auc = fast_auc(t, s)
    ok = ~np.isnan(auc)
    return (float(auc[ok].mean()) if ok.any() else float("nan")), int(ok.sum())


def degenerate_mask(t: np.ndarray) -> np.ndarray:
    """Classes with positives but no negative in ``t``: scored by the competition, undefined for ROC-AUC."""
    t = np.asarray(t)
    n_pos = t.sum(axis=0)
    return (n_pos > 0) & (n_pos == t.shape[0])


def competition_score(solution: pa.Table, submission: pa.Table, row_id_column: str = "row_id") -> float:
    """Kaggle's ``score(solution, submission, row_id_column_name)`` on Arrow tables (e.g. read from CSV).

    Rows are matched by ``row_id``; the submission must hold every solution class column (extra
    columns are an error too, as on Kaggle a wrong header fails the submission).
    """
    for name, table in (("solution", solution), ("submission", submission)):
        if row_id_column not in table.column_names:
            raise MetricError(f"{name} has no {row_id_column!r} column")
    classes = [c for c in solution.column_names if c != row_id_column]
    sub_classes = [c for c in submission.column_names if c != row_id_column]
    missing = sorted(set(classes) - set(sub_classes))
    extra = sorted(set(sub_classes) - set(classes))
    if missing or extra:
        raise MetricError(f"submission class columns differ from the solution: missing {missing[:10]}, "
                          f"unknown {extra[:10]}")
    sol_ids = solution.column(row_id_column).to_pylist()
    sub_ids = submission.column(row_id_column).to_pylist()
    if len(set(sub_ids)) != len(sub_ids):
        raise MetricError("submission has duplicate row_id values")
    position = {r: i for i, r in enumerate(sub_ids)}
    absent = [r for r in sol_ids if r not in position]
    if absent or len(sub_ids) != len(sol_ids):
        raise MetricError(f"submission rows differ from the solution: {len(absent)} solution row_id(s) missing "
                          f"(first {absent[:3]}), {len(sub_ids)} rows vs {len(sol_ids)}")
    take = pa.array([position[r] for r in sol_ids])
    y_true = np.column_stack([solution.column(c).to_numpy(zero_copy_only=False) for c in classes])
    y_score = np.column_stack([submission.column(c).take(take).to_numpy(zero_copy_only=False) for c in classes])
    return competition_auc(y_true, y_score, classes)


# ---------------------------------------------------------------------------- tables and slices
def frequency_bucket(train_counts: np.ndarray, edges: tuple[int, int] = FREQUENCY_BUCKETS) -> np.ndarray:
    """``rare`` / ``mid`` / ``head`` per class from its training example count."""
    counts = np.asarray(train_counts)
    return np.where(counts < edges[0], "rare", np.where(counts < edges[1], "mid", "head"))


def hour_bucket(hours: Sequence) -> np.ndarray:
    """The :data:`HOUR_BUCKETS` name of each hour (object array of str).

    An integer hour 0-23 (any int or integral float type) gets its bucket; ``None``, NaN, a negative number
    (the stores' -1 for "no hour") and the text :data:`UNKNOWN_HOUR` get :data:`UNKNOWN_HOUR`. Anything else
    (an hour >= 24, a fractional hour, other text) is a :class:`MetricError` naming it, never a silent bucket.
    """
    table = np.empty(24, dtype=object)
    for start, end, name in HOUR_BUCKETS:
        table[start:end] = name
    out = np.empty(len(hours), dtype=object)
    for i, h in enumerate(hours):
        if h is None or (isinstance(h, str) and h == UNKNOWN_HOUR):
            out[i] = UNKNOWN_HOUR
            continue
        if isinstance(h, bool | np.bool_) or not isinstance(h, int | float | np.integer | np.floating):
            raise MetricError(f"hour {h!r} (window {i}) is not an hour of the day 0-23 (or None for unknown)")
        if h != h or h < 0:                       # NaN or the -1 of "no hour"
            out[i] = UNKNOWN_HOUR
        elif h >= 24 or h != int(h):
            raise MetricError(f"hour {h!r} (window {i}) is not an hour of the day 0-23")
        else:
            out[i] = table[int(h)]
    return out


def per_class_table(y_true, y_score, class_names: Sequence[str], train_counts: np.ndarray | None = None,
                    taxon_class: Sequence[str] | None = None) -> pa.Table:
    """One row per class: positives, ROC-AUC, PR-AUC, and (if given) training count, bucket and class_name."""
    t, s = check_inputs(y_true, y_score, class_names)
    cols: dict[str, pa.Array | list] = {
        "label": list(class_names),
        "n_pos": pa.array(t.sum(axis=0).astype(np.int64)),
        "auc": pa.array(per_class_auc(t, s), from_pandas=True),
        "pr_auc": pa.array(per_class_ap(t, s), from_pandas=True),
    }
    if train_counts is not None:
        cols["train_count"] = pa.array(np.asarray(train_counts, dtype=np.int64))
        cols["bucket"] = pa.array(frequency_bucket(train_counts).tolist())
    if taxon_class is not None:
        cols["class_name"] = list(taxon_class)
    return pa.table(cols)


def row_slices(y_true, y_score, keys: Sequence, slice_name: str) -> pa.Table:
    """Metric on each subset of windows sharing a key (fold, site, hour bucket, ...).

    ``auc`` is the macro ROC-AUC over the classes with both positives and negatives in the subset
    (a small subset may hold a class only as positives, which the strict metric would reject).
    """
    t, s = check_inputs(y_true, y_score)
    keys = np.asarray(keys, dtype=object)
    if len(keys) != t.shape[0]:
        raise MetricError(f"slice {slice_name!r}: {len(keys)} keys for {t.shape[0]} windows")
    rows = []
    for key in sorted(set(keys.tolist()), key=_slice_order):
        m = keys == key
        auc, n_cls = macro_auc_defined(t[m], s[m])
        rows.append({"slice": slice_name, "value": str(key), "n_windows": int(m.sum()), "n_classes": n_cls, "auc": auc})
    return _slice_table(rows)


def _slice_order(key) -> tuple:
    """Numbers in numeric order (hour 2 before hour 10), then text, then None."""
    if isinstance(key, int | float | np.integer | np.floating) and not isinstance(key, bool):
        return (0, float(key), "")
    return (1 if key is not None else 2, 0.0, str(key))


def class_slices(y_true, y_score, class_keys: Sequence, slice_name: str) -> pa.Table:
    """Macro AUC over each subset of classes sharing a key (class_name, frequency bucket, ...)."""
    t, s = check_inputs(y_true, y_score)
    class_keys = np.asarray(class_keys, dtype=object)
    if len(class_keys) != t.shape[1]:
        raise MetricError(f"slice {slice_name!r}: {len(class_keys)} keys for {t.shape[1]} classes")
    auc = fast_auc(t, s)
    rows = []
    for key in sorted(set(class_keys.tolist()), key=str):
        m = (class_keys == key) & ~np.isnan(auc)
        rows.append({"slice": slice_name, "value": str(key), "n_windows": int(t.shape[0]), "n_classes": int(m.sum()),
                     "auc": float(auc[m].mean()) if m.any() else float("nan")})
    return _slice_table(rows)


def _slice_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([("slice", pa.string()), ("value", pa.string()), ("n_windows", pa.int64()),
                        ("n_classes", pa.int64()), ("auc", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def fold_mean_std(y_true, y_score, folds: Sequence[int]) -> tuple[float, float, dict[int, float]]:
    """Competition AUC per fold, its mean and (population) std over folds where it is defined.

    Each fold's AUC is the macro over the classes with both a positive and a negative in that fold
    (degenerate classes dropped); a fold with no such class is NaN and left out of the mean.
    """
    t, s = check_inputs(y_true, y_score)
    folds = np.asarray(folds)
    if len(folds) != t.shape[0]:
        raise MetricError(f"{len(folds)} fold ids for {t.shape[0]} windows")
    per_fold = {int(f): macro_auc_defined(t[folds == f], s[folds == f])[0] for f in np.unique(folds)}
    vals = np.array([v for v in per_fold.values() if not np.isnan(v)])
    if vals.size == 0:
        return float("nan"), float("nan"), per_fold
    return float(vals.mean()), float(vals.std()), per_fold


def bootstrap_ci(y_true, y_score, file_ids: Sequence, n_boot: int = 200, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the macro AUC when whole files (not windows) are resampled with replacement.

    Windows of one file are correlated, so resampling files gives the honest spread.
    """
    t, s = check_inputs(y_true, y_score)
    files = np.asarray(file_ids, dtype=object)
    if len(files) != t.shape[0]:
        raise MetricError(f"{len(files)} file ids for {t.shape[0]} windows")
    _, inverse = np.unique(files.astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[g] for g in pick])
        value, _ = macro_auc_defined(t[idx], s[idx])
        if not np.isnan(value):
            scores.append(value)
    if not scores:
        return float("nan"), float("nan")
    lo, hi = np.quantile(scores, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------- one-call evaluation
@dataclass
class MetricReport:
    """Everything :func:`evaluate` computes; ``render()`` gives a short text summary."""

    auc: float                          # pooled: macro AUC over every window at once (NaN if undefined)
    padded_cmap: float
    n_windows: int
    n_scored_classes: int               # classes with a positive and a negative in the pooled set
    per_class: pa.Table
    slices: pa.Table
    fold_mean: float | None = None
    fold_std: float | None = None
    fold_scores: dict[int, float] = field(default_factory=dict)
    ci: tuple[float, float] | None = None
    degenerate: list[str] = field(default_factory=list)  # classes dropped from a set for having no negative

    @property
    def n_degenerate_classes(self) -> int:
        return len(self.degenerate)

    def render(self) -> str:
        lines = [f"pooled AUC {self.auc:.4f} over {self.n_scored_classes} classes, {self.n_windows} windows; "
                 f"padded cmAP {self.padded_cmap:.4f}"]
        if self.degenerate:
            lines.append(f"{len(self.degenerate)} class(es) positive in every window of a scored set, dropped there: "
                         f"{', '.join(self.degenerate[:8])}{' ...' if len(self.degenerate) > 8 else ''}")
        if self.fold_mean is not None:
            lines.append(f"fold mean {self.fold_mean:.4f} +/- {self.fold_std:.4f} "
                         f"({', '.join(f'{k}:{v:.3f}' for k, v in self.fold_scores.items())})")
        if self.ci is not None:
            lines.append(f"95% file-bootstrap CI [{self.ci[0]:.4f}, {self.ci[1]:.4f}]")
        for r in self.slices.to_pylist():
            lines.append(f"  {r['slice']:>10} = {r['value']:<14} auc {r['auc']:.4f}  "
                         f"({r['n_windows']} windows, {r['n_classes']} classes)")
        return "\n".join(lines)


def evaluate(y_true, y_score, class_names: Sequence[str], *, folds: Sequence[int] | None = None,
             sites: Sequence | None = None, hours: Sequence | None = None, file_ids: Sequence | None = None,
             train_counts: np.ndarray | None = None, taxon_class: Sequence[str] | None = None,
             n_boot: int = 200, seed: int = 0) -> MetricReport:
    """Macro AUC (pooled) plus per-class table, slices, fold mean +/- std and a file bootstrap CI.

    Slices: ``fold``, ``site``, ``hour`` (the :func:`hour_bucket` of each window's hour, not the raw hour),
    ``overlap``, ``class_name`` (taxon group) and ``frequency`` (training-count bucket), each when its keys
    are given.

    Never raises for label shape: classes without a negative in a set are dropped from that set
    and listed in ``degenerate``; with no scorable class at all the AUCs are NaN.
    """
    t, s = check_inputs(y_true, y_score, class_names)
    parts = []
    for name, keys in (("fold", folds), ("site", sites), ("hour", None if hours is None else hour_bucket(hours))):
        if keys is not None:
            parts.append(row_slices(t, s, keys, name))
    n_labels = t.sum(axis=1)
    parts.append(row_slices(t, s, np.where(n_labels >= OVERLAP_HEAVY_LABELS, ">=3 labels", "<3 labels"), "overlap"))
    if taxon_class is not None:
        parts.append(class_slices(t, s, taxon_class, "class_name"))
    if train_counts is not None:
        parts.append(class_slices(t, s, frequency_bucket(train_counts), "frequency"))
    pooled, n_scored = macro_auc_defined(t, s)
    degenerate = degenerate_mask(t)
    report = MetricReport(
        auc=pooled, padded_cmap=padded_cmap(t, s), n_windows=int(t.shape[0]), n_scored_classes=n_scored,
        per_class=per_class_table(t, s, class_names, train_counts, taxon_class), slices=pa.concat_tables(parts))
    if folds is not None:
        report.fold_mean, report.fold_std, report.fold_scores = fold_mean_std(t, s, folds)
        fold_arr = np.asarray(folds)
        for f in np.unique(fold_arr):
            degenerate |= degenerate_mask(t[fold_arr == f])
    report.degenerate = [str(class_names[c]) for c in np.flatnonzero(degenerate)]
    if file_ids is not None and n_boot > 0:
        report.ci = bootstrap_ci(t, s, file_ids, n_boot=n_boot, seed=seed)
    return report
