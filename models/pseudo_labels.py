"""Pseudo-label tables and their one reader: what a student trains on.

``pseudo_labels`` (a part table: one row per version, teacher fold and window, the soft probabilities of
every class in taxonomy order) and ``pseudo_runs`` (one row per version: teacher, parameters, class order,
fold version, teacher folds) are written by the labelling job (:mod:`students.pseudo`) and read only
here: :func:`pseudo_run` (a run's row), :func:`load_pseudo` (one teacher fold's labels) and
:func:`student_rows` (a student run's extra training rows, fold-consistent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import DataError, StoreError, UserInputError
from featurestore.params import params_from

if TYPE_CHECKING:
    from models.frame import TrainingFrame


TABLE, RUNS_TABLE = "pseudo_labels", "pseudo_runs"
KEYS = ["pseudo_version", "teacher_fold", "window_id"]
FULL_FOLD = -1
POOLS = ("unlabelled", "all")
PSEUDO_FOLDS_FIX = ("fold k's labels must come from a model that never saw fold k; re-train the teacher on these "
                    "folds and re-run pipelines.pseudo")


@dataclass(frozen=True)
class PseudoParams:
    power: float = 1.0
    # 0.5: on the full demo a stacked teacher's round-1 stacked student scored -0.025 (0), +0.002 (0.3) and
    # +0.008 (0.5) against the teacher's fold mean: the teacher's small probabilities on true negatives
    # (median 0.08) add up over the classes and teach false positives (2025 6th place kept p >= 0.55)
    min_prob: float = 0.5
    cap: float | None = None        # maximum label sum per window (None: no cap)
    weight: float = 1.0             # students' sample weight for pseudo-labelled windows
    pool: str = "unlabelled"        # unlabelled: windows of unlabelled soundscapes; all: every window (distillation)

    def check(self) -> PseudoParams:
        for bad, rule in ((self.power <= 0, f"power must be > 0, got {self.power!r}"),
                          (not 0.0 <= self.min_prob < 1.0, f"min_prob must be in [0, 1), got {self.min_prob!r}"),
                          (self.weight < 0, f"weight must be >= 0, got {self.weight!r}")):
            if bad:    # name the one value that is wrong, not every rule
                raise UserInputError(f"pseudo: {rule}")
        if self.pool not in POOLS:
            raise UserInputError(f"pseudo: unknown pool {self.pool!r}; use one of {', '.join(POOLS)}")
        if self.cap is not None and self.cap <= 0:
            raise UserInputError("pseudo: cap must be > 0 (or omitted)")
        return self


def make_params(overrides: dict | None = None) -> PseudoParams:
    return params_from(PseudoParams, overrides or {}, "pseudo").check()


# ---------------------------------------------------------------------------- the job
def pool_windows(store, pool: str) -> list[str]:
    """The windows a run labels, sorted: :func:`unlabelled_windows`, or every training window (``all``: the
    distillation pool - focal, labelled and unlabelled train soundscape windows; never test soundscapes)."""
    if pool == "all":
        from featurestore.windows import TEST

        return [r[0] for r in store.rows("SELECT window_id FROM windows WHERE source <> ? ORDER BY window_id", [TEST])]
    return unlabelled_windows(store)


def unlabelled_windows(store) -> list[str]:
    """Windows of the train soundscape files that have no label row at all, sorted (the pseudo-labelling
    pool). A labelled file's windows without a row are left out: they belong to the expert-labelled
    files, whose folds and scoring already cover them."""
    from featurestore.windows import SOUNDSCAPE

    labelled = {r[0] for r in store.rows("SELECT DISTINCT filename FROM soundscape_labels")} \
        if store.has_table("soundscape_labels") else set()
    rows = store.rows("SELECT window_id, filename FROM windows WHERE source = ? ORDER BY window_id", [SOUNDSCAPE])
    return [w for w, f in rows if f not in labelled]


@dataclass(frozen=True)
class PseudoRun:
    """One ``pseudo_runs`` row: how a stored pseudo-label version was made."""

    version: str
    teacher_id: str
    fold_version: str                 # the teacher's folds: fold k's labels come from its fold-k model
    teacher_folds: tuple[int, ...]    # the teacher's fold models (labels exist for each, and for FULL_FOLD)
    class_names: tuple[str, ...]      # the order of the ``probs`` columns
    params: PseudoParams


def pseudo_run(store, version: str) -> PseudoRun:
    """The ``pseudo_runs`` row of ``version``; UserInputError when the store has no pseudo-labels or not
    this version (naming the stored ones)."""
    if not store.has_table(RUNS_TABLE):
        raise UserInputError("no pseudo-labels in this store; run python -m pipelines.pseudo first")
    row = store.first(f"SELECT teacher_id, fold_version, teacher_folds, class_names, params FROM {RUNS_TABLE} "
                      "WHERE pseudo_version = ?", [version])
    if row is None:
        known = [r[0] for r in store.rows(f"SELECT pseudo_version FROM {RUNS_TABLE}")]
        raise UserInputError(f"unknown pseudo-label version {version!r}; stored: {known}")
    teacher_id, fold_version, teacher_folds, class_names, params = row
    return PseudoRun(version, teacher_id, fold_version, tuple(json.loads(teacher_folds)),
                     tuple(json.loads(class_names)), make_params(json.loads(params)))


def load_pseudo(store, version: str, fold: int) -> tuple[list[str], np.ndarray, list[str], PseudoParams]:
    """``(window_ids, soft labels (windows, classes), class names, params)`` of one teacher fold of a
    stored pseudo-label version (``fold = -1``: the full labels)."""
    run = pseudo_run(store, version)
    classes = list(run.class_names)
    glob = store.part_glob(TABLE).replace("'", "''")
    table = store.sql(f"SELECT window_id, probs FROM read_parquet('{glob}') WHERE pseudo_version = ? AND "
                      "teacher_fold = ? ORDER BY window_id", [version, fold])
    ids = table.column("window_id").to_pylist()
    flat = table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, flat.reshape(len(ids), len(classes)).astype(np.float32), classes, run.params


def student_rows(store, spec, frame, frame_spec, fold_ids: list[int], fold_version: str):
    """The :class:`models.training.PseudoRows` of a student run: the stored pseudo-labels of
    ``spec.version`` (a :class:`models.training.PseudoSpec`) for folds ``fold_ids``, with the student's
    own features (``frame_spec``, at the frame's extractor versions) for the unlabelled windows.

    Refused with a clear error: labels made on another fold version (fold ``k``'s labels would not come
    from a model blind to the student's fold ``k``), a fold the teacher lacks, a class the labels lack,
    or unlabelled windows without the student's features."""
    from embed.features import load_window_features
    from featurestore.folds import fold_assignment, require_same_fold_version
    from featurestore.windows import file_of
    from models.frame import add_context

    if not 0.0 <= spec.alpha <= 1.0 or (spec.weight is not None and spec.weight < 0):
        raise UserInputError("--distill (alpha) must be in [0, 1] and --pseudo-weight >= 0")
    run = pseudo_run(store, spec.version)
    teacher_id = run.teacher_id
    require_same_fold_version(f"pseudo-labels {spec.version} come from teacher {teacher_id}", run.fold_version,
                              fold_version, PSEUDO_FOLDS_FIX)
    lacking = sorted(set(fold_ids) - set(run.teacher_folds))
    if lacking:
        raise UserInputError(f"pseudo-labels {spec.version}: teacher {teacher_id} has no fold model for fold(s) "
                             f"{lacking}")
    labels: dict[int, np.ndarray] = {}
    ids: list[str] = []
    params = None
    for k in fold_ids:
        ids_k, Q, classes, params = load_pseudo(store, spec.version, k)
        if ids and ids_k != ids:
            raise DataError(f"pseudo-labels {spec.version}: fold {k} labels other windows than fold {fold_ids[0]}")
        missing = [c for c in frame.class_names if c not in classes]
        if missing:
            raise DataError(f"pseudo-labels {spec.version} lack {len(missing)} class(es) of the taxonomy "
                            f"(e.g. {missing[0]}); re-run pipelines.pseudo")
        ids, labels[k] = ids_k, Q[:, [classes.index(c) for c in frame.class_names]]
    in_frame = {w: i for i, w in enumerate(frame.window_ids.tolist())}
    extra = np.array([w not in in_frame for w in ids], bool)
    # labelled windows the teacher also labelled (pool "all"): blended into their targets when alpha > 0,
    # never added as second rows
    blend = ~extra if spec.alpha > 0 else np.zeros(len(ids), bool)
    extra_ids = [w for w, e in zip(ids, extra, strict=True) if e]
    X = np.zeros((0, frame.X.shape[1]), np.float32)
    if extra_ids:
        got, X, _, _ = load_window_features(store, frame_spec.features, frame_spec.pooling, window_ids=extra_ids,
                                            versions=dict(frame.feature_versions.extractors))
        if list(got) != extra_ids:
            absent = sorted(set(extra_ids) - set(got))
            raise DataError(f"{len(absent)} pseudo-labelled window(s) have no {frame_spec.features} features at the "
                            f"student's extractor versions (e.g. {absent[0]}); run pipelines.embed")
        X = np.asarray(X, np.float32)
        if frame_spec.context:
            X, _ = add_context(X, np.asarray(extra_ids))
    weight = params.weight if spec.weight is None else spec.weight
    extra_folds, _ = fold_assignment(store, np.array(extra_ids, dtype=str), fold_version)
    return PseudoRows(spec.version, teacher_id, float(weight), float(spec.alpha), np.array(extra_ids, dtype=str), X,
                      np.array([file_of(w) for w in extra_ids], dtype=str), extra_folds,
                      {k: v[extra] for k, v in labels.items()},
                      np.array([in_frame[w] for w, b in zip(ids, blend, strict=True) if b], np.int64),
                      {k: v[blend] for k, v in labels.items()})


@dataclass
class PseudoRows:
    """Pseudo-labelled windows a student trains on beside the labelled frame (built by
    :func:`models.pseudo_labels.student_rows` from a stored pseudo-label version).

    Fold ``k``'s model trains on the labels of the teacher's fold-``k`` model only (``labels[k]``),
    which never saw a labelled window of fold ``k``: the student's fold score is not inflated by
    labels leaking through the teacher. ``extra_*``: unlabelled windows added as rows with soft targets
    and weight ``weight``. ``blend_rows``: frame rows (labelled windows) the teacher also labelled
    (a distillation pool); their training targets become ``(1 - alpha) * label + alpha * teacher``
    (``alpha = 0`` leaves them alone). Scoring always uses the true labels.

    The folds table folds unlabelled soundscapes too, with their site / recording-day group: fold ``k``'s
    model leaves out the unlabelled windows of fold ``k``'s groups, as it leaves out its labelled ones,
    so the fold score never rewards adapting to the held-out recordings' own audio.
    """

    version: str
    teacher_id: str
    weight: float
    alpha: float
    extra_ids: np.ndarray
    extra_X: np.ndarray
    extra_groups: np.ndarray
    extra_folds: np.ndarray                      # fold of each unlabelled window's group (-1: none)
    extra_labels: dict[int, np.ndarray]          # teacher fold -> (extra rows, frame classes)
    blend_rows: np.ndarray                       # frame row indices
    blend_labels: dict[int, np.ndarray]          # teacher fold -> (blend rows, frame classes)

    def config(self) -> dict:
        return {"version": self.version, "teacher_id": self.teacher_id, "weight": self.weight,
                "alpha": self.alpha, "n_windows": len(self.extra_ids), "n_blended": len(self.blend_rows)}

    def training_set(self, frame: TrainingFrame, train: np.ndarray, fold: int):
        """``(X, Y, weight, groups, window ids, teacher fold per row)`` of fold ``fold``'s model."""
        if fold not in self.extra_labels:
            raise StoreError(f"pseudo-labels {self.version} have no teacher fold {fold}; make them with a "
                             "teacher trained on this fold version")
        rows = np.flatnonzero(train)
        Y = frame.Y[rows]                                  # a copy: blending never touches the frame
        blended = train[self.blend_rows]                   # blend rows (empty when alpha is 0) this fold trains on
        at = np.searchsorted(rows, self.blend_rows[blended])
        Y[at] = (1 - self.alpha) * Y[at] + self.alpha * self.blend_labels[fold][blended]
        labelled_fold = np.full(len(rows), -1)
        labelled_fold[at] = fold
        keep = self.extra_folds != fold
        n = int(keep.sum())
        teacher_fold = np.concatenate([labelled_fold, np.full(n, fold)])
        return (np.concatenate([frame.X[rows], self.extra_X[keep]]),
                np.concatenate([Y, self.extra_labels[fold][keep]]),
                np.concatenate([frame.weight[train], np.full(n, self.weight)]),
                np.concatenate([frame.groups[train], self.extra_groups[keep]]),
                np.concatenate([frame.window_ids[train], self.extra_ids[keep]]),
                [None if t < 0 else int(t) for t in teacher_fold])


@dataclass(frozen=True)
class PseudoSpec:
    """Which stored pseudo-labels a student trains on: the version, their sample weight (None: the
    weight stored with them) and the blend ``alpha`` for labelled windows the teacher also labelled."""

    version: str
    weight: float | None = None
    alpha: float = 0.0
