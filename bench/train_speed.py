"""Training speed of the heads at competition scale on synthetic features.

Synthetic long-tailed multi-label data (default 100k windows x 1,100 features, 234 classes, files of
12 windows grouped into 5 folds). Prints seconds for 5-fold linear and LightGBM training, and two
ratios measured side by side in this run:

* joint L-BFGS logistic regression vs scikit-learn's per-class ``LogisticRegression`` (same objective),
* LightGBM with one shared binned Dataset re-labelled per class vs a fresh Dataset per class.

Usage: python bench/train_speed.py [--windows 100000] [--features 1100] [--classes 234]
       [--lgbm-classes N]  (train LightGBM on N classes spread over the frequency ranking and
                            extrapolate to all, stated as such)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models.heads import make_head


def synthetic(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 32)).astype(np.float32)
    X = (latent @ rng.normal(size=(32, d)).astype(np.float32) + rng.normal(size=(n, d)).astype(np.float32))
    rates = 0.2 / np.arange(1, k + 1) ** 0.9  # long tail: head ~20%, tail ~0.1%
    logits = latent @ rng.normal(size=(32, k)).astype(np.float32)
    thresholds = np.array([np.quantile(logits[:, c], 1 - rates[c]) for c in range(k)])
    Y = (logits > thresholds).astype(np.float32)
    groups = np.arange(n) // 12
    return X, Y, groups


def five_fold(kind: str, X, Y, groups, overrides: dict) -> float:
    folds = groups % 5
    names = [f"c{i}" for i in range(Y.shape[1])]
    feats = [f"f{j}" for j in range(X.shape[1])]
    t0 = time.perf_counter()
    for f in range(5):
        train = folds != f
        head = make_head(kind, names, feats, overrides)
        head.fit(X[train], Y[train], groups=groups[train])
        head.predict_proba(X[~train])
    return time.perf_counter() - t0


def sklearn_per_class(X, Y, C: float) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    Z = StandardScaler().fit_transform(X)
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
    args = ap.parse_args()

    X, Y, groups = synthetic(args.windows, args.features, args.classes)
    print(f"data: {X.shape[0]} windows x {X.shape[1]} features, {Y.shape[1]} classes, "
          f"positives per class {int(Y.sum(0).max())}..{int(Y.sum(0).min())}")

    linear_s = five_fold("linear", X, Y, groups, {})
    print(f"linear 5-fold: {linear_s:.1f} s (target <= 120 s)")

    k = args.lgbm_classes or args.classes
    # an even sample over the frequency ranking: head classes cost more than tail ones (negative bagging)
    chosen = np.unique(np.linspace(0, args.classes - 1, k).round().astype(int))
    lgbm_s = five_fold("lgbm", X, Y[:, chosen], groups, {})
    scale = args.classes / len(chosen)
    label = "" if len(chosen) == args.classes else (
        f" (measured on {len(chosen)} classes spread over the frequency ranking, x{scale:.1f} extrapolated)")
    print(f"lightgbm 5-fold: {lgbm_s * scale:.1f} s{label} (target <= 1800 s)")

    n, kc = args.ratio_windows, args.ratio_classes
    Xs, Ys = X[:n], Y[:n, :kc]
    ours = five_fold("linear", Xs, Ys, groups[:n], {"pca_components": 0, "max_iter": 300}) / 5
    theirs = sklearn_per_class(Xs[: int(n * 0.8)], Ys[: int(n * 0.8)], 0.1)
    print(f"linear ratio sklearn-per-class / joint-lbfgs ({n} windows, {kc} classes): {theirs / ours:.2f}")
    shared = five_fold("lgbm", Xs, Ys, groups[:n], {"n_estimators": 100, "inner_valid_fraction": 0.0,
                                                     "neg_per_pos": 0.0}) / 5
    fresh = lgbm_fresh_dataset_per_class(Xs[: int(n * 0.85)], Ys[: int(n * 0.85)], 100)
    print(f"lgbm ratio fresh-dataset / shared-dataset ({n} windows, {kc} classes): {fresh / shared:.2f}")


if __name__ == "__main__":
    main()
