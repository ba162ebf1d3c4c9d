"""One head bundle's predictor: a file's audio -> the bundle's extractors -> its view and pooling
(neighbour context when trained with it) -> the mean over the fold models.

Everything needed comes from the bundle (``heads/<head_id>/``, :mod:`models.bundle`): its config
(feature views, pooling, context), ``extractors.json`` (the exact extractor parameters the
features were made with) and the fold Heads. An extractor that would now produce a different
version (another model file, other code) is refused rather than silently mixed. Only numpy,
scipy, soundfile, ai-edge-litert, lightgbm and scikit-learn are imported on this path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embed.extractors import Extractor
from models.bundle import HeadBundle, class_prior
from models.frame import add_context
from submit.submission import file_window_ids


def build_extractors(bundle: HeadBundle, **runtime) -> list[Extractor]:
    """Rebuild the bundle's extractors from ``extractors.json``; BundleError for any whose version
    differs from the one its features were trained on (``runtime``: threads, batch_size, cache_dir)."""
    from embed.registry import rebuild

    return rebuild(bundle.extractor_params, bundle.config.feature_versions.extractors,
                   owner=f"head {bundle.head_id}", **runtime)


def predict_file(path: Path, bundle: HeadBundle, extractors: list) -> tuple[list[str], np.ndarray]:
    """Row ids and fold-averaged probabilities (windows × head classes) of the decodable windows of one file.

    The windows follow the store's soundscape grid over the decoded audio (``round(seconds / 5)``
    windows); raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded
    (empty, corrupt, NaN or inf samples).
    """
    from embed.features import embed_file_views

    frame = bundle.config.frame
    return head_rows(path, bundle, embed_file_views(path, extractors, [(frame.features, frame.pooling)],
                                                    soundscape=True))


def head_rows(path: Path, bundle: HeadBundle, feats: dict) -> tuple[list[str], np.ndarray]:
    """:func:`predict_file` given the file's views (``embed.features.embed_file_views``): the head's
    view and pooling, neighbour context when it was trained with it, the mean over fold models."""
    frame = bundle.config.frame
    starts, X, _ = feats[(frame.features, frame.pooling)]
    ids, row_ids = file_window_ids(path, starts)
    if frame.context:
        X, _ = add_context(X, np.asarray(ids))
    probs = np.mean([head.predict_proba(X) for head in bundle.folds], axis=0)
    return row_ids, probs.astype(np.float32)


class HeadPredictor:
    """predict's per-file interface for one head bundle (:class:`submit.predict.Predictor`): ``predict_file``
    per file (in the workers), ``finish`` over all rows (the fold-averaged rows as they are, the prior on rows
    without usable audio; a stacked head applies its stacker there, see
    :class:`submit.stack_predictor.StackPredictor`), ``prior`` for rows without usable audio."""

    def __init__(self, bundle: HeadBundle, extractors: list):
        self.bundle, self.extractors = bundle, extractors
        self.head_id = bundle.head_id
        self.class_names = bundle.class_names
        self.prior = class_prior(bundle)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """The ``(view, pooling)`` the head reads from a file's embedding."""
        return [(self.bundle.config.frame.features, self.bundle.config.frame.pooling)]

    def predict_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        return predict_file(path, self.bundle, self.extractors)

    def rows_from_features(self, path: Path, feats: dict) -> tuple[list[str], np.ndarray]:
        """:meth:`predict_file` given the file's views (the extractors already run)."""
        return head_rows(path, self.bundle, feats)

    def finish(self, window_ids: list[str], rows: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
        """Fold-averaged rows are final; rows not in ``usable`` (no usable audio) get :attr:`output_prior`."""
        if usable is None or np.all(usable):
            return rows
        out = np.array(rows, copy=True)
        out[~np.asarray(usable, bool)] = self.output_prior
        return out

    @property
    def output_prior(self) -> np.ndarray:
        """What a row with no prediction at all gets in the final output (the class prior)."""
        return self.prior
