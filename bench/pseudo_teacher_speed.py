"""Teacher prediction from stored features at the scale of one pseudo-label round, beside reading them.

One round labels 10,000 unlabelled soundscapes = 120,000 windows x 234 classes (``--windows``,
``--classes``). :func:`students.pseudo.run_pseudo` does it in chunks of ``CHUNK_WINDOWS`` (12,000)
windows, each chunk one :meth:`students.pseudo.Teacher.predict` call: read the chunk's features from the
store (:func:`embed.features.load_window_features` with the ``window_ids`` subset, the teacher's
extractor version pinned), then ``predict_proba`` of every fold model, then the mean over folds.

Set-up (synthetic but real-shaped, through the real code):

* a scratch store holding the whole pool - ``--windows`` soundscape windows of ``--dim``-d float16
  embeddings in ``birdnet_frames``, written as the embed job writes them (``bench/store_scale.py``'s
  rows: :func:`embed.job.frame_rows`, one part per :func:`embed.job.plan_tasks` task) - since each
  chunk's read scans the table, the table must have its real size for the per-chunk read to be real;
* two teachers, saved with :class:`models.bundle.BundleWriter` into ``<store>/heads/`` as training
  saves them: ``linear`` (:class:`models.heads.LinearHead`, default params: PCA 256) and ``lgbm``
  (:class:`models.heads.LGBMHead`, default :class:`~models.heads.LGBMParams`), ``--folds`` fold models
  each, every fold fitted on its own ``--fit-rows`` random rows with a learnable label for every class
  (each class is a noisy threshold on 8 of the features, ~3% positives), so every class gets a booster
  and early stopping keeps a realistic number of trees (printed, with the time of one-tree predict calls -
  LightGBM's fixed per-call, per-row cost - and an estimate at the full 200 trees per class).

Measured on ``--measure`` windows (default one chunk, 12,000 windows, from the middle of the pool),
alternated, median of ``--repeats``: the feature read alone, the per-fold ``predict_proba`` calls
alone (on the features just read), and the whole ``Teacher.predict``; each extrapolated linearly
to the pool (x windows / measure: the round is that many chunks of the same cost). Printed: the
measured seconds, the extrapolation, and the prediction/read ratio. For the LightGBM teacher, the per-class
path (one booster and predict call per class and fold, as before the models were merged at load:
:meth:`models.heads.LGBMHead._predict_per_class`) is timed in the same alternation as
``predict_proba``: one side-by-side line with the ratio, whether the probabilities are bit-identical, and the
teacher's minutes before (Teacher.predict - merged + per-class) and after; likewise the merged models
(``LGBMHead._predict_merged``, the fallback without numba) against the compiled tree walk that
``predict_proba`` now takes (models.tree_walk). Nothing is asserted.

Usage: python bench/pseudo_teacher_speed.py [--windows 120000] [--measure 12000] [--folds 5] [--repeats 3]
  e.g. python bench/pseudo_teacher_speed.py --windows 24000 --folds 2   (a quick run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_scale import (  # noqa: E402
    SyntheticExtractor,
    embed_chunks,
    soundscape_files,
    write_frames,
)
from store_scale import side_by_side as alternated  # noqa: E402

from embed.features import load_window_features  # noqa: E402
from featurestore.store import FeatureStore  # noqa: E402
from featurestore.windows import SOUNDSCAPE, window_id  # noqa: E402
from models.bundle import HEADS_DIR, BundleWriter, HeadConfig
from models.frame import (
    FeatureVersions,
    FrameSpec,  # noqa: E402
)
from models.heads import LGBMHead, make_head, make_params  # noqa: E402
from models.pseudo_labels import FULL_FOLD
from models.training import TRAINING_VERSION
from students.pseudo import CHUNK_WINDOWS, Teacher

TARGET_S = 120.0
SIGNAL_FEATURES = 8       # features each synthetic class depends on
POSITIVE_RATE = 0.03


def build_store(root: Path, ex: SyntheticExtractor, n_windows: int, seed: int) -> list[str]:
    """The pool's embeddings written as the embed job writes them; returns the window ids, sorted."""
    rng = np.random.default_rng(seed)
    files = soundscape_files(n_windows, seed)
    chunks = embed_chunks(files, n_windows)
    with FeatureStore.open(root) as store:
        write_frames(store, ex, chunks, rng)
    return sorted(window_id(SOUNDSCAPE, f, s) for chunk in chunks for f, starts in chunk for s in starts)


def synthetic_task(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random float16-rounded features and a learnable 0/1 label per class (~3% positives each)."""
    X = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16).astype(np.float32)
    signal = np.random.default_rng(12345)          # the same classes in every fold
    Y = np.zeros((n, classes), np.float32)
    for c in range(classes):
        cols = signal.choice(dim, SIGNAL_FEATURES, replace=False)
        score = X[:, cols] @ signal.standard_normal(SIGNAL_FEATURES) + 0.5 * rng.standard_normal(n)
        Y[:, c] = score > np.quantile(score, 1.0 - POSITIVE_RATE)
    return X, Y


def train_teacher(store_root: Path, ex: SyntheticExtractor, kind: str, class_names: list[str], folds: int,
                  fit_rows: int, seed: int) -> tuple[str, float]:
    """Fit ``folds`` heads of ``kind`` and save them as a bundle; returns (head id, fit seconds)."""
    params = make_params(kind)
    spec = FrameSpec("birdnet")
    config = HeadConfig(kind=kind, params=asdict(params), frame=spec, fold_version="synthetic", data_version=None,
                        feature_versions=FeatureVersions({ex.name: ex.version}, spec.pooling), seed=seed,
                        replay=False, training_version=TRAINING_VERSION)
    writer = BundleWriter(store_root / HEADS_DIR, config, {ex.name: ex.params()})
    names = [f"birdnet:{i}" for i in range(ex.dim)]
    t0 = time.perf_counter()
    for k in range(folds):
        rng = np.random.default_rng(seed + k)
        X, Y = synthetic_task(fit_rows, ex.dim, len(class_names), rng)
        groups = np.arange(fit_rows) // 12          # 12 windows per file, for the inner early-stopping split
        head = make_head(kind, class_names, names).fit(X, Y, groups=groups)
        writer.add_fold(k, head, [f"fit/{k}/{i}" for i in range(fit_rows)])
    fit_s = time.perf_counter() - t0
    writer.publish()
    return config.head_id, fit_s


def side_by_side(runs: dict[str, Callable[[], object]], repeats: int, warm: tuple[str, ...]) -> dict[str, float]:
    """Median seconds of each run, alternated (after one warm-up of ``warm``) so machine load hits all of them."""
    for name in warm:
        runs[name]()
    return alternated(runs, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=120_000, help="windows in one round (default 120,000)")
    ap.add_argument("--measure", type=int, default=CHUNK_WINDOWS,
                    help=f"windows measured (default {CHUNK_WINDOWS:,}: one run_pseudo chunk)")
    ap.add_argument("--dim", type=int, default=1024, help="feature dimension (default 1024)")
    ap.add_argument("--classes", type=int, default=234, help="classes (default 234)")
    ap.add_argument("--folds", type=int, default=5, help="fold models per teacher (default 5)")
    ap.add_argument("--fit-rows", type=int, default=3000, help="random rows each fold model is fitted on")
    ap.add_argument("--kinds", default="linear,lgbm", help="teacher head kinds (default linear,lgbm)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch store")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teacher-speed-")) if args.out is None else args.out
    if (work / "store").exists():
        raise SystemExit(f"{work}/store exists; pick an empty --out")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores; "
          f"scratch {work}")
    try:
        run(args, work / "store")
    finally:
        if not args.keep:
            shutil.rmtree(work / "store", ignore_errors=True)
            if args.out is None:
                shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    ex = SyntheticExtractor(args.dim)
    t0 = time.perf_counter()
    pool = build_store(root, ex, args.windows, args.seed)
    print(f"store: {len(pool):,} windows x {args.dim}-d float16 written as the embed job writes them "
          f"({time.perf_counter() - t0:.0f} s)")
    class_names = [f"class_{c:03d}" for c in range(args.classes)]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    heads = {}
    for kind in kinds:
        heads[kind], fit_s = train_teacher(root, ex, kind, class_names, args.folds, args.fit_rows, args.seed)
        print(f"teacher {heads[kind]}: {args.folds} fold models x {args.classes} classes fitted on "
              f"{args.fit_rows:,} random rows each ({fit_s:.0f} s)")
    a = max(0, (len(pool) - args.measure) // 2)
    chunk = pool[a: a + args.measure]
    scale = args.windows / len(chunk)
    minutes = {}
    with FeatureStore.open(root, read_only=True) as store:
        for kind in kinds:
            teacher = Teacher(store, heads[kind], class_names)
            bundle = teacher.bases[0]
            fold_models = bundle.folds
            X = load_window_features(store, "birdnet", "mean", window_ids=chunk,
                                     versions={ex.name: ex.version})[1]
            shapes = set()
            lgbm = isinstance(fold_models[0], LGBMHead)
            runs = {
                "read": lambda: load_window_features(store, "birdnet", "mean", window_ids=chunk,
                                                     versions={ex.name: ex.version}),
                "predict": lambda fm=fold_models, x=X: [h.predict_proba(x) for h in fm],
                "teacher": lambda t=teacher, s=shapes: s.add(t.predict(chunk)[FULL_FOLD].shape),
            }
            if lgbm:   # the paths before the walk, alternated with it: merged models, one booster per class
                runs["per-class"] = lambda fm=fold_models, x=X: [h._predict_per_class(x) for h in fm]
                runs["merged"] = lambda fm=fold_models, x=X: [
                    h._predict_merged(x, np.tile(h.prior_.astype(np.float32), (len(x), 1))) for h in fm]
            # warm-up: the first predict loads the boosters (once per run_pseudo run, not per chunk);
            # the Teacher shares those fold models
            t = side_by_side(runs, args.repeats, warm=("read", "predict") + (("per-class", "merged") if lgbm else ()))
            if shapes != {(len(chunk), args.classes)}:
                raise SystemExit(f"Teacher.predict gave {shapes}, not {(len(chunk), args.classes)}")
            minutes[kind] = t["teacher"] * scale / 60
            extra = ""
            if lgbm:
                boosters = [b for h in fold_models for b, _ in h._class_boosters().values()]
                merged = sum(len(h._load_boosters()) for h in fold_models)
                trees = np.mean([b.num_trees() for b in boosters])
                max_trees = fold_models[0].params.n_estimators
                same = all(np.array_equal(h.predict_proba(X[:500]), h._predict_per_class(X[:500])) for h in fold_models)
                # the cost of a predict call that evaluates one tree: LightGBM's per-call, per-row work
                # (one booster per class and fold), which more trees do not add to; timed on fold 0's boosters
                first = [b for b, _ in fold_models[0]._class_boosters().values()]
                t0 = time.perf_counter()
                for b in first:
                    b.predict(X, num_iteration=1, num_threads=fold_models[0].params.n_jobs)
                fixed = (time.perf_counter() - t0) / len(first) * len(boosters)
                per_tree = max(0.0, t["per-class"] - fixed) / trees
                extra = (f"; {len(boosters)} boosters, {trees:.0f} trees each on average (early stopping); "
                         f"per-class path: one-tree predict calls alone {fixed:.1f} s ({100 * fixed / t['per-class']:.0f}% "
                         f"of its predict_proba); at {max_trees} trees/class: "
                         f"~{(fixed + per_tree * max_trees) * scale / 60:.1f} min")
            print(f"{kind}: measured on {len(chunk):,} windows: read {t['read']:.2f} s, {args.folds} folds' "
                  f"predict_proba {t['predict']:.2f} s, Teacher.predict {t['teacher']:.2f} s; x{scale:g} -> "
                  f"read {t['read'] * scale / 60:.2f} min, predict {t['predict'] * scale / 60:.2f} min, "
                  f"teacher {minutes[kind]:.2f} min; prediction/read ratio {t['predict'] / t['read']:.2f}{extra}")
            if lgbm:
                before = (t["teacher"] - t["predict"] + t["per-class"]) * scale / 60
                merged_min = (t["teacher"] - t["predict"] + t["merged"]) * scale / 60
                print(f"{kind} predict_proba, {args.folds} folds on {len(chunk):,} windows, side by side: per-class "
                      f"path {t['per-class']:.2f} s ({len(boosters)} predict calls), merged models "
                      f"{t['merged']:.2f} s ({merged} calls), compiled tree walk (predict_proba) {t['predict']:.2f} s: "
                      f"walk {t['per-class'] / t['predict']:.2f}x the per-class path, {t['merged'] / t['predict']:.2f}x "
                      f"the merged one; {'bit-identical' if same else 'DIFFERENT'} probabilities; teacher "
                      f"{before:.2f} min per-class, {merged_min:.2f} min merged -> {minutes[kind]:.2f} min walked")
    print(f"(median of {args.repeats} alternated repeats after a warm-up of the read and the fold models; "
          f"extrapolated linearly from {len(chunk):,} to {args.windows:,} windows)")
    shown = ", ".join(f"{k} {m:.1f} min" for k, m in minutes.items())
    print(f"teacher prediction, {args.windows:,} windows x {args.classes} classes: {shown} "
          f"(target {TARGET_S / 60:.0f} min)")


if __name__ == "__main__":
    main()
