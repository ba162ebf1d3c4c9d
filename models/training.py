"""Cross-validated training of one head kind on the store: a bundle, OOF predictions, one experiment row.

Artifacts land in plain folders inside the store:

* the bundle ``heads/<head_id>/`` (:mod:`models.bundle`: ``config.json``, ``extractors.json`` and
  one saved Head per fold, plus the window ids it was trained on, so leakage can be audited, and
  ``record.json``: the folds and every file's checksum, which every reader checks), assembled fold by
  fold in ``heads/.partial-<head_id>-<pid>/``, where a stopped run's finished folds wait for its re-run;
* ``oof/<head_id>.parquet``: one row per training window (window_id, head_id, fold, source and one
  float32 column per class), byte-identical for the same configuration and seed;
* a row in the DuckDB table ``experiments`` (:mod:`models.experiments`).

User labels (:mod:`featurestore.user_labels`) train by default once the store has any (``user_labels=False``:
not): :mod:`models.frame` states how they enter the label matrix. A window they label keeps its file's
fold (the folds table; a window whose file has no fold is left out and counted); the digest of the labels
used enters the head id (the config's ``user_labels``; the data version stays the ingested one, so a
user-labelled head stacks with the others), so another label set is another head and never resumes this
one's folds; the experiments row counts the windows, positives and
negatives used (``n_user_windows``, ``n_user_positives``, ``n_user_negatives``, ``user_labels``).

The cross-validation set-up (:func:`plan_cv`) and loop (:func:`cross_validate`) exist once: the
tuner (:mod:`models.tuning`) runs the same code, so a tuning trial scores what training records.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from featurestore.errors import BundleError, MetricError, StoreError, UserInputError
from featurestore.folds import fold_assignment, folds_to_run
from featurestore.ingest import latest_data_version
from featurestore.store import FeatureStore, write_parquet_atomic
from featurestore.user_labels import USER, TrainingLabels, has_labels, training_labels
from featurestore.windows import FOCAL
from models.bundle import HEADS_DIR, BundleWriter, HeadConfig
from models.experiments import metric_columns, record
from models.frame import SOUNDSCAPE, FeatureVersions, FrameSpec, TrainingFrame, build_frame
from models.heads import PARAMS_BY_KIND, make_head, make_params
from models.metrics import MetricReport, evaluate, macro_auc_defined
from models.pseudo_labels import PseudoRows, PseudoSpec

__all__ = ["HEADS_DIR", "OOF_DIR", "TRAINING_VERSION", "CVPlan", "ExperimentResult", "PseudoRows", "PseudoSpec",
           "Subsample", "cross_validate",
           "plan_cv", "run_config", "train_head"]

OOF_DIR = "oof"
TRAINING_VERSION = "train-1"


@dataclass
class ExperimentResult:
    head_id: str
    kind: str
    fold_mean: float               # the headline: mean over folds of the metric, one model per fold
    fold_std: float
    oof_auc: float                 # pooled OOF (diagnostic)
    report: MetricReport | None
    train_seconds: float
    predict_seconds: float
    oof_path: Path
    eval_rows: str
    scored_on: str = "soundscape"
    mode: str = "full"
    n_classes_scored: int = 0
    n_classes_degenerate: int = 0
    warnings: list[str] = field(default_factory=list)
    kept_folds: tuple[int, ...] = ()   # folds a stopped run of the same inputs had finished (not trained again)
    user_labels: str | None = None     # what user labels the run used (UserLabelUse.render), None: none

    @property
    def calibration_gap(self) -> float:
        return self.oof_auc - self.fold_mean

    def render(self) -> str:
        n_folds = sum(not np.isnan(v) for v in self.report.fold_scores.values()) if self.report else 0
        head = (f"head {self.head_id} ({self.kind}, {self.mode}): fold mean {self.fold_mean:.4f} +/- "
                f"{self.fold_std:.4f} over {n_folds} folds on {self.eval_rows}; pooled OOF {self.oof_auc:.4f} "
                f"(calibration gap {self.calibration_gap:+.4f}); {self.n_classes_scored} classes scored, "
                f"{self.n_classes_degenerate} degenerate; train {self.train_seconds:.1f} s, "
                f"predict {self.predict_seconds:.1f} s")
        lines = [head]
        if self.kept_folds:
            lines.append(f"resumed: fold(s) {', '.join(map(str, self.kept_folds))} kept from a stopped run of this "
                         "head on the same inputs (not trained again)")
        if self.user_labels:
            lines.append(self.user_labels)
        lines += [f"warning: {w}" for w in self.warnings]
        if self.report is not None:
            lines.append(self.report.render())
        return "\n".join(lines)


@dataclass(frozen=True)
class Subsample:
    """A named, fixed cut of a cross-validation run (the tuner's fast mode).

    ``focal_per_class`` keeps at most that many focal windows per class for TRAINING (a fixed,
    seeded choice; labelled soundscape windows are always kept); ``folds`` runs only those
    held-out folds. Evaluation always uses every labelled evaluation window of the folds run.
    """

    focal_per_class: int = 0
    folds: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return self.focal_per_class > 0 or bool(self.folds)

    def name(self) -> str:
        parts = [f"focal<={self.focal_per_class}/class"] if self.focal_per_class else []
        if self.folds:
            parts.append(f"folds {','.join(map(str, self.folds))}")
        return "fast(" + "; ".join(parts) + ")" if parts else "full"


def extractor_params(store: FeatureStore, versions: FeatureVersions) -> dict[str, dict]:
    """The stored parameters of every extractor version a bundle uses (``extractors.json``: what
    inference rebuilds the extractors from), in the order of ``versions``."""
    from embed.registry import stored_params  # StoreError naming a version with no extractor_versions row

    return stored_params(store, versions.extractors)


def replay_window_ids(store: FeatureStore) -> set[str]:
    if not store.has_table("replay_windows"):
        raise StoreError("no replay_windows table; run pipelines.folds first")
    return {r[0] for r in store.rows("SELECT window_id FROM replay_windows")}


def focal_cap_mask(frame: TrainingFrame, per_class: int, seed: int) -> np.ndarray:
    """Rows kept for training under a per-class cap on focal windows (soundscape rows always kept).

    Windows labelled by users only (source ``user_labels``) are always kept too.
    Deterministic: windows are ranked by a seeded hash of their id, and a focal window is kept
    when it is among the first ``per_class`` of any of its classes.
    """
    keep = np.isin(frame.source, (SOUNDSCAPE, USER))
    if per_class <= 0:
        return np.ones(len(keep), bool)
    focal = np.flatnonzero(~keep)
    rank = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{w}".encode(), digest_size=8).digest(), "little")
                     for w in frame.window_ids[focal]], dtype=np.uint64)
    order = focal[np.argsort(rank, kind="stable")]
    Yf = frame.Y[order] > 0
    # position of each row among its class's rows, in hash order; keep if < cap for any class
    running = np.cumsum(Yf, axis=0) * Yf
    chosen = ((running > 0) & (running <= per_class)).any(axis=1)
    keep = keep.copy()
    keep[order[chosen]] = True
    return keep


def cross_validate(frame: TrainingFrame, folds: np.ndarray, kind: str, overrides: dict,
                   bundle: BundleWriter | None, progress=None, *, train_mask: np.ndarray | None = None,
                   run_folds: Sequence[int] | None = None,
                   pseudo: PseudoRows | None = None) -> tuple[np.ndarray, float, float]:
    """The one cross-validation loop: one Head of ``kind`` per fold, fitted on the other folds.

    Returns the OOF predictions (NaN for rows of folds not run) and the train/predict seconds.
    ``train_mask`` limits the training rows (never the held-out ones); ``run_folds`` the folds run;
    ``pseudo`` adds each fold's pseudo-labelled rows (:class:`PseudoRows`) to its training rows.
    Each fold's Head goes into ``bundle`` when given (training; the tuner passes None).
    ``progress(fold, oof)`` is called after each fold (the tuner reports and prunes there).
    A fold the bundle kept from a stopped run of the same inputs (:attr:`BundleWriter.kept`) is not trained
    again: its saved out-of-fold predictions and seconds are used, bit for bit what training it gives.
    """
    oof = np.full(frame.Y.shape, np.nan, dtype=np.float32)
    train_s = predict_s = 0.0
    fold_ids = folds_to_run(folds, run_folds)
    usable = np.ones(len(folds), bool) if train_mask is None else train_mask
    kept = bundle.kept if bundle is not None else {}
    for f in fold_ids:
        held = folds == f
        if f in kept:
            saved = kept[f]["oof"]
            if saved.dtype != oof.dtype or saved.shape != (int(held.sum()), oof.shape[1]):
                raise BundleError(f"{bundle.work_dir}: fold {f} kept from a stopped run holds {saved.shape} "
                                  f"{saved.dtype} predictions, not {(int(held.sum()), oof.shape[1])} float32")
            oof[held] = saved
            train_s += float(kept[f]["train_seconds"])
            predict_s += float(kept[f]["predict_seconds"])
            continue
        train = (folds != f) & (folds != -1) & usable
        if not train.any():
            raise StoreError(f"fold {f}: no training windows outside it")
        head = make_head(kind, frame.class_names, frame.feature_names, overrides)
        if pseudo is None:
            X, Y, w, groups, ids, teacher_fold = (frame.X[train], frame.Y[train], frame.weight[train],
                                                  frame.groups[train], frame.window_ids[train], None)
        else:
            X, Y, w, groups, ids, teacher_fold = pseudo.training_set(frame, train, f)
        t0 = time.perf_counter()
        head.fit(X, Y, w, groups=groups)
        del X
        t1 = time.perf_counter()
        oof[held] = head.predict_proba(frame.X[held])
        t2 = time.perf_counter()
        predict_s += t2 - t1
        train_s += t1 - t0
        if bundle is not None:
            bundle.add_fold(f, head, ids, teacher_fold, state={"oof": oof[held], "train_seconds": np.float64(t1 - t0),
                                                             "predict_seconds": np.float64(t2 - t1)})
        if progress:
            progress(f, oof)
    return oof, train_s, predict_s


NOTHING_SCORABLE = ("no labelled window has a class with both a positive and a negative in any fold; the "
                    "headline is undefined (ingest more labelled audio, or re-fold)")
SCORED_ON_TEXT = {"soundscape": "labelled soundscape windows", "focal": "labelled focal windows (no scorable "
                  "soundscape window)", "none": "nothing scorable"}


def _scorable(Y: np.ndarray, folds: np.ndarray) -> bool:
    """Whether some fold holds a class with both a positive and a negative."""
    for f in np.unique(folds):
        n_pos = Y[folds == f].sum(axis=0)
        if ((n_pos > 0) & (n_pos < (folds == f).sum())).any():
            return True
    return False


def evaluation_rows(frame: TrainingFrame, folds: np.ndarray,
                    run_folds: Sequence[int] | None = None) -> tuple[np.ndarray, str]:
    """Rows that score a run and what they are: labelled soundscape windows (the test domain) when
    any of them is scorable, else the labelled focal windows, else ``none``. Windows labelled by users
    only are never scored."""
    scored = folds != -1
    if run_folds:
        scored &= np.isin(folds, list(run_folds))
    scape = scored & (frame.source == SOUNDSCAPE)
    if scape.any() and _scorable(frame.Y[scape], folds[scape]):
        return scape, "soundscape"
    focal = scored & (frame.source == FOCAL)
    if focal.any() and _scorable(frame.Y[focal], folds[focal]):
        return focal, "focal"
    return (scape if scape.any() else scored), "none"


def fold_score(frame: TrainingFrame, oof: np.ndarray, folds: np.ndarray, eval_mask: np.ndarray,
               fold: int) -> float:
    """Metric of one held-out fold (NaN when it has no scorable class): the tuner's intermediate value."""
    rows = eval_mask & (folds == fold)
    return macro_auc_defined(frame.Y[rows], oof[rows])[0] if rows.any() else float("nan")


def score_run(store: FeatureStore, frame: TrainingFrame, folds: np.ndarray, oof: np.ndarray,
              eval_mask: np.ndarray, seed: int) -> MetricReport | None:
    """The full metric report on ``eval_mask`` rows, or None if nothing is scorable."""
    if not eval_mask.any():
        return None
    focal_counts = frame.Y[frame.source == FOCAL].sum(axis=0)
    taxon = dict(store.rows("SELECT primary_label, class_name FROM taxonomy"))
    sites, hours = site_hour_of(store, frame.groups[eval_mask], frame.source[eval_mask])
    return evaluate(frame.Y[eval_mask], oof[eval_mask], frame.class_names, folds=folds[eval_mask],
                    sites=sites, hours=hours, file_ids=frame.groups[eval_mask], train_counts=focal_counts,
                    taxon_class=[taxon.get(c, "?") for c in frame.class_names], n_boot=100, seed=seed)


def site_hour_of(store: FeatureStore, file_keys: Sequence[str],
                 sources: Sequence[str]) -> tuple[list[str] | None, list[int | None] | None]:
    """The recorder site and hour of each window (by its file key ``<source>/<filename>`` and source) from the
    store's ``soundscapes`` table, for the ``site`` and ``hour`` slices of :func:`models.metrics.evaluate`.

    A window that is no soundscape, or whose soundscape the table lacks, gets site ``(unknown)`` and hour
    None (bucket ``(unknown)``). ``(None, None)`` - no site or hour slices - when the store has no
    ``soundscapes`` table or none of the windows is in it (an hour-less store keeps working)."""
    if not store.has_table("soundscapes"):
        return None, None
    meta = {fn: (site, None if hour is None else int(hour))
            for fn, site, hour in store.rows("SELECT filename, site, hour FROM soundscapes")}
    found = [meta.get(key.partition("/")[2]) if src == SOUNDSCAPE else None
             for key, src in zip(file_keys, sources, strict=True)]
    if not any(found):
        return None, None
    return ([f[0] if f and f[0] is not None else "(unknown)" for f in found],
            [f[1] if f else None for f in found])


def oof_table(frame: TrainingFrame, folds: np.ndarray, oof: np.ndarray, head_id: str) -> pa.Table:
    cols = {"window_id": pa.array(frame.window_ids.tolist()), "head_id": pa.array([head_id] * len(folds)),
            "fold": pa.array(folds, pa.int32()), "source": pa.array(frame.source.tolist())}
    for i, name in enumerate(frame.class_names):
        cols[name] = pa.array(oof[:, i], pa.float32())
    return pa.table(cols)


@dataclass
class CVPlan:
    """One cross-validation set-up, shared by training and tuning: the training frame, each window's
    fold, the rows each fold model may train on and the rows that score the run."""

    frame: TrainingFrame
    folds: np.ndarray                      # fold of each frame row (-1: in no fold, never used)
    fold_version: str
    data_version: str | None
    train_mask: np.ndarray | None          # None: every folded row may be trained on
    run_folds: tuple[int, ...]             # () = every fold
    eval_mask: np.ndarray
    scored_on: str                         # soundscape | focal | none
    pseudo: PseudoRows | None = None       # pseudo-labelled rows added to every fold's training rows

    @property
    def n_train_windows(self) -> int:
        return n_training_windows(self.folds, self.train_mask) + (len(self.pseudo.extra_ids) if self.pseudo else 0)

    def run(self, kind: str, params, bundle: BundleWriter | None = None,
            progress=None) -> tuple[np.ndarray, float, float]:
        """:func:`cross_validate` of a head kind with these parameters over this set-up."""
        return cross_validate(self.frame, self.folds, kind, asdict(params), bundle, progress,
                              train_mask=self.train_mask, run_folds=self.run_folds or None, pseudo=self.pseudo)

    def config(self, kind: str, params, spec: FrameSpec, *, seed: int, replay: bool = False,
               subsample: Subsample | None = None) -> HeadConfig:
        config = run_config(kind, params, spec, fold_version=self.fold_version, data_version=self.data_version,
                            feature_versions=self.frame.feature_versions, seed=seed, replay=replay,
                            subsample=subsample)
        config = replace(config, user_labels=user_labels_config(self.frame))
        return replace(config, pseudo=self.pseudo.config()) if self.pseudo is not None else config


def user_label_set(store: FeatureStore, use: bool | None, fold_version: str | None) -> tuple[TrainingLabels | None, int]:
    """The user labels a run trains with (None: none) and how many labelled windows were left out because
    their file has no fold. ``use``: None = if the store has any, True = required, False = none."""
    if use is False:
        return None, 0
    if not has_labels(store):
        if use:
            raise UserInputError(f"--user-labels: store {store.root} has no user labels (the user_labels table); "
                                 "label windows first, or leave the option out")
        return None, 0
    labels = training_labels(store)
    ids = sorted(labels.windows)
    if not ids:
        return None, 0
    folds, _ = fold_assignment(store, np.array(ids, dtype=str), fold_version)
    no_fold = {w for w, f in zip(ids, folds.tolist(), strict=True) if f == -1}
    for w in no_fold:
        del labels.windows[w]
    return labels, len(no_fold)


def plan_cv(store: FeatureStore, spec: FrameSpec, *, fold_version: str | None = None, replay: bool = False,
            subsample: Subsample | None = None, seed: int = 0, allow_partial: bool = False,
            pseudo: PseudoSpec | None = None, user_labels: bool | None = None) -> CVPlan:
    """Build the frame (the replay subset when ``replay``), assign folds and fix the training and
    evaluation rows (``subsample``: the fast mode's focal cap and folds; ``pseudo``: pseudo-labelled
    rows for every fold, see :class:`PseudoRows`; ``user_labels``: None = the store's user labels if it
    has any, True = required, False = none, see :func:`user_label_set`). With user labels that change a
    window, the head config records their digest (:meth:`CVPlan.config`; the data version stays the
    ingested one, so such a head stacks with the others)."""
    replay_ids = sorted(replay_window_ids(store)) if replay else None
    labels, no_fold = user_label_set(store, user_labels, fold_version)
    frame = build_frame(store, spec, window_ids=replay_ids, allow_partial=allow_partial, user_labels=labels)
    if frame.user_labels is not None:
        frame.user_labels = replace(frame.user_labels, skipped_no_fold=no_fold)
    folds, fold_version = fold_assignment(store, frame.window_ids, fold_version)
    if (folds == -1).all():
        raise StoreError("none of the training windows has a fold; re-run pipelines.folds")
    active = subsample is not None and subsample.active
    train_mask = focal_cap_mask(frame, subsample.focal_per_class, seed) if active else None
    run_folds = tuple(subsample.folds) if active else ()
    eval_mask, scored_on = evaluation_rows(frame, folds, run_folds)
    rows = None
    if pseudo is not None:
        from models.pseudo_labels import student_rows

        rows = student_rows(store, pseudo, frame, spec, folds_to_run(folds, run_folds), fold_version)
    data_version = latest_data_version(store)
    return CVPlan(frame, folds, fold_version, data_version, train_mask, run_folds, eval_mask, scored_on, rows)


def user_labels_config(frame: TrainingFrame) -> dict | None:
    """The head config's ``user_labels`` entry: the digest and count of the user labels that changed a
    window of the frame (None when none did, so the plain run's head id is unchanged)."""
    use = frame.user_labels
    if use is None or not use.windows:
        return None
    return {"digest": use.digest, "n_windows": len(use.windows)}


def train_head(store_dir: str | Path, kind: str, spec: FrameSpec, *, overrides: dict | None = None,
               fold_version: str | None = None, replay: bool = False, subsample: Subsample | None = None,
               seed: int = 0, tag: str | None = None, allow_partial: bool = False,
               pseudo: PseudoSpec | None = None, user_labels: bool | None = None,
               progress=None) -> ExperimentResult:
    """Cross-validate head kind ``kind`` on the store's features, write its bundle and record the experiment.

    The bundle, the OOF file and the experiment row are kept whatever the scoring finds: a
    set with a class positive in every window drops that class (counted as degenerate); with no
    scorable soundscape window the focal windows are scored (``scored_on``); with nothing
    scorable the headline is NaN and a warning says why. The bundle is assembled under a
    temporary name and renamed into place after its last fold (with its ``record.json``), so no
    reader sees half a bundle, and the experiment row is written once, at the end.

    **Resumable per fold.** Each finished fold is kept in the partial folder with its out-of-fold
    predictions; a run stopped by an error, Ctrl-C or ``kill -9`` and then re-run with the same
    arguments trains only the folds not finished (``ExperimentResult.kept_folds`` names the others).
    A fold is kept only under the same :func:`fold_inputs_key` (head id, the frame's bytes, folds,
    pseudo-labels, library versions) and with its files as written, so the bundle, the OOF file and
    the scores are bit for bit those of an uninterrupted run. A full disk (one DiskFullError naming
    the file being written) removes the partial folder.

    ``user_labels``: None (default) trains with the store's user labels when it has any, True requires them,
    False leaves them out (:func:`plan_cv`).
    """
    params = head_params(kind, overrides, seed)
    spec.check()
    subsample = subsample if subsample is not None and subsample.active else None
    if replay and subsample:
        raise StoreError("choose either the replay subset or a fast subsample, not both")
    mode = "replay" if replay else ("fast" if subsample else "full")
    with FeatureStore.open(store_dir, create=False) as store:
        plan = plan_cv(store, spec, fold_version=fold_version, replay=replay, subsample=subsample, seed=seed,
                       allow_partial=allow_partial, pseudo=pseudo, user_labels=user_labels)
        frame, folds = plan.frame, plan.folds
        config = plan.config(kind, params, spec, seed=seed, replay=replay, subsample=subsample)
        if frame.coverage and (frame.coverage.unexplained or frame.coverage.failed):
            config = replace(config, feature_coverage=frame.coverage.as_dict(),  # a partial frame is another head
                             allow_partial=allow_partial)
        head_id = config.head_id
        with BundleWriter(store.root / HEADS_DIR, config, extractor_params(store, frame.feature_versions),
                          resume_key=fold_inputs_key(plan, config)) as bundle:
            kept_folds = tuple(bundle.kept)
            store.release_catalog()   # the folds train on the frame in memory: readers get in meanwhile
            oof, train_s, predict_s = plan.run(kind, params, bundle, progress and (lambda f, _oof: progress(f)))
            eval_mask, scored_on = plan.eval_mask, plan.scored_on
            warnings: list[str] = []
            if frame.coverage and frame.coverage.unexplained:
                warnings.append(f"--allow-partial: trained on {frame.coverage.present} of {frame.coverage.wanted} "
                                "labelled windows")
            if frame.coverage and frame.coverage.failed:
                warnings.append(f"{frame.coverage.failed} labelled window(s) left out: their audio could not be "
                                "embedded (see the embed_errors table)")
            report = None
            try:
                report = score_run(store, frame, folds, oof, eval_mask, seed) if scored_on != "none" else None
            except MetricError as exc:  # e.g. a head that predicted NaN: keep the models, say why
                warnings.append(f"scoring failed: {exc}")
            if scored_on == "none":
                warnings.append(NOTHING_SCORABLE)
            predicted = ~np.isnan(oof).any(axis=1)
            oof_path = store.root / OOF_DIR / f"{head_id}.parquet"
            oof_path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet_atomic(oof_table(frame.subset(predicted), folds[predicted], oof[predicted], head_id), oof_path)
            refresh_oof_view(store)
            bundle.publish()

        metrics = metric_columns(report)
        fold_mean, fold_std, pooled = (float("nan") if metrics[c] is None else metrics[c]
                                       for c in ("fold_mean", "fold_std", "oof_auc"))
        record(store, {
            "head_id": config.head_id, "head": kind, "tag": tag or mode, "features": spec.features,
            "params": json.dumps(asdict(params)), "config": json.dumps(config.to_json(), sort_keys=True),
            "fold_version": plan.fold_version, "data_version": plan.data_version,
            "feature_versions": json.dumps(frame.feature_versions.to_json()), "seed": seed,
            "eval_rows": SCORED_ON_TEXT[plan.scored_on], "n_train_windows": plan.n_train_windows,
            "train_seconds": train_s, "predict_seconds": predict_s, "training_version": TRAINING_VERSION,
            "mode": mode, "scored_on": plan.scored_on, "n_eval_windows": int(plan.eval_mask.sum()),
            **user_label_columns(frame), **metrics})
    use = frame.user_labels
    return ExperimentResult(head_id, kind, fold_mean, fold_std, pooled, report, train_s, predict_s, oof_path,
                            SCORED_ON_TEXT[scored_on], scored_on, mode, metrics["n_classes_scored"],
                            metrics["n_classes_degenerate"], warnings, kept_folds,
                            use.render() if use is not None else None)


def user_label_columns(frame: TrainingFrame) -> dict:
    """The experiments row's user-label columns: windows / positives / negatives used (0 without user
    labels) and the whole :class:`models.frame.UserLabelUse` as JSON (NULL when none were offered)."""
    use = frame.user_labels
    if use is None:
        return {"n_user_windows": 0, "n_user_positives": 0, "n_user_negatives": 0, "user_labels": None}
    return {"n_user_windows": len(use.windows), "n_user_positives": use.n_positive,
            "n_user_negatives": use.n_negative, "user_labels": json.dumps(use.as_dict(), sort_keys=True)}


FIT_LIBRARIES = ("numpy", "scikit-learn", "scipy", "lightgbm")   # their versions are part of a fold's inputs


def fold_inputs_key(plan: CVPlan, config: HeadConfig) -> str:
    """A digest of everything a run's fold models and out-of-fold predictions are computed from: the head
    id (kind, parameters, frame spec, fold/data/feature versions, seed...), the frame's bytes (features,
    labels, weights, ids, groups, sources, class and feature names), each window's fold, the training
    mask, the folds run, the user labels used (digest and windows), the pseudo-labelled rows and the versions of the fitting libraries. A fold a
    stopped run finished is kept only under the same key, so a resumed run is bit for bit an uninterrupted
    one; features re-embedded under the same extractor version, or another library version, give another
    key (the head id alone does not see them)."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.blake2b(digest_size=20)

    def add(name: str, value) -> None:
        if isinstance(value, np.ndarray) and value.dtype != object:
            value = np.ascontiguousarray(value)
            digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
            digest.update(value.reshape(-1).view(np.uint8) if value.size else b"")
        else:
            items = value.tolist() if isinstance(value, np.ndarray) else value
            digest.update(f"{name}:{json.dumps(items, default=str)};".encode())

    frame = plan.frame
    add("head_id", config.head_id)
    add("config", json.dumps(config.to_json(), sort_keys=True))
    for name in ("window_ids", "X", "Y", "weight", "groups", "source", "class_names", "feature_names"):
        add(name, getattr(frame, name))
    add("folds", plan.folds)
    add("train_mask", plan.train_mask if plan.train_mask is not None else "none")
    add("run_folds", list(plan.run_folds))
    use = frame.user_labels
    add("user_labels", [use.digest, list(use.windows)] if use is not None else "none")
    pseudo = plan.pseudo
    if pseudo is not None:
        add("pseudo", [pseudo.version, pseudo.teacher_id, pseudo.weight, pseudo.alpha])
        for name in ("extra_ids", "extra_X", "extra_groups", "extra_folds", "blend_rows"):
            add(name, getattr(pseudo, name))
        for name in ("extra_labels", "blend_labels"):
            for k, labels in sorted(getattr(pseudo, name).items()):
                add(f"{name}[{k}]", labels)
    versions = {}
    for dist in FIT_LIBRARIES:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    add("libraries", versions)
    return digest.hexdigest()


def head_params(kind: str, overrides: dict | None, seed: int):
    """The head kind's parameter dataclass for a run: ``overrides`` applied, and the run's seed unless
    given for a kind that has a ``seed`` parameter (LightGBM): the same parameters for training and
    tuning, hence the same head id."""
    overrides = dict(overrides or {})
    params_type = PARAMS_BY_KIND.get(kind)   # an unknown kind: make_params raises HeadError naming the kinds
    if params_type is not None and "seed" in {f.name for f in fields(params_type)}:
        overrides.setdefault("seed", seed)
    return make_params(kind, overrides)


def n_training_windows(folds: np.ndarray, train_mask: np.ndarray | None) -> int:
    """Windows some fold model may train on: every folded window, cut by ``train_mask`` when given."""
    usable = folds != -1
    return int((usable & train_mask).sum() if train_mask is not None else usable.sum())


def run_config(kind: str, params, spec: FrameSpec, *, fold_version: str, data_version: str | None,
               feature_versions: FeatureVersions, seed: int, replay: bool = False,
               subsample: Subsample | None = None) -> HeadConfig:
    """A run's full configuration; its ``head_id`` names the run (the same inputs give the same id)."""
    return HeadConfig(kind=kind, params=asdict(params), frame=spec, fold_version=fold_version,
                      data_version=data_version, feature_versions=feature_versions, seed=seed, replay=replay,
                      training_version=TRAINING_VERSION,
                      subsample=asdict(subsample) if subsample is not None and subsample.active else None)


def refresh_oof_view(store: FeatureStore) -> None:
    """View ``oof_predictions`` over every OOF file (columns unioned by name)."""
    glob = store.view_glob(f"{OOF_DIR}/*.parquet").replace("'", "''")  # relative: follows a moved store
    if list((store.root / OOF_DIR).glob("*.parquet")):
        store.con.execute(f"CREATE OR REPLACE VIEW oof_predictions AS SELECT * FROM read_parquet('{glob}', "
                          "union_by_name = true)")
