"""Predicting through a stacked head: every base head and zero-shot view from ONE embedding pass per
file, then the full-data level-2 model and the post-processing steps over all files at once.

Per file (:meth:`StackPredictor.predict_file`, run in predict's worker processes): the audio is
decoded and embedded once by the union of the base heads' extractors (and the zero-shot views'),
each base bundle reads its own view and pooling from that pass, and the file's rows come out as
``(windows, sources x classes)`` probabilities in the stack's class order. After the last file
(:meth:`StackPredictor.finish`): :func:`unlabelled_inputs` assembles them into
:class:`~stack.inputs.StackInputs` and :func:`apply_stack` applies the stacker and the post steps.
Offline (the consistency test) the same :func:`apply_stack` on the base heads' own predictions gives
the same numbers.

Imports neither pyarrow nor duckdb (the Kaggle inference path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError, DataError
from featurestore.windows import WINDOW_SECONDS, file_of, parse_soundscape_name
from stack.bundle import StackBundle, base_head_dirs, load_stack
from stack.inputs import StackInputs
from stack.post import FileLayout, apply_post, sigmoid

ZERO_SHOT_FALLBACK = 0.5     # a zero-shot source's value where a file has no usable audio


def unlabelled_inputs(bundle: StackBundle, window_ids: Sequence[str], P: np.ndarray) -> StackInputs:
    """Level-2 inputs of unlabelled windows: ``P`` (sources, windows, classes) in the bundle's source
    and class order; site and hour parsed from soundscape names (unknown when a name does not parse)."""
    ids = np.asarray([str(w) for w in window_ids], dtype=str)
    layout = bundle.layout
    P = np.asarray(P, dtype=np.float32)
    if P.shape != (len(layout.sources), len(ids), len(layout.class_names)):
        raise BundleError(f"stacked head {bundle.head_id}: inputs {P.shape} for {len(layout.sources)} sources x "
                          f"{len(ids)} windows x {len(layout.class_names)} classes")
    sites, hours = [], []
    for w in ids.tolist():
        try:
            name = parse_soundscape_name(file_of(w).rpartition("/")[2])
            sites.append(name.site)
            hours.append(name.hour)
        except DataError:
            sites.append(None)
            hours.append(-1)
    n, C = len(ids), len(layout.class_names)
    return StackInputs(ids, tuple(layout.sources), list(layout.class_names),
                       np.asarray(layout.class_groups, dtype=object), P, np.asarray(layout.available, bool),
                       np.zeros((n, C), np.float32), np.full(n, -1, np.int64),
                       np.array([file_of(w).partition("/")[0] for w in ids.tolist()], dtype=object),
                       np.array(sites, dtype=object), np.asarray(hours, dtype=np.int64))


def apply_stack(bundle: StackBundle, data: StackInputs, model=None) -> np.ndarray:
    """A level-2 model (default: the full-data one; a fold's for pseudo-labels) then the post steps (file
    blocks from the window ids): (windows, classes)."""
    p = (bundle.full if model is None else model).predict(data)
    steps = bundle.config.steps()
    if steps:
        p = apply_post(p, steps, FileLayout(data.window_ids), data.class_groups)
    return np.clip(p, 0.0, 1.0)


class StackPredictor:
    """predict's per-file interface for a stacked head (see the module doc)."""

    def __init__(self, head_dir: str | os.PathLike, **runtime):
        from embed.registry import rebuild
        from models.bundle import class_prior, load_bundle

        self.bundle = load_stack(head_dir)
        self.head_id = self.bundle.head_id
        self.class_names = self.bundle.class_names
        self.bases = [load_bundle(d) for d in base_head_dirs(self.bundle)]
        params: dict[str, dict] = dict(self.bundle.extractor_params)
        versions: dict[str, str] = dict(self.bundle.layout.zero_shot_versions)
        for base in self.bases:
            missing = [c for c in self.class_names if c not in base.class_names]
            if missing:
                raise BundleError(f"base head {base.head_id} lacks classes {missing[:5]} of stacked head {self.head_id}")
            for name, version in base.config.feature_versions.extractors.items():
                if versions.setdefault(name, version) != version:
                    raise BundleError(f"stacked head {self.head_id}: its inputs need {name} features of two versions "
                                      f"({versions[name]} and {version}); retrain them on one")
                params.setdefault(name, base.extractor_params.get(name))
        self.extractors = rebuild(params, versions, owner=f"stacked head {self.head_id}", **runtime)
        self.requests = [(b.config.frame.features, b.config.frame.pooling) for b in self.bases]
        self.requests += [(v, self.bundle.config.zero_shot_pooling) for v in self.bundle.config.zero_shot]
        priors = [class_prior(b)[[b.class_names.index(c) for c in self.class_names]] for b in self.bases]
        priors += [np.full(len(self.class_names), ZERO_SHOT_FALLBACK, np.float32) for _ in self.bundle.config.zero_shot]
        self.prior = np.concatenate(priors).astype(np.float32)

    def predict_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Row ids and ``(windows, sources x classes)`` probabilities of one file's decodable windows."""
        from embed.features import embed_file_views

        return self.rows_from_features(path, embed_file_views(path, self.extractors, self.requests, soundscape=True))

    def rows_from_features(self, path: Path, feats: dict) -> tuple[list[str], np.ndarray]:
        """:meth:`predict_file` given the file's views (the extractors already run): every base head
        (``models.predict.head_rows``) and zero-shot view, side by side."""
        from models.predict import head_rows

        blocks = []
        row_ids: list[str] = []
        for base in self.bases:
            row_ids, probs = head_rows(path, base, feats)
            blocks.append(probs[:, [base.class_names.index(c) for c in self.class_names]])
        avail = self.bundle.layout.available
        for s, view in enumerate(self.bundle.config.zero_shot, start=len(self.bases)):
            _, Z, names = feats[(view, self.bundle.config.zero_shot_pooling)]
            col_of = {n.rpartition(":")[2]: j for j, n in enumerate(names)}
            block = np.full((Z.shape[0], len(self.class_names)), ZERO_SHOT_FALLBACK, np.float32)
            for c, name in enumerate(self.class_names):
                if avail[s, c]:
                    if name not in col_of:
                        raise BundleError(f"stacked head {self.head_id}: zero-shot view {view} has no logit for "
                                          f"class {name}")
                    block[:, c] = sigmoid(Z[:, col_of[name]])
            blocks.append(block)
        return row_ids, np.hstack(blocks).astype(np.float32)       # a stack has >= 1 base head: row ids set

    def finish(self, window_ids: Sequence[str], rows: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
        """Stacker + post steps over the predicted rows: ``rows`` (windows, sources x classes) ->
        (windows, classes) in :attr:`class_names` order. Rows not in ``usable`` (no usable audio: their
        inputs are the base priors) get the stack's class prior, and the file-level features and
        neighbours of the other rows are computed without them."""
        S, C = len(self.bundle.layout.sources), len(self.class_names)
        ids = np.asarray([str(w) for w in window_ids], dtype=str)
        usable = np.ones(len(ids), bool) if usable is None else np.asarray(usable, bool)
        P = np.asarray(rows, np.float32).reshape(len(ids), S, C).transpose(1, 0, 2)
        out = np.tile(self.stack_prior, (len(ids), 1))
        if usable.any():
            out[usable] = apply_stack(self.bundle, unlabelled_inputs(self.bundle, ids[usable], P[:, usable]))
        return out

    @property
    def output_prior(self) -> np.ndarray:
        """What a row with no prediction at all gets in the final output: :attr:`stack_prior`."""
        return self.stack_prior

    @property
    def stack_prior(self) -> np.ndarray:
        """The full-data level-2 model's label rate over its training rows (older bundles: the mean of
        the base heads' priors)."""
        rate = self.bundle.full.class_prior
        if rate is None:
            C = len(self.class_names)
            rate = self.prior[: len(self.bases) * C].reshape(len(self.bases), C).mean(axis=0)
        return np.clip(np.asarray(rate, np.float32), 0.0, 1.0)


def window_ids_of(path: Path, n: int) -> list[str]:
    """Window ids of the first ``n`` 5-s windows of a test soundscape (what the stack's file blocks use)."""
    from models.predict import file_window_ids

    return file_window_ids(path, np.arange(n) * WINDOW_SECONDS)[0] if n else []

