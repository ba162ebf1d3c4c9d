"""The training frame: labelled windows × stored features, with weights, groups and folds.

Focal-clip windows carry weak labels (the clip's primary + secondary labels on every window);
labelled soundscape windows carry the experts' strong 5-s labels. Unlabelled soundscape windows
are not training rows. Every row keeps its ``window_id`` so OOF predictions join back exactly.

User labels (:mod:`featurestore.user_labels`, resolved by :func:`~featurestore.user_labels.training_labels`)
enter by one rule (:func:`apply_user_labels`):

* on a window the experts labelled (``soundscape_labels``) they are **not** applied, only counted: those
  windows are the scoring truth, fully annotated, and stay the same for every head;
* on a focal window a positive sets that class to 1 and a negative to 0; every other class keeps the
  clip's label;
* an otherwise unlabelled window becomes a training row of source ``user_labels`` whose positives are 1
  and **every other class 0** - the focal clips' rule (a class nobody named counts as absent); a window
  with negatives only is an all-zero row (a hard negative). It has the soundscape weight, its file's fold
  (a window whose file has no fold is left out and counted by :func:`models.training.plan_cv`), and it is
  never scored (the headline is scored on expert soundscape windows, or focal windows), so scores stay
  comparable with heads trained without user labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import BundleError, StoreError, UserInputError
from featurestore.user_labels import USER, TrainingLabels
from featurestore.windows import FOCAL, SOUNDSCAPE, WINDOW_LABEL_PARTS, file_of, start_of, window_labels_sql

if TYPE_CHECKING:  # the inference path (add_context) loads no store, so no duckdb
    from featurestore.store import FeatureStore


@dataclass(frozen=True)
class FrameSpec:
    features: str = "birdnet"          # feature view(s), comma-joined
    pooling: str = "mean"
    focal_weight: float = 1.0
    soundscape_weight: float = 2.0
    context: bool = False              # add neighbour-mean and file-max context features

    def check(self) -> FrameSpec:
        """Refuse an unknown feature view or pooling before any work (ValueError naming the choices)."""
        from embed.features import POOLINGS, parse_view

        views = [v.strip() for v in self.features.split(",")]
        if not all(views):
            raise UserInputError(f"empty feature view in {self.features!r}")
        for view in views:
            parse_view(view)
        if self.pooling not in POOLINGS:
            raise UserInputError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        if self.soundscape_weight < 0 or self.focal_weight < 0:
            raise UserInputError("sample weights must be >= 0")
        return self


@dataclass
class TrainingFrame:
    window_ids: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    weight: np.ndarray
    groups: np.ndarray                 # audio file of each window (inner splits, bootstrap)
    source: np.ndarray
    class_names: list[str]
    feature_names: list[str]
    feature_versions: FeatureVersions       # extractor versions read, and the pooling
    coverage: Coverage | None = None
    user_labels: UserLabelUse | None = None  # what the user labels changed (None: not used)

    def subset(self, mask: np.ndarray) -> TrainingFrame:
        return TrainingFrame(self.window_ids[mask], self.X[mask], self.Y[mask], self.weight[mask],
                             self.groups[mask], self.source[mask], self.class_names, self.feature_names,
                             self.feature_versions, self.coverage, self.user_labels)


def class_names_of(store: FeatureStore) -> list[str]:
    """Class columns in submission order (taxonomy.class_index)."""
    return [r[0] for r in store.rows("SELECT primary_label FROM taxonomy ORDER BY class_index")]


def window_labels(store: FeatureStore) -> dict[str, tuple[str, list[str]]]:
    """window_id → (source, labels) for every trainable window."""
    query = window_labels_sql([t for t in WINDOW_LABEL_PARTS if store.has_table(t)])
    if query is None:
        return {}
    return {wid: (source, list(labels)) for wid, source, labels in store.rows(query)}


@dataclass(frozen=True)
class UserLabelUse:
    """What user labels a frame was built with (:func:`apply_user_labels`); counts are of the frame's rows."""

    digest: str                  # applied_digest: the user labels on ``windows``
    windows: tuple[str, ...]     # frame windows whose labels user labels set or changed, sorted
    n_positive: int              # (window, class) positives applied
    n_negative: int              # (window, class) negatives applied
    n_new_windows: int           # windows that are training rows only through user labels (source user_labels)
    skipped_expert: int = 0      # windows left alone: the experts labelled them
    skipped_no_fold: int = 0     # windows left out: their file has no fold (plan_cv)
    n_uncertain: int = 0         # (window, class) pairs only 'uncertain'
    n_conflicts: int = 0         # (window, class) pairs with a positive and a negative
    n_unknown_class: int = 0     # (window, class) pairs whose class the taxonomy no longer has

    def as_dict(self) -> dict:
        return {"digest": self.digest, "n_windows": len(self.windows), "n_positive": self.n_positive,
                "n_negative": self.n_negative, "n_new_windows": self.n_new_windows,
                "skipped_expert": self.skipped_expert, "skipped_no_fold": self.skipped_no_fold,
                "n_uncertain": self.n_uncertain, "n_conflicts": self.n_conflicts,
                "n_unknown_class": self.n_unknown_class}

    def render(self) -> str:
        skipped = [f"{n} {what}" for n, what in ((self.skipped_expert, "on expert-labelled windows (not applied)"),
                                                 (self.skipped_no_fold, "windows in files with no fold (left out)"),
                                                 (self.n_uncertain, "uncertain"), (self.n_conflicts, "conflicting"),
                                                 (self.n_unknown_class, "of classes not in the taxonomy"))
                   if n]
        return (f"user labels {self.digest}: {len(self.windows)} windows ({self.n_new_windows} new), "
                f"{self.n_positive} positives, {self.n_negative} negatives used"
                + (f"; skipped: {', '.join(skipped)}" if skipped else ""))


def apply_user_labels(labelled: dict[str, tuple[str, list[str]]], user: TrainingLabels,
                      classes: list[str]) -> tuple[dict[str, tuple[str, list[str]]], UserLabelUse]:
    """``labelled`` (window -> (source, labels)) with the user labels applied by the module's rule, and what
    changed. Expert soundscape windows are left alone (counted); a class the taxonomy lacks is counted, not
    used; a focal window whose labels the user labels leave as they were is not counted as changed. The
    counts are the user positives / negatives on the changed windows."""
    out = dict(labelled)
    known = set(classes)
    changed: list[str] = []
    n_pos = n_neg = n_new = expert = unknown = 0
    for wid, (pos, neg) in sorted(user.windows.items()):
        if wid in labelled and labelled[wid][0] == SOUNDSCAPE:
            expert += 1
            continue
        unknown += len((pos | neg) - known)
        pos, neg = pos & known, neg & known
        if wid in labelled:
            source, labels = labelled[wid]
            new = sorted((set(labels) | pos) - neg)
            if new == sorted(labels):
                continue
            out[wid] = (source, new)
        elif pos or neg:
            out[wid] = (USER, sorted(pos))
            n_new += 1
        else:
            continue
        changed.append(wid)
        n_pos += len(pos)
        n_neg += len(neg)
    return out, UserLabelUse(applied_digest(tuple(changed), user, known), tuple(changed), n_pos, n_neg, n_new,
                             skipped_expert=expert,
                             n_uncertain=user.n_uncertain, n_conflicts=user.n_conflicts, n_unknown_class=unknown)


def restrict_use(use: UserLabelUse, kept: set[str], user: TrainingLabels, classes: list[str],
                 sources: dict[str, str]) -> UserLabelUse:
    """``use`` counted over its windows in ``kept`` only (a replay cut, windows without features), its digest
    that of the labels those windows carry."""
    from dataclasses import replace

    windows = tuple(w for w in use.windows if w in kept)
    known = set(classes)
    n_pos = sum(len(user.windows[w][0] & known) for w in windows)
    n_neg = sum(len(user.windows[w][1] & known) for w in windows)
    n_new = sum(sources[w] == USER for w in windows)
    return replace(use, digest=applied_digest(windows, user, known), windows=windows, n_positive=n_pos,
                   n_negative=n_neg, n_new_windows=n_new)


def applied_digest(windows: tuple[str, ...], user: TrainingLabels, known: set[str]) -> str:
    """sha256 (16 hex) of the user positives and negatives on ``windows``: what a head trained with them saw
    of the user labels (labels skipped or undone change nothing, so they do not change it)."""
    import hashlib
    import json

    items = [[w, sorted(user.windows[w][0] & known), sorted(user.windows[w][1] & known)] for w in sorted(windows)]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def label_matrix(labels: list[list[str]], class_names: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    Y = np.zeros((len(labels), len(class_names)), dtype=np.float32)
    for r, labs in enumerate(labels):
        for lab in labs:
            Y[r, index[lab]] = 1.0
    return Y


def add_context(X: np.ndarray, window_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Append, per window, the mean of its neighbouring windows in the same file and the file-wide max."""
    files = np.array([file_of(w) for w in window_ids])
    starts = np.array([start_of(w) for w in window_ids])
    order = np.lexsort((starts, files))
    neighbour = np.empty_like(X)
    file_max = np.empty_like(X)
    sorted_files = files[order]
    bounds = np.flatnonzero(np.r_[True, sorted_files[1:] != sorted_files[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        block = X[idx]
        padded = np.vstack([block[:1], block, block[-1:]])
        neighbour[idx] = (padded[:-2] + padded[2:]) / 2
        file_max[idx] = block.max(axis=0)
    return np.hstack([X, neighbour, file_max]), ["ctx_neighbour", "ctx_filemax"]


def failed_files(store: FeatureStore, versions: dict[str, str]) -> set[str]:
    """Files the embed job recorded as impossible to embed (``embed_errors``) for these extractor versions."""
    chosen = list(versions.values())
    if not chosen or not store.part_files("embed_errors"):
        return set()
    marks = ", ".join("?" for _ in chosen)
    return {r[0] for r in store.rows(f"SELECT DISTINCT file FROM embed_errors WHERE extractor_version IN ({marks})",
                                     chosen)}


@dataclass(frozen=True)
class Coverage:
    """How many labelled windows have features: a training frame is complete unless allowed otherwise."""

    wanted: int
    present: int
    failed: int            # missing because their file is recorded in embed_errors (undecodable audio)
    unexplained: int       # missing for no recorded reason: an embed still running, killed, or a lost part

    def as_dict(self) -> dict:
        return {"wanted": self.wanted, "present": self.present, "failed": self.failed,
                "unexplained": self.unexplained}


def build_frame(store: FeatureStore, spec: FrameSpec, window_ids: list[str] | None = None, *,
                allow_partial: bool = False, user_labels: TrainingLabels | None = None) -> TrainingFrame:
    """Labelled windows with their features, in a deterministic (window_id) order.

    Each feature view is read at ONE extractor version (the most recently written one). Every
    labelled window must have features at that version: a window whose file the embed job recorded
    as undecodable (``embed_errors``) is left out and counted; any other missing window (an embed
    still running or killed, a deleted part) is refused with the command that completes it, unless
    ``allow_partial``. ``frame.coverage`` holds the counts. ``user_labels``: applied by
    :func:`apply_user_labels` before ``window_ids`` cuts the windows (``frame.user_labels`` says what changed).
    """
    from embed.features import load_window_features

    labelled = window_labels(store)
    use = None
    if user_labels:
        labelled, use = apply_user_labels(labelled, user_labels, class_names_of(store))
    if window_ids is not None:
        labelled = {w: labelled[w] for w in window_ids if w in labelled}
    if not labelled:
        raise StoreError("no labelled windows in the store (ingest train.csv / soundscape labels first)")
    wanted = sorted(labelled)
    ids, X, names, versions = load_window_features(store, spec.features, pooling=spec.pooling, window_ids=wanted)
    ids = np.asarray(ids)
    if len(ids) == 0:
        raise StoreError(f"no stored {spec.features!r} features for the labelled windows; run python -m "
                         f"pipelines.embed --store {store.root}")
    have = set(ids.tolist())
    missing = [w for w in wanted if w not in have]
    failed = failed_files(store, versions) if missing else set()
    unexplained = [w for w in missing if file_of(w) not in failed]
    coverage = Coverage(len(wanted), len(ids), len(missing) - len(unexplained), len(unexplained))
    if unexplained and not allow_partial:
        chosen = ", ".join(f"{k} {v}" for k, v in versions.items())
        extractors = ",".join(dict.fromkeys(k.split(":", 1)[0] for k in versions))
        raise StoreError(
            f"{len(unexplained)} of {len(wanted)} labelled windows have no {spec.features!r} features at the "
            f"version in use ({chosen}; first: {unexplained[0]}): an embed is still running, was killed or lost "
            f"a part. Finish it with python -m pipelines.embed --store {store.root} --extractor {extractors}, "
            "or train on what is there with --allow-partial (recorded in the experiment)")
    order = np.argsort(ids, kind="stable")
    ids, X = ids[order], np.asarray(X, dtype=np.float32)[order]
    if spec.context:
        X, suffixes = add_context(X, ids)
        names = list(names) + [f"{s}:{n}" for s in suffixes for n in names]
    classes = class_names_of(store)
    sources = np.array([labelled[w][0] for w in ids])
    Y = label_matrix([labelled[w][1] for w in ids], classes)
    weight = np.where(sources == FOCAL, spec.focal_weight, spec.soundscape_weight).astype(np.float64)
    groups = np.array([file_of(w) for w in ids])
    if use is not None:   # count only the windows the frame holds (replay cut, windows without features)
        kept = ids.tolist()
        use = restrict_use(use, set(kept), user_labels, classes, dict(zip(kept, sources.tolist(), strict=True)))
    return TrainingFrame(ids, X, Y, weight, groups, sources, classes, list(names),
                         FeatureVersions(dict(versions), spec.pooling), coverage, use)


POOLING_KEY = "pooling"                  # the flat key FeatureVersions.to_json adds beside the versions


@dataclass(frozen=True)
class FeatureVersions:
    """The extractor version each feature view was read at, and the frame -> window pooling.

    On disk (``config.json``, the experiments row) it is one flat object,
    ``{"<extractor>": "<version>", ..., "pooling": "<pooling>"}``, in this order.
    """

    extractors: dict[str, str] = field(default_factory=dict)   # extractor name -> extractor_version
    pooling: str = "mean"

    def to_json(self) -> dict[str, str]:
        return {**self.extractors, POOLING_KEY: self.pooling}

    @classmethod
    def from_json(cls, data: Mapping[str, str], where: str = "feature_versions") -> FeatureVersions:
        if not isinstance(data, Mapping) or POOLING_KEY not in data:
            raise BundleError(f"{where}: expected an object of extractor versions with a {POOLING_KEY!r} key")
        return cls({k: v for k, v in data.items() if k != POOLING_KEY}, data[POOLING_KEY])
