"""Predicting through a stacked head: every base head and zero-shot view from ONE embedding pass per
file, then the full-data level-2 model and the post-processing steps over all files at once.

Per file (:meth:`StackPredictor.predict_file`, run in predict's worker processes): the audio is
decoded and embedded once by the union of the base heads' extractors (and the zero-shot views'),
each base bundle reads its own view and pooling from that pass, and the file's rows come out as
``(windows, sources x classes)`` probabilities in the stack's class order. After the last file
(:meth:`StackPredictor.finish`): :func:`stack.apply.unlabelled_inputs` assembles them into
:class:`~stack.inputs.StackInputs` and :func:`stack.apply.apply_stack` applies the stacker and the post
steps. Offline (the consistency test) the same :func:`~stack.apply.apply_stack` on the base heads' own
predictions gives the same numbers.

Imports neither pyarrow nor duckdb (the Kaggle inference path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError
from featurestore.windows import WINDOW_SECONDS
from models.bundle import class_prior, load_bundle
from stack.apply import ZERO_SHOT_FALLBACK, apply_stack, unlabelled_inputs
from stack.bundle import StackBundle, base_head_dirs, load_stack
from stack.post import sigmoid
from submit.head_predictor import head_rows
from submit.submission import file_window_ids


class StackPredictor:
    """predict's per-file interface for a stacked head (see the module doc)."""

    def __init__(self, head: str | os.PathLike | StackBundle, **runtime):
        """``head``: the stacked head's folder, or its bundle already loaded (:func:`stack.bundle.load_stack`)."""
        from embed.registry import rebuild

        self.bundle = head if isinstance(head, StackBundle) else load_stack(head)
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
        (``submit.head_predictor.head_rows``) and zero-shot view, side by side."""
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
    return file_window_ids(path, np.arange(n) * WINDOW_SECONDS)[0] if n else []

