"""Heads: models that map a window feature matrix to one probability per class.

Words: a *head kind* is a model family registered in :data:`HEAD_CLASSES` (``prior``,
``zeroshot``, ``linear``, ``lgbm``); a :class:`Head` is one fitted model of a kind (training fits one
per fold); the folder of a cross-validated run is a *bundle* (:mod:`models.bundle`).

One contract for every head kind (checked for each by tests/test_head_contract.py):
``fit(X, Y, sample_weight=None, groups=None)`` returns the Head (``Y`` holds 0/1 labels or soft targets
in [0, 1], e.g. pseudo-labels: every kind minimises the weighted soft cross-entropy), ``predict_proba(X)`` gives
``(n_windows, n_classes)`` probabilities in [0, 1], identical for identical fits; bad input
(wrong width, NaN/inf, wrong Y shape) and unknown kinds or parameters raise :class:`HeadError`
naming the choices; ``save(folder)`` / :func:`load_head` keep every Head loadable from a plain
folder (JSON + ``.npz`` + LightGBM model text, no pickles) with bit-identical predictions.
Parameters are frozen dataclasses; :func:`config_hash` names a run by them.

Head kinds: L0 class prior, BirdNET zero-shot (matched logits → sigmoid; unmatched classes get the
prior), per-class logistic regression (standardised, optional PCA), per-class LightGBM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from embed.birdnet import LOGITS_VIEW
from featurestore.errors import HeadError
from featurestore.params import params_from
from models.tree_walk import ModelText, TreeTable, compiled, parse_model_text, tree_table, walk

PRIOR_PSEUDOCOUNT = 1.0
ZERO_SHOT_PREFIX = LOGITS_VIEW.prefix()   # "birdnet_logit:", named where BirdNET declares its views


# ---------------------------------------------------------------------------- params
@dataclass(frozen=True)
class PriorParams:
    pseudocount: float = PRIOR_PSEUDOCOUNT


@dataclass(frozen=True)
class ZeroShotParams:
    temperature: float = 1.0


@dataclass(frozen=True)
class LinearParams:
    C: float = 0.1                # sklearn convention: C * weighted loss + 0.5 * ||w||^2
    pca_components: int = 256     # 0 = no PCA; also skipped when there are fewer features
    # with PCA the solve is whitened, so few L-BFGS steps are needed. 30 -> 20: linear 5-fold on the scale-1.0
    # rehearsal (160k rows x 234 classes) 103 -> 77 s of training, fold mean 0.6720 -> 0.6718; the demo's
    # birdnet 0.9773 -> 0.9753 (std 0.012), birdnet+classical 0.9689 -> 0.9722: equal within the folds' noise
    max_iter: int = 20
    balanced: bool = True         # weight positives and negatives equally per class
    tol: float = 1e-5


@dataclass(frozen=True)
class LGBMParams:
    n_estimators: int = 200
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 5
    # per tree. 0.5 -> 0.2 was ~2x faster at equal AUC; 0.2 -> 0.05 with neg_per_pos 20 -> 10 is another
    # 2.6x on the 5-fold bench (measured 546 s on all 234 classes, target 600) at equal-or-better noisy
    # held-out AUC (0.9597 -> 0.9628, 32 classes x 2 folds); demo fold mean 0.942 -> 0.940 (std 0.03).
    # 0.05 -> 0.03 (55 of 1,839 BirdNET + classical features a tree): 1.47x less per-class fit time on the
    # competition rehearsal at scale 0.2 (fold 0: 55.4 -> 37.8 s, held-out AUC 0.6728 -> 0.6763); the
    # scale-1.0 rehearsal's 5-fold mean is in the README ("Will it fit?")
    feature_fraction: float = 0.03
    min_features_per_tree: int = 32   # floor under feature_fraction: 0.05 of 20 features would leave one
    neg_per_pos: float = 10.0     # train each class on ~this many negatives per positive (0 = all)
    lambda_l2: float = 1.0
    # 63 -> 31: 1.20x less CPU per fit at equal noisy held-out AUC (bench/train_speed.py)
    max_bin: int = 31
    bin_sample_rows: int = 50_000  # rows sampled to find bin edges (LightGBM's default 200k costs ~2x)
    early_stopping_rounds: int = 30
    inner_valid_fraction: float = 0.15
    # LightGBM's use_quantized_grad: 1.13-1.16x less CPU, but OFF: with feature_fraction < 1 CPU quantised
    # training can abort ("Check failed: best_split_info.right_count > 0", seen on the demo) or silently
    # degrade (LightGBM issues #5994 / #6703, fix PR #7397 still open in 2026)
    quantized_grad: bool = False
    pca_components: int = 0       # >0: standardise + project on this many PCA axes once per fit (saved with
                                  # the head); PCA-256 is 2.1-2.3x less CPU but -0.02 noisy AUC: off
    min_data_in_bin: int = 3      # LightGBM's default, exposed for the tuner
    # train n_jobs classes at once (one LightGBM thread each; identical models to n_jobs=1) instead of one
    # class at a time on n_jobs OpenMP threads, whose per-split barriers dominate on the small per-class
    # subsets: 6.4x faster per-class wall time on the loaded 2-core box (an upper bound), equal models
    parallel_classes: bool = True
    n_jobs: int = 2
    seed: int = 0


def make_params(kind: str, overrides: dict | None = None):
    """Parameter dataclass of a head kind, with ``overrides`` applied (unknown kinds or keys: HeadError)."""
    if kind not in PARAMS_BY_KIND:
        raise HeadError(f"unknown head {kind!r}; choose from {sorted(PARAMS_BY_KIND)}")
    return params_from(PARAMS_BY_KIND[kind], overrides, kind, HeadError)


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able run configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- helpers
def _check_xy(X: np.ndarray, Y: np.ndarray | None, n_classes: int, n_features: int | None) -> None:
    if X.ndim != 2:
        raise HeadError(f"X must be 2-D (windows x features); got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise HeadError(f"X has {X.shape[1]} features; the head expects {n_features}")
    if not np.isfinite(X).all():
        raise HeadError("X contains NaN or inf")
    if Y is not None and (Y.ndim != 2 or Y.shape != (X.shape[0], n_classes)):
        raise HeadError(f"Y must be (windows x {n_classes} classes); got {Y.shape} for X {X.shape}")
    if Y is not None and not ((Y >= 0) & (Y <= 1)).all():   # also refuses NaN
        raise HeadError("Y must hold labels in [0, 1] (0/1, or soft targets such as pseudo-labels)")


def is_soft(Y: np.ndarray) -> bool:
    """Whether ``Y`` holds soft targets (some label strictly between 0 and 1, e.g. pseudo-labels)."""
    return bool(((Y > 0) & (Y < 1)).any())


def class_prior(Y: np.ndarray, sample_weight: np.ndarray | None, pseudocount: float = PRIOR_PSEUDOCOUNT) -> np.ndarray:
    """Smoothed weighted positive rate per class; a class with no positive gets pseudocount / (n + 2)."""
    w = np.ones(len(Y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    pos = (Y * w[:, None]).sum(axis=0)
    return (pos + pseudocount) / (w.sum() + 2.0 * pseudocount)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` that names no file (a failed write or close: e.g. disk full)
    is re-raised naming it, so the caller's message can say which file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


class Head:
    """One fitted model of a head kind. The base class stores class and feature names and implements
    save/load of the common part."""

    kind: ClassVar[str] = ""
    params_type: ClassVar[type]           # the frozen parameter dataclass of the kind
    # capability tags, read by the contract suite (tests/models/test_head_contract.py) and anyone who must
    # know what a kind does by design: "learns" (a mapping from the features: must beat the class prior on
    # held-out windows), "constant" (the class prior whatever the features), "zero_shot" (the sigmoid of a
    # pretrained model's own logit, read from the feature named ZERO_SHOT_PREFIX + class; the prior elsewhere)
    tags: ClassVar[frozenset[str]] = frozenset({"learns"})

    def __init__(self, params, class_names: list[str], feature_names: list[str]):
        self.params = params
        self.class_names = list(class_names)
        self.feature_names = list(feature_names)
        self.prior_: np.ndarray | None = None

    def fit(self, X: np.ndarray, Y: np.ndarray, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> Head:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"prior": self.prior_}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.prior_ = arrays["prior"]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "params": asdict(self.params), "class_names": self.class_names,
                "feature_names": self.feature_names}
        with naming(folder / "arrays.npz"):
            np.savez(folder / "arrays.npz", **{k: v for k, v in self._arrays().items() if v is not None})
        with naming(folder / "head.json"):
            (folder / "head.json").write_text(json.dumps(meta, indent=1))
        return folder


class PriorHead(Head):
    """L0: every window gets the class's training base rate."""

    kind = "prior"
    params_type = PriorParams
    tags = frozenset({"constant"})

    def fit(self, X, Y, sample_weight=None, groups=None):
        _check_xy(X, Y, len(self.class_names), len(self.feature_names))
        self.prior_ = class_prior(Y, sample_weight, self.params.pseudocount)
        return self

    def predict_proba(self, X):
        _check_xy(X, None, len(self.class_names), len(self.feature_names))  # the same input contract as every head
        return np.broadcast_to(self.prior_, (X.shape[0], len(self.class_names))).astype(np.float32)


def zero_shot_prefixes() -> tuple[str, ...]:
    """Column prefixes of the logit views a zero-shot head reads (``birdnet_logit:``, ``perch_logit:``, ...):
    every logits view of a family whose extractors are not member-named, from the one registry."""
    from embed.registry import FAMILIES

    return tuple(v.prefix() for cls in FAMILIES.values() if not cls.member_named
                 for v in cls.views if v.column == "logits")


class ZeroShotHead(Head):
    """A pretrained model's own logits for the classes matched to the taxonomy; the prior for the rest.

    Expects a logit feature view whose columns are named ``<prefix>:<primary_label>``: ``birdnet_logits``
    (``birdnet_logit:<label>``) or ``perch_logits`` (``perch_logit:<label>``, exact or genus-proxy classes).
    """

    kind = "zeroshot"
    params_type = ZeroShotParams
    tags = frozenset({"zero_shot"})

    def fit(self, X, Y, sample_weight=None, groups=None):
        _check_xy(X, Y, len(self.class_names), len(self.feature_names))
        self.prior_ = class_prior(Y, sample_weight)
        return self

    def column_of_class(self) -> dict[int, int]:
        """Class index -> feature column of its logit, from the first logit view among the features (a joined
        ``birdnet_logits,perch_logits`` reads BirdNET's; put the one you want first)."""
        prefixes = zero_shot_prefixes()
        prefix = next((p for n in self.feature_names for p in prefixes if n.startswith(p)), None)
        if prefix is None:
            views = ", ".join(p.removesuffix(":") + "s" for p in prefixes)
            raise HeadError(f"zero-shot head needs a logit feature view ({views}): columns '<prefix>:<label>'")
        by_label = {n.removeprefix(prefix): j for j, n in enumerate(self.feature_names) if n.startswith(prefix)}
        return {i: by_label[c] for i, c in enumerate(self.class_names) if c in by_label}

    def predict_proba(self, X):
        _check_xy(X, None, len(self.class_names), len(self.feature_names))
        out = np.tile(self.prior_.astype(np.float32), (X.shape[0], 1))
        for i, j in self.column_of_class().items():
            out[:, i] = expit(X[:, j] / self.params.temperature)
        return out


# ---------------------------------------------------------------------------- linear
def column_mean_std(X: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Float64 column mean and standard deviation of a float32 matrix without a full float64 copy.

    ``np.std(X, dtype=float64)`` materialises ``X - mean`` in float64 (~700 MB at 80k x 1.1k), so the
    squared deviations are summed over row chunks instead.
    """
    mean = X.mean(axis=0, dtype=np.float64)
    sq = np.zeros(X.shape[1])
    for start in range(0, len(X), chunk):
        diff = X[start:start + chunk].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", diff, diff)
    return mean, np.sqrt(sq / max(len(X), 1))


def one_blas_thread():
    """``with`` block running BLAS/LAPACK on one thread (threadpoolctl), for the solver steps made of many small
    calls (``eigh``'s reductions, L-BFGS-B's vector updates): OpenBLAS threads spin at every call, which on a
    busy machine costs far more than they bring - eigh of the 1,150 x 1,150 Gram matrix took 33 s on OpenBLAS's
    default threads and 1.1 s on one, on this 2-core box at load 8; a linear 5-fold went 452 -> 79 s wall."""
    from threadpoolctl import threadpool_limits  # training only: the inference path never imports it

    return threadpool_limits(limits=1, user_api="blas")


def blas_threads() -> int:
    """The BLAS thread count in force now (1 inside :func:`one_blas_thread`)."""
    from threadpoolctl import threadpool_info

    return max([lib.get("num_threads", 1) for lib in threadpool_info() if lib.get("user_api") == "blas"] or [1])


def principal_axes(Z: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` right singular vectors of ``Z`` (rows), dropping null directions (rank < k).

    From the float64 Gram matrix's eigendecomposition: the same axes as an SVD of ``Z`` but ~7x
    faster for 20k x 1.1k (bench/train_speed.py); the cut at 1e-12 of the top eigenvalue equals the
    singular-value cut at 1e-6, so fewer windows than features leaves no null directions.
    """
    from scipy.linalg import eigh  # training only

    gram = Z.T @ Z
    d = len(gram)
    with one_blas_thread():   # only the top k pairs (LAPACK's evr): 1.9x less than the full eigh at 1,839 -> 256
        eigenvalues, vectors = eigh(gram, subset_by_index=[max(d - k, 0), d - 1], driver="evr")
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    rank = int(np.sum(eigenvalues > 1e-12 * eigenvalues[0]))
    return vectors[:, :rank].T


STANDARDISE_ROWS = 16384   # rows centred and projected at a time (standardise with components)


def standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, components: np.ndarray | None = None) -> np.ndarray:
    """``(X - mean) / scale``, then ``@ components`` if given, in float32 (centred first: no precision lost).

    With components the rows go through in blocks, so the full-width standardised copy never exists
    (2.1 GB at the rehearsal's 285k self-training rows x 1,839 features; not that stage's peak, which
    was the float64 weights of LinearHead.fit).
    """
    mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
    if components is None:
        Z = np.asarray(X, dtype=np.float32) - mean32
        Z /= scale32
        return Z
    comp32 = components.astype(np.float32)
    out = np.empty((len(X), comp32.shape[1]), np.float32)
    for a in range(0, len(X), STANDARDISE_ROWS):
        Z = np.asarray(X[a:a + STANDARDISE_ROWS], dtype=np.float32) - mean32
        Z /= scale32
        np.matmul(Z, comp32, out=out[a:a + STANDARDISE_ROWS])
    return out


LOSS_BLOCK_ROWS = 2048   # rows per cache-sized block of the logistic loss passes (fit_logistic_all_classes)


def fit_logistic_all_classes(Z: np.ndarray, Y: np.ndarray, row_weight: np.ndarray, C: float,
                             max_iter: int, tol: float, penalty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class L2 logistic regressions solved jointly with one L-BFGS over all classes.

    The objective is the sum of the independent per-class sklearn objectives
    ``C * sum_i w_ic * logloss_ic + 0.5 * ||w_c||^2`` (intercept unpenalised), so the solution equals
    per-class ``LogisticRegression(C=C)``. Hand-written because one (n x d) @ (d x classes) product per
    iteration is far faster than 234 separate sklearn fits (see bench/train_speed.py).
    ``row_weight`` is (n,) or (n, classes). ``penalty`` (d,) scales the L2 term per feature
    (``0.5 * sum_j penalty_j w_j^2``); it lets a caller solve in whitened coordinates (well
    conditioned, few iterations) while keeping the original objective.
    """
    n, d = Z.shape
    k = Y.shape[1]
    W_rows = row_weight if row_weight.ndim == 2 else np.broadcast_to(row_weight[:, None], (n, k))
    Zf = np.ascontiguousarray(Z, dtype=np.float32)
    Yf = np.ascontiguousarray(Y, dtype=np.float32)
    Wf = np.ascontiguousarray(W_rows, dtype=np.float32)
    reg = np.ones((d, 1)) if penalty is None else np.asarray(penalty, dtype=np.float64)[:, None]
    logits, work = np.empty((n, k), np.float32), np.empty((n, k), np.float32)

    def elementwise(rows: slice) -> float:
        """Rows ``rows``: the weighted log loss (returned) and the weighted residual (into ``work``).

        Hand-ordered for speed, measured at 160k x 234: numpy's float32 log1p is scalar (0.34 s a pass)
        where log is SIMD (0.12 s), so log1p(e) is log(u) corrected for the rounding of u = 1 + e (within
        an ulp); and a ``where=`` subtract cost as much as log1p, so the residual uses sigmoid(x) =
        1 / (1 + exp(-x)) (exp(-x) = inf gives 0, the float32 answer). The passes run over blocks of
        LOSS_BLOCK_ROWS rows whose scratch stays in cache (1.2-2.5x over whole-array passes, which stream ~150 MB
        each from memory), and the row halves run on the BLAS threads (numpy releases the GIL).
        """
        loss = 0.0
        E, U, T = (np.empty((LOSS_BLOCK_ROWS, k), np.float32) for _ in range(3))
        for a in range(rows.start, rows.stop, LOSS_BLOCK_ROWS):
            b = min(a + LOSS_BLOCK_ROWS, rows.stop)
            x, W, y, wt = logits[a:b], work[a:b], Yf[a:b], Wf[a:b]
            e, u, t = E[: b - a], U[: b - a], T[: b - a]
            np.abs(x, out=e)
            np.negative(e, out=e)
            np.exp(e, out=e)                                   # e = exp(-|x|), in (0, 1]
            np.add(e, 1, out=u)
            np.log(u, out=W)
            np.subtract(u, 1, out=t)
            np.subtract(t, e, out=t)
            np.divide(t, u, out=t)
            np.subtract(W, t, out=W)                           # log1p(e)
            np.maximum(x, 0, out=t)
            np.add(W, t, out=W)                                # log(1 + e^x), stable
            np.multiply(y, x, out=t)
            np.subtract(W, t, out=W)
            np.multiply(W, wt, out=W)                          # weighted log loss
            loss += float(W.sum(dtype=np.float64))
            np.negative(x, out=W)
            with np.errstate(over="ignore"):
                np.exp(W, out=W)
            np.add(W, 1, out=W)
            np.reciprocal(W, out=W)                            # sigmoid(x)
            np.subtract(W, y, out=W)
            np.multiply(W, wt, out=W)                          # weighted residual
        return loss

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef = theta[: d * k].reshape(d, k)
        bias = theta[d * k:]
        with threadpool_limits(limits=threads, user_api="blas"):   # the big products: every thread
            np.matmul(Zf, coef.astype(np.float32), out=logits)
        np.add(logits, bias.astype(np.float32), out=logits)
        loss = sum(pool.map(elementwise, blocks))         # numpy releases the GIL on these passes
        value = C * loss + 0.5 * float(np.sum(reg * coef * coef))
        with threadpool_limits(limits=threads, user_api="blas"):
            grad_coef = (Zf.T @ work).astype(np.float64) * C + reg * coef
        grad_bias = work.sum(axis=0, dtype=np.float64) * C
        return value, np.concatenate([grad_coef.ravel(), grad_bias])

    from threadpoolctl import threadpool_limits

    threads = blas_threads()
    bounds = np.linspace(0, n, threads + 1).astype(int)
    blocks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]   # summed in this order
    start = np.zeros(d * k + k)
    with one_blas_thread(), ThreadPoolExecutor(threads) as pool:   # L-BFGS-B's own steps: one thread
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-10})
    return result.x[: d * k].reshape(d, k), result.x[d * k:]


class LinearHead(Head):
    """Per-class logistic regression on standardised (optionally PCA-reduced) features."""

    kind = "linear"
    params_type = LinearParams

    def fit(self, X, Y, sample_weight=None, groups=None):
        _check_xy(X, Y, len(self.class_names), len(self.feature_names))
        p = self.params
        X = np.asarray(X, dtype=np.float32)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.prior_ = class_prior(Y, w)
        self.mean_, self.scale_ = column_mean_std(X)
        self.scale_[self.scale_ < 1e-8] = 1.0
        self.components_ = None
        penalty = None
        if p.pca_components and p.pca_components < X.shape[1]:
            sample = (X[:: max(1, len(X) // 20000)] - self.mean_) / self.scale_  # float64 for the Gram matrix
            vt = principal_axes(sample, p.pca_components)
            Z = standardise(X, self.mean_, self.scale_, vt.T)
            # Solve in whitened coordinates with the penalty rescaled to match: the same objective,
            # but well conditioned, so L-BFGS needs ~30 instead of ~300 steps (bench/train_speed.py).
            sigma = np.maximum(Z.std(axis=0, dtype=np.float64), 1e-8)
            self.components_ = vt.T / sigma
            Z /= sigma.astype(np.float32)
            penalty = sigma ** -2
        else:
            Z = standardise(X, self.mean_, self.scale_)
        # (rows, classes) arrays in float32, the solver's own precision, with one temporary at a time: in
        # float64 they were ~2.7 GB at the rehearsal's 285k self-training rows x 234 classes
        Y = np.asarray(Y, dtype=np.float32)
        w32 = w.astype(np.float32)[:, None]
        if p.balanced:  # equal total weight for the positive and the negative label mass of each class
            pos = (Y * w32).sum(axis=0, dtype=np.float64)
            neg = w.sum() - pos
            total = pos + neg
            scale_pos = np.where(pos > 0, total / (2 * np.maximum(pos, 1e-12)), 1.0)
            scale_neg = np.where(pos > 0, total / (2 * np.maximum(neg, 1e-12)), 1.0)
            # w * [y*sp*log p + (1-y)*sn*log(1-p)] == w' * [y'*log p + (1-y')*log(1-p)] with
            # w' = w * (y*sp + (1-y)*sn) and y' = y*sp / (y*sp + (1-y)*sn): exact for soft targets and
            # the same numbers as weighting 0/1 labels by sp or sn
            mass = Y * (scale_pos - scale_neg).astype(np.float32)
            mass += scale_neg.astype(np.float32)
            Y = Y * scale_pos.astype(np.float32)
            Y /= mass
            weights = mass
            weights *= w32
        else:
            weights = np.broadcast_to(w32, Y.shape).copy()
        weights /= np.float32(weights.mean(dtype=np.float64))
        self.has_positive_ = Y.sum(axis=0) > 0
        coef, bias = fit_logistic_all_classes(Z, Y, weights, p.C, p.max_iter, p.tol, penalty)
        self.coef_, self.bias_ = coef, bias
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        _check_xy(X, None, len(self.class_names), len(self.feature_names))
        Z = standardise(X, self.mean_, self.scale_, self.components_)
        return Z @ self.coef_.astype(np.float32) + self.bias_.astype(np.float32)

    def predict_proba(self, X):
        out = expit(self.decision_function(X)).astype(np.float32)
        out[:, ~self.has_positive_] = self.prior_[~self.has_positive_]  # nothing learnt: the prior
        return out

    def _arrays(self):
        return {"prior": self.prior_, "mean": self.mean_, "scale": self.scale_, "coef": self.coef_,
                "bias": self.bias_, "has_positive": self.has_positive_,
                "components": self.components_}

    def _set_arrays(self, arrays):
        self.prior_, self.mean_, self.scale_ = arrays["prior"], arrays["mean"], arrays["scale"]
        self.coef_, self.bias_, self.has_positive_ = arrays["coef"], arrays["bias"], arrays["has_positive"]
        self.components_ = arrays.get("components")


# ---------------------------------------------------------------------------- LightGBM
def inner_split(n: int, groups: np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the inner early-stopping rows: whole groups (files), about ``fraction`` of rows."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.random(n) < fraction
    uniq, inverse = np.unique(groups, return_inverse=True)
    chosen = rng.random(len(uniq)) < fraction
    return chosen[inverse]


MIN_NEGATIVES = 2000


SOFT_NEGATIVE = 0.05   # with soft targets, rows labelled below this are the negatives that get subsampled


def negative_sample(y: np.ndarray, neg_per_pos: float, seed: int,
                    negative_below: float = 0.0) -> tuple[np.ndarray | None, float]:
    """Rows for one class: every positive and ~``neg_per_pos`` negatives each (at least 2,000).

    Returns ``(sorted row indices or None for all rows, kept fraction of negatives)``. Most of the
    234 classes are rare; training them on a fixed subset of the shared binned dataset is ~3x faster
    per tree than bagging over all rows (measured: 7 vs 22 ms per tree at 80k x 1.1k). A negative is
    a row labelled 0, or below ``negative_below`` when that is > 0 (soft targets); the rest are positives.
    """
    neg_mask = y < negative_below if negative_below > 0 else y <= 0
    pos = np.flatnonzero(~neg_mask)
    neg = np.flatnonzero(neg_mask)
    if neg_per_pos <= 0 or len(neg) == 0:
        return None, 1.0
    n_keep = int(max(neg_per_pos * len(pos), MIN_NEGATIVES))
    if n_keep >= len(neg):
        return None, 1.0
    kept = np.random.default_rng(seed).choice(neg, n_keep, replace=False)
    return np.sort(np.concatenate([pos, kept])), n_keep / len(neg)


def undo_negative_sampling(p: np.ndarray, rate: float | np.ndarray) -> np.ndarray:
    """Probabilities learnt with negatives kept at ``rate`` → probabilities on the full data.

    Sampling negatives multiplies the odds by 1/rate; undoing it puts every class and fold on one
    scale, which matters when OOF predictions of different fold models are pooled. ``rate`` is one
    class's rate, or one per column of ``p``; a rate of 1 (nothing sampled) leaves ``p`` as it is.
    """
    if np.ndim(rate) == 0:
        return p if rate >= 1.0 else p * rate / (p * rate + 1.0 - p)
    return np.where(rate < 1.0, p * rate / (p * rate + 1.0 - p), p)


def effective_feature_fraction(p: LGBMParams, n_features: int) -> float:
    """``feature_fraction``, raised so a tree sees at least ``min_features_per_tree`` features (all of
    them when there are fewer): the 0.05 default suits embeddings of ~1,000 dimensions, not 20 features."""
    if n_features <= 0:
        return p.feature_fraction
    return float(min(1.0, max(p.feature_fraction, p.min_features_per_tree / n_features)))


def model_sigmoid(raw: np.ndarray, sigmoid: float) -> np.ndarray:
    """A binary LightGBM model's probability from its raw score, as LightGBM computes it
    (``1 / (1 + exp(-sigmoid * raw))`` in float64; ``cross_entropy`` models have ``sigmoid`` 1).

    Both prediction paths of :class:`LGBMHead` apply this one transform to raw scores, so they agree
    bit for bit whatever exp numpy uses. Against LightGBM's own transform (libm's exp) it agrees to a few
    ulp: numpy's SIMD exp is not libm's (numpy 2.4.6 on an AVX-512 box: up to 2 ulp of the probability).
    """
    return 1.0 / (1.0 + np.exp(-sigmoid * raw))


# A tree that adds exactly 0.0 to its output: pads the shorter classes of a merged model (LightGBM's
# reader needs num_leaves, num_cat and leaf_value; a one-leaf tree returns leaf_value[0] without a lookup)
ZERO_TREE = "num_leaves=1\nnum_cat=0\nleaf_value=0\nshrinkage=1"


def merged_model_text(models: list[ModelText]) -> str:
    """One LightGBM model text with one output per model in ``models`` (multiclass-shaped:
    ``num_tree_per_iteration`` = len(models)); a model with fewer trees is padded with :data:`ZERO_TREE`.

    LightGBM sums output k over trees i * K + k in iteration order from 0.0, so each output is the same
    float64 sum as the model's own raw score (the padding adds exactly 0.0 at the end). No objective:
    the merged model is only used with ``raw_score=True``.
    """
    first = models[0].header
    for m in models[1:]:
        if m.header.get("max_feature_idx") != first.get("max_feature_idx"):
            raise HeadError("LightGBM models over different features cannot be merged")
    k = len(models)
    n_iter = max(len(m.trees) for m in models)
    blocks = []
    for i in range(n_iter):
        for m in models:
            tree = m.trees[i] if i < len(m.trees) else ZERO_TREE
            blocks.append(f"Tree={len(blocks)}\n{tree}\n\n")
    lines = ["tree", f"version={first.get('version', 'v4')}", f"num_class={k}", f"num_tree_per_iteration={k}",
             "label_index=0", f"max_feature_idx={first['max_feature_idx']}",
             f"feature_names={first['feature_names']}", f"feature_infos={first['feature_infos']}",
             "tree_sizes=" + " ".join(str(len(b.encode())) for b in blocks), ""]
    return "\n".join(lines) + "\n" + "".join(blocks) + "end of trees\n\npandas_categorical:null\n"


@dataclass(frozen=True)
class MergedBooster:
    """A merged LightGBM model: output k is class ``classes[k]``, whose own model has ``sigmoid[k]``."""

    classes: list[int]
    sigmoid: np.ndarray
    booster: object           # lightgbm.Booster


# How models are grouped for merging, in units of one tree evaluated per row (CPU time, one thread, 3,000 rows
# of bench/pseudo_teacher_speed.py's 1,024-d teacher, 234 classes of 1-112 trees, mean 29, alternated medians):
# * a predict call costs ~4.5 us per row whatever its trees (LightGBM copies the row's features into its
#   buffer, ~4.4 ns per feature): 234 calls 3.4 s vs 9 merged calls 1.55 s (2.2x);
# * a padding tree costs 30-80 ns per row (every tree is its own heap object: cache misses), so one group
#   padded to the longest class (19,534 padding trees) took 6.3 s; the partition below with a call priced
#   at 50-200 trees gave 1.55-1.57 s (7-13 groups), at 400-800 trees 1.9-2.0 s;
# * above ~2,000 trees per merged model the trees stop fitting in cache: 62 classes x 40 trees took 0.59 s
#   in groups of 400-2,000 trees, 0.69 s in one group of 2,480 (and 1.15 s as 62 calls).
CALL_TREES_PER_FEATURE = 0.1    # one more predict call ~ 0.1 padding tree per input feature (~100 at 1,024)
MIN_CALL_TREES = 20             # ... and at least this much (the per-call work that is not the row copy)
MAX_GROUP_TREES = 2000          # trees (padding included) in one merged model, unless one class has more


def merge_groups(trees: list[int], n_features: int) -> list[list[int]]:
    """Partition model indices into groups to merge: contiguous runs of the models sorted by tree count
    (most first) that minimise ``calls x call cost + padding trees`` (dynamic programming), each group at
    most :data:`MAX_GROUP_TREES` trees once padded (a longer model is a group of its own)."""
    order = sorted(range(len(trees)), key=lambda i: (-trees[i], i))
    t = [trees[i] for i in order]
    call = max(MIN_CALL_TREES, CALL_TREES_PER_FEATURE * n_features)
    prefix = np.concatenate([[0], np.cumsum(t)])
    best = [0.0] + [np.inf] * len(t)     # best[j]: least cost of the first j models
    cut = list(range(len(t) + 1))        # the chosen last group of the first j models starts at cut[j]
    for j in range(1, len(t) + 1):
        for i in range(j - 1, -1, -1):    # last group order[i:j], padded to t[i] trees (t is descending)
            if i < j - 1 and t[i] * (j - i) > MAX_GROUP_TREES:
                break
            cost = best[i] + call + t[i] * (j - i) - (prefix[j] - prefix[i])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(t)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def merge_models(models: dict[int, str], n_features: int) -> list[MergedBooster]:
    """Per-class binary model texts (class index -> text) as a few :class:`MergedBooster`."""
    import lightgbm as lgb

    classes = sorted(models)
    parsed = [parse_model_text(models[c]) for c in classes]
    merged = []
    for group in merge_groups([len(m.trees) for m in parsed], n_features):
        members = [parsed[i] for i in group]
        merged.append(MergedBooster([classes[i] for i in group], np.array([m.sigmoid for m in members]),
                                    lgb.Booster(model_str=merged_model_text(members))))
    return merged


class LGBMHead(Head):
    """One LightGBM binary model per class, early-stopped on an inner group split.

    The binned Dataset is built once and re-labelled per class (binning 100k x 1k features is the
    costly part); a fixed negative subsample keeps rare classes cheap. Classes with no positive (or no
    positive in the inner training part) predict the prior and are listed in ``constant_classes_``.

    Soft targets (any label strictly between 0 and 1, e.g. pseudo-labels) switch the objective to
    LightGBM's ``cross_entropy``, which takes labels in [0, 1] (for 0/1 labels it is the binary log
    loss, but 0/1 runs keep ``binary``, so their models are unchanged). The subsampled negatives are
    then the rows labelled below :data:`SOFT_NEGATIVE`, and the kept ones are up-weighted by 1 / rate
    (an unbiased estimate of the full loss) instead of the odds correction, which assumes they are 0.
    """

    kind = "lgbm"
    params_type = LGBMParams

    def fit(self, X, Y, sample_weight=None, groups=None):
        import lightgbm as lgb

        _check_xy(X, Y, len(self.class_names), len(self.feature_names))
        p = self.params
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.prior_ = class_prior(Y, w)
        started = time.perf_counter()
        X = self._fit_projection(X)
        valid = inner_split(len(X), groups, p.inner_valid_fraction, p.seed)
        if valid.all() or not valid.any():
            valid = np.zeros(len(X), bool)
        train_rows = ~valid
        soft = is_soft(Y)
        base = {"objective": "cross_entropy" if soft else "binary", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
                "min_data_in_leaf": p.min_child_samples, "feature_fraction": effective_feature_fraction(p, X.shape[1]),
                "lambda_l2": p.lambda_l2, "max_bin": p.max_bin, "num_threads": p.n_jobs, "seed": p.seed,
                "deterministic": True, "force_col_wise": True, "verbosity": -1,  # col-wise: 1.2-1.4x here
                "use_quantized_grad": p.quantized_grad}
        data_params = {"max_bin": p.max_bin, "bin_construct_sample_cnt": p.bin_sample_rows,
                       "min_data_in_leaf": p.min_child_samples, "min_data_in_bin": p.min_data_in_bin,
                       "feature_pre_filter": False, "verbosity": -1}
        w_train = w[train_rows]
        dtrain = lgb.Dataset(X[train_rows], label=Y[train_rows, 0], weight=w_train, params=data_params,
                             free_raw_data=False).construct()
        dvalid = (lgb.Dataset(X[valid], label=Y[valid, 0], weight=w[valid], reference=dtrain,
                              params=data_params).construct() if valid.any() else None)
        binned = time.perf_counter()
        self.models_: dict[int, str] = {}
        self.neg_rate_ = np.ones(len(self.class_names))
        self.constant_classes_: list[str] = []
        todo = []
        for c, name in enumerate(self.class_names):
            y_tr = Y[train_rows, c]
            if y_tr.min() == y_tr.max():          # nothing to learn: all 0, all 1 or one soft value
                self.constant_classes_.append(name)
            else:
                todo.append(c)
        workers = max(1, min(p.n_jobs, len(todo))) if p.parallel_classes else 1
        if workers > 1:  # one LightGBM thread per class, n_jobs classes at once
            base["num_threads"] = 1

        def train_class(c: int) -> tuple[int, str, float]:
            y_tr = Y[train_rows, c]
            rows, rate = negative_sample(y_tr, p.neg_per_pos, p.seed + c, SOFT_NEGATIVE if soft else 0.0)
            if rows is None and workers == 1:
                data = dtrain
                data.set_label(y_tr)
            else:  # a subset shares the parent's bins: no re-binning (and is private to this thread)
                rows = np.arange(len(y_tr)) if rows is None else rows
                data = dtrain.subset(rows.tolist()).construct()
                data.set_label(y_tr[rows])
                w_rows = w_train[rows]
                if soft and rate < 1.0:   # importance weights: the kept negatives stand for all of them
                    w_rows = np.where(y_tr[rows] < SOFT_NEGATIVE, w_rows / rate, w_rows)
                    rate = 1.0
                data.set_weight(w_rows)
            callbacks, sets = [], []
            if dvalid is not None and 0 < Y[valid, c].sum() < valid.sum():
                dval = dvalid if workers == 1 else dvalid.subset(list(range(int(valid.sum())))).construct()
                dval.set_label(Y[valid, c])
                dval.set_weight(w[valid])
                sets = [dval]
                callbacks = [lgb.early_stopping(p.early_stopping_rounds, verbose=False)]
            booster = lgb.train(base, data, num_boost_round=p.n_estimators, valid_sets=sets, callbacks=callbacks)
            best = booster.best_iteration if callbacks and booster.best_iteration > 0 else p.n_estimators
            return c, booster.model_to_string(num_iteration=best), rate

        if workers == 1:
            results = [train_class(c) for c in todo]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:  # LightGBM releases the GIL while it trains
                results = list(pool.map(train_class, todo))
        for c, text, rate in results:
            self.models_[c] = text
            self.neg_rate_[c] = rate
        self._boosters = self._per_class = self._walk = None
        # where fit time goes: binning is paid once per fit, the rest grows with the classes
        self.fit_seconds_ = {"binning": binned - started, "classes": time.perf_counter() - binned}
        return self

    def _load_boosters(self) -> list[MergedBooster]:
        """The per-class models merged into a few multi-output LightGBM models (built once per head).

        One predict call per merged model instead of one per class: LightGBM pays a fixed cost per call and
        row (the row's features copied into its buffer), which dominated the teacher (234 classes x 5 folds
        = 1,170 calls per chunk; see :func:`merge_models` for the grouping and bench/pseudo_teacher_speed.py
        for the measurement). Only memory changes: the saved folder keeps one model text per class.
        """
        if getattr(self, "_boosters", None) is None:
            self._boosters = merge_models(self.models_, self._model_width())
        return self._boosters

    def _model_width(self) -> int:
        """Width of the matrix the models see (the PCA width with ``pca_components``)."""
        components = getattr(self, "components_", None)
        return len(self.feature_names) if components is None else components.shape[1]

    def _fit_projection(self, X: np.ndarray) -> np.ndarray:
        """With ``pca_components``: standardise and project on the top PCA axes (kept for predict)."""
        self.pca_mean_ = self.pca_scale_ = self.components_ = None
        k = self.params.pca_components
        if not k or k >= X.shape[1]:
            return X
        X = np.asarray(X, dtype=np.float32)
        self.pca_mean_, self.pca_scale_ = column_mean_std(X)
        self.pca_scale_[self.pca_scale_ < 1e-8] = 1.0
        sample = (X[:: max(1, len(X) // 20000)] - self.pca_mean_) / self.pca_scale_
        self.components_ = principal_axes(sample, k).T
        return self._project(X)

    def _project(self, X: np.ndarray) -> np.ndarray:
        if getattr(self, "components_", None) is None:
            return X
        return standardise(X, self.pca_mean_, self.pca_scale_, self.components_)

    def predict_proba(self, X):
        _check_xy(X, None, len(self.class_names), len(self.feature_names))
        X = self._project(X)
        out = np.tile(self.prior_.astype(np.float32), (X.shape[0], 1))
        classes, table = self._walk_table()
        if table is None or not len(X):
            return self._predict_merged(X, out)
        raw = walk(X, table, self.params.n_jobs)          # ~3x LightGBM's predict, the same numbers
        out[:, classes] = undo_negative_sampling(model_sigmoid(raw, table.sigmoid), self.neg_rate_[classes])
        return out

    def _predict_merged(self, X: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (the prior in every column) through LightGBM's own predictor on the merged models:
        the path where numba is missing or a model needs LightGBM (see models.tree_walk)."""
        for merged in self._load_boosters():
            raw = merged.booster.predict(X, raw_score=True, num_threads=self.params.n_jobs)
            raw = raw.reshape(len(X), len(merged.classes))     # one output comes back as (n,)
            for k, c in enumerate(merged.classes):
                out[:, c] = undo_negative_sampling(model_sigmoid(raw[:, k], merged.sigmoid[k]), self.neg_rate_[c])
        return out

    def _walk_table(self) -> tuple[list[int], TreeTable | None]:
        """``(classes, the trees of their models for models.tree_walk)``, built once; the table is None
        when numba is missing or a model needs LightGBM's own predictor."""
        if getattr(self, "_walk", None) is None:
            classes = sorted(self.models_)
            self._walk = (classes, tree_table([self.models_[c] for c in classes]) if compiled() is not None else None)
        return self._walk

    def _class_boosters(self) -> dict[int, tuple[object, float]]:
        """One ``(lightgbm.Booster, sigmoid)`` per class, as saved (the reference path; built once)."""
        import lightgbm as lgb

        if getattr(self, "_per_class", None) is None:
            self._per_class = {c: (lgb.Booster(model_str=text), parse_model_text(text).sigmoid)
                               for c, text in self.models_.items()}
        return self._per_class

    def _predict_per_class(self, X: np.ndarray) -> np.ndarray:
        """The reference :meth:`predict_proba`: one LightGBM model and predict call per class (the path
        before the merge), with the same sigmoid; the tests check the merged path equals it bit for bit."""
        _check_xy(X, None, len(self.class_names), len(self.feature_names))
        X = self._project(X)
        out = np.tile(self.prior_.astype(np.float32), (X.shape[0], 1))
        for c, (booster, sigmoid) in self._class_boosters().items():
            raw = booster.predict(X, raw_score=True, num_threads=self.params.n_jobs)
            out[:, c] = undo_negative_sampling(model_sigmoid(raw, sigmoid), self.neg_rate_[c])
        return out

    def _arrays(self):
        return {"prior": self.prior_, "neg_rate": self.neg_rate_, "pca_mean": self.pca_mean_,
                "pca_scale": self.pca_scale_, "components": self.components_}

    def _set_arrays(self, arrays):
        self.prior_, self.neg_rate_ = arrays["prior"], arrays["neg_rate"]
        self.pca_mean_, self.pca_scale_ = arrays.get("pca_mean"), arrays.get("pca_scale")
        self.components_ = arrays.get("components")

    def save(self, folder):
        folder = super().save(folder)
        models = folder / "lgbm"
        models.mkdir(exist_ok=True)
        for c, text in self.models_.items():
            with naming(models / f"class_{c:04d}.txt"):
                (models / f"class_{c:04d}.txt").write_text(text)
        with naming(folder / "constant_classes.json"):
            (folder / "constant_classes.json").write_text(json.dumps(self.constant_classes_))
        return folder


# The registry of head kinds: a new kind is a parameter dataclass and a Head subclass above plus one
# entry here (tests/test_head_contract.py then checks it).
HEAD_CLASSES: dict[str, type[Head]] = {h.kind: h for h in (PriorHead, ZeroShotHead, LinearHead, LGBMHead)}
PARAMS_BY_KIND: dict[str, type] = {kind: h.params_type for kind, h in HEAD_CLASSES.items()}


def make_head(kind: str, class_names: list[str], feature_names: list[str], overrides: dict | None = None) -> Head:
    params = make_params(kind, overrides)  # unknown kind or parameter -> HeadError naming the choices
    return HEAD_CLASSES[kind](params, class_names, feature_names)


def load_head(folder: str | Path) -> Head:
    """Load a head saved with :meth:`Head.save` (plain JSON, npz and LightGBM text files)."""
    folder = Path(folder)
    meta_path = folder / "head.json"
    if not meta_path.exists():
        raise HeadError(f"{folder}: not a saved head (no head.json)")
    meta = json.loads(meta_path.read_text())
    head = make_head(meta["kind"], meta["class_names"], meta["feature_names"], meta["params"])
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        head._set_arrays({k: arrays[k] for k in arrays.files})
    if isinstance(head, LGBMHead):
        head.models_ = {int(p.stem.split("_")[1]): p.read_text() for p in sorted((folder / "lgbm").glob("*.txt"))}
        head.constant_classes_ = json.loads((folder / "constant_classes.json").read_text())
        head._boosters = head._per_class = head._walk = None
    return head
