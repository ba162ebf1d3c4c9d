"""What fewer trees would cost a trained LightGBM head: its held-out fold mean when every class keeps only its
first K trees, beside the tree-row steps (and so the time) a pseudo-label teacher pays for them.

The head's fold models are cut, not retrained: LightGBM's first K trees are what ``n_estimators=K`` (same
seed and data) would have grown, so the cut fold models score as heads trained with K trees would, on the
same held-out windows (the labelled soundscape windows of each fold, scored as training scores them:
``models.metrics.fold_mean_std``). The run at K = every tree must print the head's recorded fold mean (a
check of the set-up, printed beside it). The teacher's cost per window is proportional to the trees kept
(the compiled walk, :mod:`models.tree_walk`), so its time is the measured full-teacher time x trees kept /
trees in all, printed when ``--teacher-s`` gives it (e.g. 425 s: the rehearsal's pseudo-lgbm stage).

Usage: python bench/lgbm_tree_budget.py --store DIR --head-id lgbm-... [--trees 25,50,100,150,200]
       [--teacher-s 425]
  e.g. python bench/lgbm_tree_budget.py --store work/rehearsal/store --head-id best --teacher-s 425
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from featurestore.store import FeatureStore
from models.experiments import resolve_head_id
from models.frame import build_frame
from models.metrics import fold_mean_std
from models.tree_walk import walk
from stack.bundle import head_folder, load_head_dir


def first_trees(table, k: int):
    """The tree table with each output's first ``k`` trees (trees are stored in order per output)."""
    rank = np.zeros(len(table.output), np.int64)
    seen: dict[int, int] = {}
    for t, o in enumerate(table.output.tolist()):
        rank[t] = seen.get(o, 0)
        seen[o] = rank[t] + 1
    keep = rank < k
    return dataclasses.replace(table, root=table.root[keep], depth=table.depth[keep], output=table.output[keep])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("Usage:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--head-id", required=True, help="a LightGBM head id, or best")
    ap.add_argument("--trees", default="25,50,100,150,200", help="K values, comma-joined")
    ap.add_argument("--teacher-s", type=float, default=None, help="the full teacher's measured seconds")
    args = ap.parse_args(argv)
    ks = sorted({int(k) for k in args.trees.split(",")})
    with FeatureStore.open(args.store, create=False, read_only=True) as fs:
        head_id = resolve_head_id(fs, args.head_id)
        recorded, fold_version = fs.first("SELECT fold_mean, fold_version FROM experiments WHERE head_id = ?",
                                          [head_id])
        fold_of = dict(fs.rows("SELECT f.window_id, f.fold FROM folds f JOIN window_labels l USING (window_id) "
                               "WHERE f.source = 'train_soundscapes' AND f.fold_version = ?", [fold_version]))
        bundle = load_head_dir(head_folder(fs.root, head_id))
        frame = build_frame(fs, bundle.config.frame, window_ids=sorted(fold_of))
    folds = np.array([fold_of[w] for w in frame.window_ids])
    heads = bundle.folds
    if heads[0].kind != "lgbm":
        raise SystemExit(f"{head_id} is a {heads[0].kind} head: this bench cuts LightGBM trees")
    # the walk table and the feature projection are the head's own (what predict_proba walks)
    tables = [h._walk_table() for h in heads]
    if any(t is None for _, t in tables):
        raise SystemExit("a fold model needs LightGBM's own predictor (categorical/missing-value splits): not cut here")
    total = sum(len(t.root) for _, t in tables)
    print(f"head {head_id}: {len(heads)} fold models, {total:,} trees, recorded fold mean {recorded:.4f}; "
          f"{len(frame.window_ids)} labelled soundscape windows")
    for k in ks:
        scores = np.zeros(frame.Y.shape)
        kept = 0
        for f, (head, (classes, table)) in enumerate(zip(heads, tables, strict=True)):
            cut = first_trees(table, k)
            kept += len(cut.root)
            held = folds == f
            # raw scores: a class's sigmoid and negative-sampling rate are monotone, so its AUC is unchanged
            scores[np.ix_(held, classes)] = walk(head._project(frame.X[held]), cut)
        mean, std, _ = fold_mean_std(frame.Y, scores, folds)
        teacher = f"; teacher {args.teacher_s * kept / total:6.0f} s" if args.teacher_s else ""
        print(f"K={k:4d}: {kept / len(heads):9,.0f} trees a fold ({kept / total:5.1%}); "
              f"fold mean {mean:.4f} +/- {std:.4f}{teacher}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
