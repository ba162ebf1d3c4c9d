"""Seconds per stack + post-processing evaluation at competition scale, on synthetic OOF.

One *evaluation* is what an Optuna trial of the stacker will cost: :func:`stack.stackers.cross_validate_stack`
(5 folds: fit the level-2 model on the other folds, predict the held-out fold), the post-processing
chain, and the fold-mean score. Default scale: 739 labelled soundscape windows (62 files of 12
windows, 5 left out as unlabelled gaps) x 234 classes x 5 heads, 5 folds by file, sites and hours.
The reference is one base-head scoring pass (:func:`stack.stackers.score_oof` of one head's OOF: the
fold mean the training pipeline computes for a head); both are timed in the same run, alternating,
so a change in machine load hits both. Printed: median seconds of each configuration and its ratio
to the reference.

Usage: python bench/stack_speed.py [--windows 739] [--classes 234] [--heads 5] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa

from stack.inputs import align_oof
from stack.stackers import cross_validate_stack, score_oof

GROUPS = (("Aves", 0.70), ("Amphibia", 0.14), ("Insecta", 0.12), ("Mammalia", 0.02), ("Reptilia", 0.02))
POST = [("smooth", {"kernel": [0.25, 0.5, 0.25], "by_group": {"Amphibia": {"kernel": [1, 1, 1, 1, 1]},
                                                             "Insecta": {"kernel": [1, 1, 1, 1, 1]}}}),
        ("filescale", {"a": 0.5, "top_k": 2}),
        ("power", {"gamma": 0.8})]


def synthetic_inputs(n_windows: int, n_classes: int, n_heads: int, seed: int = 0):
    """Aligned inputs: files of 12 windows, sparse labels persisting in time, heads = noisy label logits."""
    rng = np.random.default_rng(seed)
    n_files = -(-n_windows // 12)
    ids, files = [], []
    for f in range(n_files):
        for s in range(12):
            ids.append(f"train_soundscapes/S{f % 9:02d}_{f:04d}.ogg@{s * 5}")
            files.append(f)
    drop = rng.choice(len(ids), len(ids) - n_windows, replace=False)       # unlabelled gaps
    keep = np.setdiff1d(np.arange(len(ids)), drop)
    ids = [ids[i] for i in keep]
    files = np.array(files)[keep]
    classes = [f"c{c:03d}" for c in range(n_classes)]
    cut = np.cumsum([int(round(share * n_classes)) for _, share in GROUPS])
    groups = [next(g for (g, _), end in zip(GROUPS, cut, strict=True) if c < end) if c < cut[-1] else "Aves"
              for c in range(n_classes)]
    present = rng.random((n_files, n_classes)) < 0.03                      # species present in a file
    Y = (present[files] & (rng.random((len(ids), n_classes)) < 0.6)).astype(np.float32)
    labels = {w: [classes[c] for c in np.flatnonzero(Y[i])] for i, w in enumerate(ids)}
    fold = files % 5
    tables = {}
    for h in range(n_heads):
        z = (Y * 2.0 - 1.0) * rng.uniform(0.5, 2.0) + rng.normal(scale=1.5, size=Y.shape) - 3.0
        cols = {"window_id": pa.array(ids), "head_id": pa.array([f"h{h}"] * len(ids)),
                "fold": pa.array(fold, pa.int32()), "source": pa.array(["train_soundscapes"] * len(ids))}
        for c, name in enumerate(classes):
            cols[name] = pa.array((1.0 / (1.0 + np.exp(-z[:, c]))).astype(np.float32))
        tables[f"h{h}"] = pa.table(cols)
    meta = {f"train_soundscapes/S{f % 9:02d}_{f:04d}.ogg": (f"S{f % 9:02d}", int(f % 24)) for f in range(n_files)}
    return align_oof(tables, classes, groups, labels, file_meta=meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=739)
    ap.add_argument("--classes", type=int, default=234)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    data = synthetic_inputs(args.windows, args.classes, args.heads)
    # what is timed is what is printed: the requested windows, classes and heads
    assert (data.n, len(data.class_names), len(data.heads)) == (args.windows, args.classes, args.heads), (
        data.n, len(data.class_names), len(data.heads))
    cv = cross_validate_stack(data, "ridge", {})
    assert cv.oof.shape == (data.n, args.classes) and sum(len(w) for w in cv.predicted_windows.values()) == data.n, (
        "the level-2 CV did not predict every window once")
    print(f"{data.n} windows x {len(data.class_names)} classes x {len(data.heads)} heads, "
          f"{len(set(data.folds.tolist()))} folds")
    configs = {
        "base-head scoring pass (reference)": lambda: score_oof(data, data.P[0]),
        "blend logit, no post": lambda: cross_validate_stack(data, "blend", {"method": "logit"}),
        "blend rank + post (smooth, filescale, power)": lambda: cross_validate_stack(data, "blend", {"method": "rank"},
                                                                                     POST),
        "ridge (context + file stats), no post": lambda: cross_validate_stack(data, "ridge", {}),
        "ridge + site/hour priors + post": lambda: cross_validate_stack(
            data, "ridge", {"site_prior": True, "hour_prior": True}, POST),
        "same, features rebuilt (cache cleared)": lambda: (data._cache.clear(), cross_validate_stack(
            data, "ridge", {"site_prior": True, "hour_prior": True}, POST)),
    }
    for run in configs.values():       # warm-up: feature cache, imports
        run()
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, run in configs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["base-head scoring pass (reference)"])
    width = max(map(len, configs))
    print(f"{'configuration':<{width}}  {'s / eval':>9}  {'x ref':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<{width}}  {med:9.3f}  {med / ref:7.1f}")
    print(f"(median of {args.repeats} runs; level-2 features are cached per input set and feature settings, "
          "so a trial pays the feature build only when it changes them: last row)")


if __name__ == "__main__":
    main()
