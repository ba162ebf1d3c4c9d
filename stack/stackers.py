"""Stackers (level-2 models over aligned OOF predictions) and their honest cross-validation.

Two kinds, each with a frozen parameter dataclass (:func:`make_stack_params` rejects unknown keys):

* ``ridge`` (:class:`RidgeParams`) — ridge regression of each class's 0/1 label on the level-2
  features of :mod:`stack.inputs` (standardised, unavailable source/class pairs held at 0). One
  *shared* weight vector is fit on every class at once with one unpenalised intercept per taxon
  group; a class with at least ``min_positives`` positives among the training rows (``sharing``
  ``auto``) gets its own weights, shrunk toward the shared ones with strength ``alpha``
  (``alpha -> inf`` gives the shared weights, ``alpha -> 0`` plain per-class least squares) and its
  own unpenalised intercept. ``sharing="shared"`` uses the shared weights for every class,
  ``"per_class"`` own weights for every class with a positive and a negative. The objectives are
  means, so the penalties do not depend on the number of rows: a class minimises
  ``mean_rows (y - s)^2 + alpha * ||w - w_shared||^2``, the shared fit
  ``mean_(rows, classes) (y - s)^2 + alpha_shared * ||w_shared||^2`` (standardised weights). The
  score ``s`` becomes a probability with the fixed increasing link ``sigmoid(link_scale * (s - 1/2))``
  (a class's ranking never changes; post-processing gets values in (0, 1)).
* ``blend`` (:class:`BlendParams`) — a weighted mean of the sources' probabilities, logits or
  per-class ranks (ranks over the rows predicted together, scaled to (0, 1]); a source's
  unavailable classes are left out of the mean for those classes (weights renormalised). No fit.

Level-2 models learn from the labelled soundscape windows of the training folds (the test domain);
``use_focal`` adds the focal windows with weight ``focal_weight``. :func:`cross_validate_stack`
fits fold k's model on rows of the other folds only, predicts every row of fold k, applies the
post-processing chain (:mod:`stack.post`) with file blocks that never span folds, and scores the
result with the base heads' scoring (``models.training.evaluation_rows`` picks the rows,
``models.metrics.fold_mean_std`` computes the fold mean), so a stack and a head are compared on
the same rows by the same numbers.

Speed: the ridge needs only per-class sums (:class:`Moments`); the sums of the fold-independent
features are computed once per (fold, source) block and cached on the inputs, so a fold's fit adds
cached blocks, the fold's site/hour prior terms and a (C, k, k) batched solve. BLAS runs on one
thread inside :func:`cross_validate_stack` (the products are small; on the shared 2-core machine
threaded OpenBLAS was 10x slower). ``bench/stack_speed.py`` times it at competition scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import rankdata
from threadpoolctl import threadpool_limits

from featurestore.errors import StoreError, UserInputError
from featurestore.params import params_from
from featurestore.windows import SOUNDSCAPE
from stack.inputs import (
    FILE_STATS,
    FeatureParams,
    PriorTable,
    StackInputs,
    apply_priors,
    base_features,
    fit_priors,
)
from stack.post import apply_post, logit, parse_post, sigmoid


# ---------------------------------------------------------------------------- params
@dataclass(frozen=True)
class RidgeParams:
    alpha: float = 1.0               # per-class weights: shrinkage toward the shared weights
    alpha_shared: float = 0.01       # shared weights: shrinkage toward 0
    min_positives: int = 5           # sharing="auto": own weights from this many training positives
    sharing: str = "auto"            # auto | shared | per_class
    link_scale: float = 6.0          # p = sigmoid(link_scale * (s - 0.5))
    neighbours: bool = True
    file_stats: tuple[str, ...] = FILE_STATS
    top_k: int = 2
    site_prior: bool = False
    hour_prior: bool = False
    prior_strength: float = 5.0
    use_focal: bool = False          # also learn from focal windows of the training folds
    focal_weight: float = 1.0

    def check(self) -> RidgeParams:
        if not (self.alpha >= 0 and self.alpha_shared >= 0):
            raise UserInputError(f"ridge: alpha and alpha_shared must be >= 0; got {self.alpha}, {self.alpha_shared}")
        if self.sharing not in SHARING:
            raise UserInputError(f"ridge: unknown sharing {self.sharing!r}; choose from {', '.join(SHARING)}")
        if self.min_positives < 1 or self.link_scale <= 0 or self.focal_weight < 0:
            raise UserInputError("ridge: min_positives must be >= 1, link_scale > 0, focal_weight >= 0")
        self.features().check()
        return self

    def features(self) -> FeatureParams:
        return FeatureParams(self.neighbours, tuple(self.file_stats), self.top_k, self.site_prior, self.hour_prior,
                             self.prior_strength)


@dataclass(frozen=True)
class BlendParams:
    method: str = "logit"                 # prob | logit | rank
    weights: tuple[float, ...] = ()       # one per source, >= 0; () = equal weights

    def check(self) -> BlendParams:
        if self.method not in BLEND_METHODS:
            raise UserInputError(f"blend: unknown method {self.method!r}; choose from {', '.join(BLEND_METHODS)}")
        w = np.asarray(self.weights, dtype=np.float64)
        if w.size and ((w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0):
            raise UserInputError(f"blend: weights must be finite, >= 0 and not all 0; got {list(self.weights)}")
        return self


SHARING = ("auto", "shared", "per_class")
BLEND_METHODS = ("prob", "logit", "rank")
PARAMS_BY_KIND = {"ridge": RidgeParams, "blend": BlendParams}


def make_stack_params(kind: str, overrides: dict | None = None):
    """Parameter dataclass of a stacker kind with ``overrides`` applied and checked (UserInputError
    for an unknown kind, key or value, naming the choices)."""
    if kind not in PARAMS_BY_KIND:
        raise UserInputError(f"unknown stacker {kind!r}; choose from {sorted(PARAMS_BY_KIND)}")
    overrides = dict(overrides or {})
    for key in ("weights", "file_stats"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return params_from(PARAMS_BY_KIND[kind], overrides, kind).check()


# ---------------------------------------------------------------------------- ridge
@dataclass
class Moments:
    """Weighted sums over a set of rows, per class, of a (rows, classes, k) design and the labels:
    all a ridge fit needs. Sums over disjoint row sets add (``+``), so per-fold sums are computed once."""

    W: float                 # sum of row weights
    S1: np.ndarray           # (C, k)    sum w x
    S2: np.ndarray           # (C, k, k) sum w x x^T
    Sy: np.ndarray           # (C, k)    sum w x y
    Y1: np.ndarray           # (C,)      sum w y
    n_pos: np.ndarray        # (C,)      rows with y > 0 and w > 0
    n_rows: int              # rows with w > 0

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.W + other.W, self.S1 + other.S1, self.S2 + other.S2, self.Sy + other.Sy,
                       self.Y1 + other.Y1, self.n_pos + other.n_pos, self.n_rows + other.n_rows)

    def scaled(self, weight: float) -> Moments:
        """The sums of the same rows with every row weight multiplied by ``weight``."""
        w = float(weight)
        keep = w > 0
        return Moments(self.W * w, self.S1 * w, self.S2 * w, self.Sy * w, self.Y1 * w,
                       self.n_pos if keep else np.zeros_like(self.n_pos), self.n_rows if keep else 0)


def moments(Xt: np.ndarray, Yt: np.ndarray) -> Moments:
    """:class:`Moments` of unit-weight rows from class-major arrays ``Xt`` (C, m, k) and ``Yt`` (C, m)."""
    Xt = np.asarray(Xt, dtype=np.float64)
    Yt = np.asarray(Yt, dtype=np.float64)
    return Moments(float(Xt.shape[1]), Xt.sum(axis=1), np.matmul(Xt.transpose(0, 2, 1), Xt),
                   np.matmul(Xt.transpose(0, 2, 1), Yt[..., None])[..., 0], Yt.sum(axis=1),
                   (Yt > 0).sum(axis=1), int(Xt.shape[1]))


class RidgeStacker:
    """The ridge stacker of :class:`RidgeParams` (see the module doc).

    Features are standardised with the weighted mean and standard deviation of each feature over the
    (row, class) entries where it is defined (``feature_mask``); undefined entries count as 0 after
    standardisation. The fit uses only :class:`Moments` of the training rows; ``coef_`` /
    ``intercept_`` act on the raw features: ``s = F[:, c] @ coef_[c] + intercept_[c]``.
    """

    kind = "ridge"

    def __init__(self, params: RidgeParams, feature_names: Sequence[str], feature_mask: np.ndarray,
                 class_groups: Sequence[str]):
        self.params = params.check()
        self.feature_names = list(feature_names)
        self.feature_mask = np.asarray(feature_mask, bool)          # (C, k): feature defined for the class
        self.class_groups = np.asarray(class_groups, dtype=object)
        self.mean_: np.ndarray | None = None                        # (k,)
        self.scale_: np.ndarray | None = None                       # (k,)
        self.coef_: np.ndarray | None = None                        # (C, k) on raw features
        self.intercept_: np.ndarray | None = None                   # (C,)
        self.shared_coef_: np.ndarray | None = None                 # (k,) on standardised features
        self.own_weights_: np.ndarray | None = None                 # (C,) bool: class has its own weights

    def fit(self, F: np.ndarray, Y: np.ndarray, row_weight: np.ndarray | None = None) -> RidgeStacker:
        """Fit on features ``F`` (m, C, k), labels ``Y`` (m, C) and optional row weights (m,)."""
        m, C, k = F.shape
        if Y.shape != (m, C):
            raise UserInputError(f"ridge: labels {Y.shape} for features {F.shape}")
        w = np.ones(m) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
        Xt = F.astype(np.float64).transpose(1, 0, 2)
        Yt = Y.astype(np.float64).T
        Xw = Xt * w[None, :, None]
        M = Moments(float(w.sum()), Xw.sum(axis=1), np.matmul(Xw.transpose(0, 2, 1), Xt),
                    np.matmul(Xw.transpose(0, 2, 1), Yt[..., None])[..., 0], Yt @ w,
                    ((Yt > 0) & (w > 0)[None]).sum(axis=1), int((w > 0).sum()))
        return self.fit_moments(M)

    def fit_moments(self, M: Moments) -> RidgeStacker:
        """Fit from the training rows' :class:`Moments` (what :func:`cross_validate_stack` uses)."""
        C, k = M.S1.shape
        if M.n_rows == 0 or M.W <= 0:
            raise StoreError("ridge: no training rows (no labelled soundscape window outside the held-out fold)")
        mask = self.feature_mask.astype(np.float64)
        W = M.W
        # feature standardisation over defined (row, class) entries
        total = W * mask.sum(axis=0)
        safe = np.maximum(total, 1e-300)
        mean = np.where(total > 0, (mask * M.S1).sum(axis=0) / safe, 0.0)
        second = np.where(total > 0, (mask * np.einsum("ckk->ck", M.S2)).sum(axis=0) / safe, 1.0)
        var = second - mean ** 2
        scale = np.where(var > 1e-12 * np.maximum(second, 1.0), np.sqrt(np.maximum(var, 0.0)), 1.0)
        d = mask / scale                                            # (C, k): standardised = (x - mean) * d
        fbar = M.S1 / W
        ybar = M.Y1 / W
        # per-class centred Gram and cross products in standardised coordinates (sums over rows)
        Gc = (M.S2 - W * fbar[:, :, None] * fbar[:, None, :]) * d[:, :, None] * d[:, None, :]
        cross = (M.Sy - W * fbar * ybar[:, None]) * d
        zbar = (fbar - mean) * d
        # shared weights: one unpenalised intercept per taxon group (within + between-class sums)
        groups, g_index = np.unique(self.class_groups.astype(str), return_inverse=True)
        g_index = g_index.ravel()
        size = np.bincount(g_index, minlength=len(groups)).astype(np.float64)
        zbar_g = np.stack([zbar[g_index == g].mean(axis=0) for g in range(len(groups))]) if k else \
            np.zeros((len(groups), 0))
        ybar_g = np.bincount(g_index, weights=ybar, minlength=len(groups)) / size
        dz = zbar - zbar_g[g_index]
        dy = ybar - ybar_g[g_index]
        N = W * C
        A = (Gc.sum(axis=0) + W * dz.T @ dz) / N + self.params.alpha_shared * np.eye(k)
        b = (cross.sum(axis=0) + W * dz.T @ dy) / N
        shared = np.linalg.solve(A, b) if k else np.zeros(0)
        coef = np.tile(shared, (C, 1))
        intercept = ybar_g[g_index] - zbar_g[g_index] @ shared
        # own weights, shrunk toward the shared ones, where a class has enough positives and a negative
        if self.params.sharing == "shared":
            own = np.zeros(C, bool)
        else:
            need = 1 if self.params.sharing == "per_class" else self.params.min_positives
            own = (M.n_pos >= need) & (M.n_pos < M.n_rows)
        if own.any() and k:
            lhs = Gc[own] / W + self.params.alpha * np.eye(k)
            rhs = cross[own] / W + self.params.alpha * shared
            coef[own] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
            intercept[own] = ybar[own] - np.einsum("ek,ek->e", zbar[own], coef[own])
        # back to raw features: s = (x - mean) * d @ w + b
        raw = coef * d
        self.mean_, self.scale_, self.shared_coef_, self.own_weights_ = mean, scale, shared, own
        self.coef_ = raw
        self.intercept_ = intercept - raw @ mean
        return self

    def decision(self, F: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """The ridge score ``s`` (rows, classes) of features ``F`` (rows, C, k), or of ``F`` followed by
        ``extra`` (rows, C, k2) along the feature axis (the same as concatenating them, without the copy)."""
        k1 = F.shape[2]
        out = np.einsum("nck,ck->nc", F.astype(np.float64), self.coef_[:, :k1])
        if extra is not None and extra.shape[2]:
            out += np.einsum("nck,ck->nc", extra.astype(np.float64), self.coef_[:, k1:])
        return out + self.intercept_

    def predict_proba(self, F: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """``sigmoid(link_scale * (s - 1/2))``."""
        return sigmoid(self.params.link_scale * (self.decision(F, extra) - 0.5))


# ---------------------------------------------------------------------------- blend
def blend(P: np.ndarray, available: np.ndarray, params: BlendParams) -> np.ndarray:
    """Blend of sources ``P`` (H, n, C) by :class:`BlendParams` (see the module doc); float64 (n, C).

    Per class, only the sources available for it count and their weights are renormalised; a class
    whose available sources all have weight 0 gets a constant 0.5. With one source of weight 1 the
    ``prob`` blend returns that source's values exactly.
    """
    params.check()
    H = P.shape[0]
    w = np.ones(H) if not params.weights else np.asarray(params.weights, dtype=np.float64)
    if len(w) != H:
        raise UserInputError(f"blend: {len(w)} weights for {H} sources")
    Wc = w[:, None] * np.asarray(available, bool)                     # (H, C)
    den = Wc.sum(axis=0)
    if params.method == "prob":
        X = P.astype(np.float64)
    elif params.method == "logit":
        X = logit(P)
    else:
        X = rankdata(P.astype(np.float64), axis=1) / P.shape[1]
    used = [h for h in range(H) if w[h] > 0]
    num = np.einsum("hnc,hc->nc", X[used], Wc[used])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.5)
    return sigmoid(out) if params.method == "logit" else out


# ---------------------------------------------------------------------------- fit / predict
@dataclass
class _Design:
    """The fold-independent part of the ridge design for one inputs object and feature setting:
    the base features and, per (fold, source) block of rows, their class-major copy and moments."""

    F: np.ndarray                                   # (n, C, k1) float32
    names: list[str]
    mask: np.ndarray                                # (C, k1) bool
    blocks: list[tuple[np.ndarray, np.ndarray, Moments]] = field(default_factory=list)  # rows, Xt, moments


def _design(data: StackInputs, fp: FeatureParams) -> _Design:
    key = ("ridge_design", fp.neighbours, tuple(fp.file_stats), fp.top_k)
    if key not in data._cache:
        F, names = base_features(data, fp)
        per_source = len(names) // max(len(data.heads), 1)
        mask = np.repeat(data.available.T, per_source, axis=1) if names else np.zeros((len(data.class_names), 0), bool)
        design = _Design(F, names, mask)
        block_key = np.char.add(data.folds.astype(str), np.char.add("|", data.source.astype(str)))
        for value in np.unique(block_key):
            rows = np.flatnonzero(block_key == value)
            Xt = np.ascontiguousarray(F[rows].transpose(1, 0, 2), dtype=np.float64)
            design.blocks.append((rows, Xt, moments(Xt, data.Y[rows].T)))
        data._cache[key] = design
    return data._cache[key]


def _train_moments(data: StackInputs, design: _Design, G: np.ndarray | None, train: np.ndarray,
                   weight: np.ndarray) -> Moments:
    """Moments of the design ``[F, G]`` over the rows of ``train`` with row weights ``weight``
    (constant within a (fold, source) block when the cached block sums are used)."""
    k1 = design.F.shape[2]
    k2 = 0 if G is None else G.shape[2]
    C = len(data.class_names)
    total = Moments(0.0, np.zeros((C, k1)), np.zeros((C, k1, k1)), np.zeros((C, k1)), np.zeros(C),
                    np.zeros(C, np.int64), 0)
    cross = np.zeros((C, k1, k2))
    for rows, Xt, M in design.blocks:
        sel = train[rows]
        if not sel.any():
            continue
        w = weight[rows][sel]
        if sel.all() and np.all(w == w[0]):
            part, Xb, wb = M.scaled(w[0]), Xt, np.full(len(rows), w[0])
        else:
            Xb = Xt[:, sel]
            Xw = Xb * w[None, :, None]
            Yt = data.Y[rows[sel]].astype(np.float64).T
            part = Moments(float(w.sum()), Xw.sum(axis=1), np.matmul(Xw.transpose(0, 2, 1), Xb),
                           np.matmul(Xw.transpose(0, 2, 1), Yt[..., None])[..., 0], Yt @ w,
                           ((Yt > 0) & (w > 0)[None]).sum(axis=1), int((w > 0).sum()))
            wb = w
        total = total + part
        if k2:
            Gt = G[rows[sel]].astype(np.float64).transpose(1, 0, 2) * wb[None, :, None]
            cross += np.matmul(Xb.transpose(0, 2, 1), Gt)
    if not k2:
        return total
    idx = np.flatnonzero(train)
    w = weight[idx]
    Gt = G[idx].astype(np.float64).transpose(1, 0, 2)
    Gw = Gt * w[None, :, None]
    Yt = data.Y[idx].astype(np.float64).T
    S2 = np.zeros((C, k1 + k2, k1 + k2))
    S2[:, :k1, :k1] = total.S2
    S2[:, :k1, k1:] = cross
    S2[:, k1:, :k1] = cross.transpose(0, 2, 1)
    S2[:, k1:, k1:] = np.matmul(Gw.transpose(0, 2, 1), Gt)
    return Moments(total.W, np.concatenate([total.S1, Gw.sum(axis=1)], axis=1), S2,
                   np.concatenate([total.Sy, np.matmul(Gw.transpose(0, 2, 1), Yt[..., None])[..., 0]], axis=1),
                   total.Y1, total.n_pos, total.n_rows)


@dataclass
class FittedStacker:
    """One fitted level-2 model: its kind, parameters, training windows and (ridge) the model and the
    site/hour prior tables learnt with it. ``predict`` works on any inputs with the same sources and classes."""

    kind: str
    params: RidgeParams | BlendParams
    train_windows: np.ndarray
    model: RidgeStacker | None = None
    priors: list[PriorTable] = field(default_factory=list)
    class_prior: np.ndarray | None = None    # (C,) label rate over its training rows: rows without audio get it

    def predict(self, data: StackInputs, rows: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (rows, C) for the boolean mask ``rows`` of ``data`` (default: every row);
        blend ranks are taken over ``rows``."""
        rows = np.ones(data.n, bool) if rows is None else np.asarray(rows, bool)
        if self.kind == "blend":
            return blend(data.P[:, rows], data.available, self.params)
        F, _ = base_features(data, self.params.features())   # features only: no training sums on new rows
        G = apply_priors(self.priors, data)[0] if self.priors else None
        return self.model.predict_proba(F[rows], None if G is None else G[rows])


def training_rows(data: StackInputs, params: RidgeParams | BlendParams, exclude_fold: int | None) -> np.ndarray:
    """Rows a level-2 model may learn from: labelled windows in a fold other than ``exclude_fold``
    (None: every folded window), soundscape windows only unless ``use_focal``."""
    rows = data.folds != -1
    if exclude_fold is not None:
        rows &= data.folds != exclude_fold
    if not getattr(params, "use_focal", False):
        rows &= data.source == SOUNDSCAPE
    return rows


def fit_stacker(data: StackInputs, kind: str, params: RidgeParams | BlendParams, train: np.ndarray) -> FittedStacker:
    """Fit a stacker of ``kind`` on the rows in boolean mask ``train``; labels of other rows are never
    read (site/hour priors included)."""
    train = np.asarray(train, bool)
    ids = data.window_ids[train]
    rate = data.Y[train].mean(axis=0) if train.any() else np.zeros(len(data.class_names))
    if kind == "blend":
        return FittedStacker(kind, params.check(), ids, class_prior=rate)
    if kind != "ridge":
        raise UserInputError(f"unknown stacker {kind!r}; choose from {sorted(PARAMS_BY_KIND)}")
    params = params.check()
    if params.use_focal and not (data.source[train] != SOUNDSCAPE).any():
        raise UserInputError("use_focal: the inputs hold no focal window to learn from; load them with "
                             "load_inputs(..., focal=True)")
    fp = params.features()
    design = _design(data, fp)
    priors = fit_priors(data, train, fp)
    G, prior_names = apply_priors(priors, data) if priors else (None, [])
    names = design.names + prior_names
    mask = design.mask if G is None else np.hstack([design.mask, np.ones((len(data.class_names), G.shape[2]), bool)])
    weight = np.where(data.source == SOUNDSCAPE, 1.0, params.focal_weight)
    model = RidgeStacker(params, names, mask, data.class_groups)
    model.fit_moments(_train_moments(data, design, G, train, weight))
    return FittedStacker(kind, params, ids, model, priors, rate)


# ---------------------------------------------------------------------------- scoring
@dataclass
class StackScore:
    fold_mean: float
    fold_std: float
    fold_scores: dict[int, float]
    eval_mask: np.ndarray
    scored_on: str                       # soundscape | focal | none


@dataclass
class _Rows:
    """What ``models.training.evaluation_rows`` reads of a training frame: labels and sources."""

    Y: np.ndarray
    source: np.ndarray


def score_oof(data: StackInputs, oof: np.ndarray, run_folds: Sequence[int] | None = None) -> StackScore:
    """Fold mean of an OOF matrix (n, C) exactly as a base head's experiments row scores it: the
    labelled soundscape windows (else focal) chosen by ``evaluation_rows``, the competition AUC per
    fold with degenerate classes dropped, averaged over folds by ``fold_mean_std``."""
    from models.metrics import fold_mean_std  # pyarrow: imported only when scoring
    from models.training import evaluation_rows

    oof = np.asarray(oof)
    if oof.shape != data.Y.shape:
        raise UserInputError(f"OOF matrix {oof.shape} for inputs of {data.Y.shape}")
    eval_mask, scored_on = evaluation_rows(_Rows(data.Y, data.source), data.folds, run_folds)
    if scored_on == "none" or not eval_mask.any():
        return StackScore(float("nan"), float("nan"), {}, eval_mask, "none")
    mean, std, per_fold = fold_mean_std(data.Y[eval_mask], oof[eval_mask], data.folds[eval_mask])
    return StackScore(mean, std, per_fold, eval_mask, scored_on)


# ---------------------------------------------------------------------------- cross-validation
@dataclass
class StackCV:
    """The level-2 cross-validation of one stacker + post-processing chain."""

    kind: str
    params: RidgeParams | BlendParams
    post: tuple
    oof: np.ndarray                          # (n, C) float64; NaN for rows in no fold
    score: StackScore
    train_windows: dict[int, np.ndarray]     # fold -> window ids its model learnt from
    predicted_windows: dict[int, np.ndarray]  # fold -> window ids it predicted
    models: dict[int, FittedStacker]

    @property
    def fold_mean(self) -> float:
        return self.score.fold_mean

    def describe(self) -> dict:
        return {"kind": self.kind, "params": asdict(self.params), "post": [s.to_json() for s in self.post],
                "fold_mean": self.fold_mean, "fold_std": self.score.fold_std,
                "fold_scores": {int(k): float(v) for k, v in self.score.fold_scores.items()}}


def cross_validate_stack(data: StackInputs, kind: str, params: RidgeParams | BlendParams | dict | None = None,
                         post: Sequence = (), *, run_folds: Sequence[int] | None = None) -> StackCV:
    """Honest level-2 CV: for each fold k, fit on :func:`training_rows` (no fold-k row, no unfolded
    row), predict every fold-k row, then post-process and score (see the module doc).

    ``params`` may be a dict of overrides. ``run_folds`` restricts the folds (as the tuner's fast mode).
    """
    from featurestore.folds import folds_to_run  # imports the store: only when cross-validating

    if params is None or isinstance(params, dict):
        params = make_stack_params(kind, params)
    steps = parse_post(post)
    fold_ids = folds_to_run(data.folds, run_folds)
    if data.n == 0:
        raise StoreError("the heads' OOF tables hold no labelled train_soundscapes window, where level-2 models "
                         "learn and are scored: embed the labelled soundscapes (pipelines.embed) and retrain, or "
                         "stack with ridge and use_focal to learn from focal windows")
    if not fold_ids:
        raise StoreError("no window of the inputs is in a fold; re-run pipelines.folds and retrain the heads")
    oof = np.full(data.Y.shape, np.nan)
    train_windows, predicted, models = {}, {}, {}
    with threadpool_limits(1, user_api="blas"):   # many small products: BLAS threads only contend (10x slower)
        for k in fold_ids:
            train = training_rows(data, params, exclude_fold=k)
            held = data.folds == k
            fitted = fit_stacker(data, kind, params, train)
            oof[held] = fitted.predict(data, held)
            train_windows[k], predicted[k], models[k] = fitted.train_windows, data.window_ids[held], fitted
    done = np.isin(data.folds, fold_ids)
    if steps:
        sub = data.fold_layout()
        oof_post = apply_post(np.where(done[:, None], oof, 0.5), steps, sub, data.class_groups)
        oof = np.where(done[:, None], oof_post, np.nan)
    score = score_oof(data, np.where(done[:, None], oof, 0.0), run_folds=fold_ids if run_folds else None)
    return StackCV(kind, params, steps, oof, score, train_windows, predicted, models)
