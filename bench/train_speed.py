"""Training speed of the heads at competition scale on synthetic features.

Synthetic long-tailed multi-label data (default 100k windows x 1,100 features, 234 classes, files of
12 windows grouped into 5 folds). Prints seconds for 5-fold linear and LightGBM training with the
default parameters, then ratios measured side by side in this run on a smaller slice:

* linear, no PCA: scikit-learn's per-class ``LogisticRegression`` vs our joint L-BFGS (same objective),
* linear, default PCA-256: scikit-learn PCA + per-class ``LogisticRegression`` vs our whitened solve,
* LightGBM: a fresh Dataset per class vs one shared binned Dataset re-labelled per class,
* LightGBM: the previous defaults (``OLD_LGBM_DEFAULTS``: 63 bins, one class at a time on 2 OpenMP
  threads, 20% of the features per tree, 20 negatives per positive) vs the current defaults, with the held-out AUC of
  each on a noisy-label variant (AUC ~0.95, not ~1, so a quality loss would show); the runs alternate
  (old, new, new, old, ...) so a change in machine load hits both.

Usage: python bench/train_speed.py [--windows 100000] [--features 1100] [--classes 234]
       [--lgbm-classes N]  (train LightGBM on N classes spread over the frequency ranking and
                            extrapolate to all, stated as such)
       [--lgbm-only]       (skip the linear head)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models.heads import make_head

# LGBMParams values before issue 9 (what the current defaults are compared against)
OLD_LGBM_DEFAULTS = {"max_bin": 63, "quantized_grad": False, "parallel_classes": False,
                     "feature_fraction": 0.2, "neg_per_pos": 20.0}


def synthetic(n: int, d: int, k: int, seed: int = 0, noisy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features from a 32-d latent; labels thresholded from latent scores (``noisy``: weak signal + noise)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 32)).astype(np.float32)
    signal = 0.3 if noisy else 1.0
    X = (latent @ rng.normal(size=(32, d)).astype(np.float32) * signal + rng.normal(size=(n, d)).astype(np.float32))
    rates = 0.2 / np.arange(1, k + 1) ** 0.9  # long tail: head ~20%, tail ~0.1%
    logits = latent @ rng.normal(size=(32, k)).astype(np.float32)
    if noisy:
        logits = logits * 0.25 + rng.normal(size=(n, k)).astype(np.float32)
    thresholds = np.array([np.quantile(logits[:, c], 1 - rates[c]) for c in range(k)])
    Y = (logits > thresholds).astype(np.float32)
    groups = np.arange(n) // 12
    return X, Y, groups


def five_fold(kind: str, X, Y, groups, overrides: dict, folds_to_run: int = 5,
              class_scale: float = 1.0) -> tuple[float, float]:
    """Seconds to train + predict ``folds_to_run`` of 5 grouped folds, and the mean per-class held-out AUC.

    ``class_scale`` extrapolates a run on a sample of the classes: the head's per-class seconds are
    scaled, its once-per-fit seconds (LightGBM binning) are not.
    """
    from sklearn.metrics import roc_auc_score

    folds = groups % 5
    names = [f"c{i}" for i in range(Y.shape[1])]
    feats = [f"f{j}" for j in range(X.shape[1])]
    seconds, aucs = 0.0, []
    for f in range(folds_to_run):
        train = folds != f
        t0 = time.perf_counter()
        head = make_head(kind, names, feats, overrides)
        head.fit(X[train], Y[train], groups=groups[train])
        proba = head.predict_proba(X[~train])
        elapsed = time.perf_counter() - t0
        # what was timed is what is counted: every held-out window x every class
        assert proba.shape == (int((~train).sum()), Y.shape[1]), (proba.shape, int((~train).sum()), Y.shape[1])
        split = getattr(head, "fit_seconds_", None)
        seconds += elapsed if split is None else elapsed + split["classes"] * (class_scale - 1.0)
        aucs += [roc_auc_score(Y[~train, c], proba[:, c]) for c in range(Y.shape[1]) if 0 < Y[~train, c].sum() < (~train).sum()]
    return seconds, float(np.mean(aucs))


def sklearn_per_class(X, Y, C: float, pca_components: int = 0) -> float:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    Z = StandardScaler().fit_transform(X)
    if pca_components:
        Z = PCA(pca_components, random_state=0).fit_transform(Z)
    for c in range(Y.shape[1]):
        LogisticRegression(C=C, max_iter=300, class_weight="balanced").fit(Z, Y[:, c])
    return time.perf_counter() - t0


def lgbm_fresh_dataset_per_class(X, Y, n_estimators: int) -> float:
    import lightgbm as lgb

    t0 = time.perf_counter()
    for c in range(Y.shape[1]):
        data = lgb.Dataset(X, label=Y[:, c], params={"max_bin": 63, "verbosity": -1})
        lgb.train({"objective": "binary", "num_leaves": 15, "feature_fraction": 0.5, "max_bin": 63,
                   "num_threads": 2, "verbosity": -1}, data, num_boost_round=n_estimators)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=1100)
    ap.add_argument("--classes", type=int, default=234)
    ap.add_argument("--lgbm-classes", type=int, default=0, help="0 = all classes")
    ap.add_argument("--ratio-windows", type=int, default=20_000, help="size of the side-by-side ratio runs")
    ap.add_argument("--ratio-classes", type=int, default=8)
    ap.add_argument("--noisy-classes", type=int, default=16, help="classes of the old/new LightGBM comparison")
    ap.add_argument("--lgbm-only", action="store_true", help="skip the linear head's runs")
    ap.add_argument("--ratio-repeats", type=int, default=2, help="alternating runs of old and new LightGBM defaults")
    args = ap.parse_args()

    X, Y, groups = synthetic(args.windows, args.features, args.classes)
    print(f"data: {X.shape[0]} windows x {X.shape[1]} features, {Y.shape[1]} classes, "
          f"positives per class {int(Y.sum(0).max())}..{int(Y.sum(0).min())}")

    if not args.lgbm_only:
        linear_s, _ = five_fold("linear", X, Y, groups, {})
        print(f"linear 5-fold: {linear_s:.1f} s (target <= 120 s)", flush=True)

    k = args.lgbm_classes or args.classes
    # an even sample over the frequency ranking: head classes cost more than tail ones (more rows)
    chosen = np.unique(np.linspace(0, args.classes - 1, k).round().astype(int))
    scale = args.classes / len(chosen)
    lgbm_s, _ = five_fold("lgbm", X, Y[:, chosen], groups, {}, class_scale=scale)
    label = "" if len(chosen) == args.classes else (
        f" (measured on {len(chosen)} classes spread over the frequency ranking; per-class seconds"
        f" x{scale:.1f} extrapolated, binning once per fold)")
    print(f"lightgbm 5-fold: {lgbm_s:.1f} s{label} (target <= 600 s)", flush=True)

    n, kc = args.ratio_windows, args.ratio_classes
    Xs, Ys, gs = X[:n], Y[:n, :kc], groups[:n]
    if not args.lgbm_only:
        train = slice(0, int(n * 0.8))
        ours = five_fold("linear", Xs, Ys, gs, {"pca_components": 0, "max_iter": 300}, folds_to_run=1)[0]
        theirs = sklearn_per_class(Xs[train], Ys[train], 0.1)
        print(f"linear ratio, no PCA: sklearn-per-class / joint-lbfgs ({n} windows, {kc} classes): {theirs / ours:.2f}")
        ours = five_fold("linear", Xs, Ys, gs, {}, folds_to_run=1)[0]
        theirs = sklearn_per_class(Xs[train], Ys[train], 0.1, pca_components=256)
        print(f"linear ratio, PCA-256: sklearn PCA+per-class / whitened joint-lbfgs: {theirs / ours:.2f}")

    shared = five_fold("lgbm", Xs, Ys, gs, {**OLD_LGBM_DEFAULTS, "n_estimators": 100, "inner_valid_fraction": 0.0,
                                            "neg_per_pos": 0.0, "feature_fraction": 0.5}, folds_to_run=1)[0]
    fresh = lgbm_fresh_dataset_per_class(Xs[: int(n * 0.8)], Ys[: int(n * 0.8)], 100)
    print(f"lgbm ratio fresh-dataset / shared-dataset ({n} windows, {kc} classes): {fresh / shared:.2f}")

    Xn, Yn, gn = synthetic(args.ratio_windows * 3, args.features, args.classes, seed=1, noisy=True)
    spread = np.unique(np.linspace(0, args.classes - 1, args.noisy_classes).round().astype(int))
    runs = {"old": [0.0, 0.0], "new": [0.0, 0.0]}
    order = [("old", "new") if r % 2 == 0 else ("new", "old") for r in range(args.ratio_repeats)]
    for name in [v for pair in order for v in pair]:
        s_, auc = five_fold("lgbm", Xn, Yn[:, spread], gn, OLD_LGBM_DEFAULTS if name == "old" else {}, folds_to_run=1)
        runs[name][0] += s_
        runs[name][1] = auc  # deterministic: every repeat gives the same AUC
    (old_s, old_auc), (new_s, new_auc) = runs["old"], runs["new"]
    print(f"lgbm ratio old defaults / new defaults ({len(Xn)} noisy windows, {len(spread)} classes, "
          f"{args.ratio_repeats} alternating run(s) each): {old_s / new_s:.2f}; "
          f"held-out AUC {old_auc:.4f} (old) vs {new_auc:.4f} (new)")


if __name__ == "__main__":
    main()
