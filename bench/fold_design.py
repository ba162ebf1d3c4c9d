"""Fold design on the real soundscape labels: which soundscape grouping gives usable folds.

The real ``train_soundscapes_labels.csv`` (739 labelled 5-s windows, 66 files, 9 sites) is ingested
into a temporary store with the project's own ingest; every candidate grouping is then folded with
the same code ``pipelines.folds`` runs (``collect_units`` -> ``merge_duplicate_groups`` ->
``assign_units``), without writing fold tables. Per candidate and fold it prints the labelled
windows, files, sites, classes with >= 1 positive and classes *scorable* there (>= 1 positive and
>= 1 negative), then a summary: fold-size spread, how much near-identical audio straddles folds
(sites, calendar site-days, site-nights = noon-to-noon days, and same-site file pairs < 24 h apart
in different folds), and the score of two
FIXED heads computed from labels alone (the soundscape audio is not shipped, so no features exist):

* ``hour``: per-class rate by UTC hour of the file, learned on the training folds only, shrunk to
  the Laplace-smoothed class base rate ``(pos + 1) / (n + 2)`` with ``ALPHA`` pseudo-windows;
* ``site+hour``: the same by (site, hour), shrunk to the hour prior (an unseen site = the hour prior),
  so it profits exactly from what a split site leaks (its other days sit in the training folds).

Scores are the competition metric per held-out fold (macro ROC-AUC over classes with a positive and a
negative in that fold; ``models.metrics.fold_mean_std``) as mean ± population std, and pooled over the
out-of-fold predictions (``competition_auc``). The leave-one-site-out shadow split is "the harder
number". ``seeds`` is the range of the hour head's fold mean over ``--seeds`` fold seeds.

Usage: python bench/fold_design.py [--data ../shared/data/bc2026] [--k 5] [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from featurestore.folds import (
    FoldParams,
    assign_units,
    collect_units,
    merge_duplicate_groups,
    pcm_hashes,
    soundscape_time,
)
from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore
from featurestore.windows import window_id
from models.metrics import competition_auc, fold_mean_std

ALPHA = 12.0          # pseudo-windows (one file's worth) pulling a sparse cell to its parent rate
NEAR_HOURS = 24.0     # same-site files closer than this count as near-identical neighbours
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bc2026"


def candidates(k: int) -> list[tuple[str, FoldParams]]:
    base = FoldParams(k=k)
    return [
        ("site", replace(base, soundscape_group="site")),
        ("site_date 1d", replace(base, soundscape_group="site_date", date_block_days=1)),
        ("site_date 7d", replace(base, soundscape_group="site_date", date_block_days=7)),
        ("site_date 14d", replace(base, soundscape_group="site_date", date_block_days=14)),
        ("site_date 30d", replace(base, soundscape_group="site_date", date_block_days=30)),
        *[(f"site_split {days}d", replace(base, soundscape_group="site_split", date_block_days=days))
          for days in (1, 7, 14, 30)],
        ("site_split 7d 0h", replace(base, soundscape_group="site_split", date_block_days=7, day_start_hour=0)),
    ]


# ---------------------------------------------------------------------------- data
def labelled_windows(store: FeatureStore) -> tuple[list[dict], list[str], np.ndarray]:
    """The labelled soundscape windows (deduplicated by ingest), the classes and the 0/1 matrix."""
    rows = store.sql("SELECT filename, site, hour, start_s, labels FROM soundscape_labels "
                     "ORDER BY filename, start_s").to_pylist()
    for r in rows:
        r["window_id"] = window_id("train_soundscapes", r["filename"], r["start_s"])
        r["time"] = soundscape_time(r["filename"])
    classes = sorted({c for r in rows for c in r["labels"]})
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(rows), len(classes)), dtype=np.int8)
    for i, r in enumerate(rows):
        y[i, [index[c] for c in r["labels"]]] = 1
    return rows, classes, y


def fold_assignment(store: FeatureStore, params: FoldParams) -> tuple[dict[str, int], dict[str, str]]:
    """window_id -> fold and filename -> group key of the soundscape windows, as make_folds would store."""
    units = collect_units(store, params)
    if params.merge_duplicates:
        merge_duplicate_groups(units, pcm_hashes(store))
    fold_of = assign_units(units, params)
    folds = {wid: fold_of[u.key] for u in units if u.family == "soundscape" for wid in u.windows}
    return folds, {u.filename: u.group_key for u in units if u.family == "soundscape"}


# ---------------------------------------------------------------------------- the fixed heads
def rate_table(y: np.ndarray, keys: list, parent: dict) -> dict:
    """key -> smoothed per-class rate: (positives + ALPHA * parent[key]) / (windows + ALPHA)."""
    sums: dict = defaultdict(lambda: np.zeros(y.shape[1]))
    counts: dict = defaultdict(int)
    for key, row in zip(keys, y, strict=True):
        sums[key] += row
        counts[key] += 1
    return {key: (sums[key] + ALPHA * parent[key]) / (counts[key] + ALPHA) for key in sums}


def prior_scores(rows: list[dict], y: np.ndarray, folds: np.ndarray, head: str) -> np.ndarray:
    """Out-of-fold scores of the ``hour`` or ``site+hour`` prior head (learned on the other folds)."""
    out = np.zeros(y.shape, dtype=np.float64)
    hours = [r["hour"] for r in rows]
    site_hours = [(r["site"], r["hour"]) for r in rows]
    for f in np.unique(folds):
        train = np.flatnonzero(folds != f)
        base = (y[train].sum(axis=0) + 1.0) / (len(train) + 2.0)          # Laplace-smoothed base rate
        by_hour = rate_table(y[train], [hours[i] for i in train], dict.fromkeys(hours, base))
        hour_rate = {h: by_hour.get(h, base) for h in hours}              # an unseen hour: the base rate
        by_site_hour = rate_table(y[train], [site_hours[i] for i in train],
                                  {sh: hour_rate[sh[1]] for sh in site_hours})
        for i in np.flatnonzero(folds == f):
            out[i] = hour_rate[hours[i]] if head == "hour" else by_site_hour.get(site_hours[i], hour_rate[hours[i]])
    return out


def head_scores(rows: list[dict], y: np.ndarray, folds: np.ndarray, head: str) -> tuple[float, float, float, dict]:
    scores = prior_scores(rows, y, folds, head)
    mean, std, per_fold = fold_mean_std(y, scores, folds)
    return mean, std, competition_auc(y, scores), per_fold


# ---------------------------------------------------------------------------- what straddles
def straddling(rows: list[dict], folds: np.ndarray) -> dict[str, str]:
    file_fold = {r["filename"]: int(f) for r, f in zip(rows, folds, strict=True)}
    files = {r["filename"]: (r["site"], r["time"]) for r in rows}
    site_folds: dict[str, set] = defaultdict(set)
    day_folds: dict[tuple, set] = defaultdict(set)
    night_folds: dict[tuple, set] = defaultdict(set)
    for name, (site, t) in files.items():
        site_folds[site].add(file_fold[name])
        day_folds[(site, t.date())].add(file_fold[name])
        night_folds[(site, (t - timedelta(hours=12)).date())].add(file_fold[name])
    near = split = 0
    for a, b in itertools.combinations(sorted(files), 2):
        (sa, ta), (sb, tb) = files[a], files[b]
        if sa == sb and abs((ta - tb).total_seconds()) < NEAR_HOURS * 3600:
            near += 1
            split += file_fold[a] != file_fold[b]
    return {"sites": f"{sum(len(v) > 1 for v in site_folds.values())}/{len(site_folds)}",
            "days": f"{sum(len(v) > 1 for v in day_folds.values())}/{len(day_folds)}",
            "nights": f"{sum(len(v) > 1 for v in night_folds.values())}/{len(night_folds)}",
            "near": f"{split}/{near}"}


def per_fold_rows(rows: list[dict], y: np.ndarray, folds: np.ndarray, aucs: dict[str, dict]) -> list[str]:
    out = [f"  {'fold':>4} {'windows':>7} {'files':>5} {'sites':>5} {'pos_cls':>7} {'scorable':>8}"
           f" {'hour':>6} {'site+hour':>9}  groups"]
    for f in np.unique(folds):
        m = folds == f
        pos = y[m].sum(axis=0)
        fold_rows = [r for r, keep in zip(rows, m, strict=True) if keep]
        out.append(f"  {int(f):>4} {int(m.sum()):>7} {len({r['filename'] for r in fold_rows}):>5} "
                   f"{len({r['site'] for r in fold_rows}):>5} {int((pos > 0).sum()):>7} "
                   f"{int(((pos > 0) & (pos < m.sum())).sum()):>8} {aucs['hour'][int(f)]:>6.3f} "
                   f"{aucs['site+hour'][int(f)]:>9.3f}  {', '.join(sorted({r['group'] for r in fold_rows}))}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"competition folder (default {DEFAULT_DATA})")
    ap.add_argument("--k", type=int, default=FoldParams.k, help=f"folds (default {FoldParams.k})")
    ap.add_argument("--seeds", type=int, default=5, help="fold seeds for the seed-spread column (default 5)")
    ap.add_argument("--brief", action="store_true", help="summary table only (no per-fold rows)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fold_design_") as tmp:
        run_ingest(args.data, Path(tmp) / "store", workers=1)
        with FeatureStore.open(Path(tmp) / "store", read_only=True) as store:
            rows, classes, y = labelled_windows(store)
            results = []
            for name, params in candidates(args.k):
                fold_map, groups = fold_assignment(store, params)
                for r in rows:
                    r["group"] = groups[r["filename"]]
                folds = np.array([fold_map[r["window_id"]] for r in rows])
                heads = {h: head_scores(rows, y, folds, h) for h in ("hour", "site+hour")}
                seed_means = [heads["hour"][0]]
                for seed in range(1, args.seeds):
                    fm, _ = fold_assignment(store, replace(params, seed=seed))
                    seed_means.append(head_scores(rows, y, np.array([fm[r["window_id"]] for r in rows]), "hour")[0])
                sizes = np.bincount(folds, minlength=args.k)
                scorable = [int(((p > 0) & (p < n)).sum()) for p, n in
                            ((y[folds == f].sum(axis=0), (folds == f).sum()) for f in range(args.k))]
                if not args.brief:
                    print(f"== {name}  ({len(set(groups.values()))} soundscape groups)")
                    print("\n".join(per_fold_rows(rows, y, folds, {h: v[3] for h, v in heads.items()})))
                name += " *" if params == FoldParams(k=args.k) else ""
                results.append((name, sizes, scorable, straddling(rows, folds), heads, seed_means))
            shadow = np.array([sorted({r["site"] for r in rows}).index(r["site"]) for r in rows])
            shadow_heads = {h: head_scores(rows, y, shadow, h) for h in ("hour", "site+hour")}
    print(f"\nreal labels: {len(rows)} windows, {len({r['filename'] for r in rows})} files, "
          f"{len({r['site'] for r in rows})} sites, {len(classes)} classes; k={args.k}; "
          f"fixed heads learned on the training folds only (ALPHA={ALPHA:g})")
    head = (f"{'grouping':<16} {'windows/fold':>13} {'min scorable':>12} {'sites split':>11} {'days split':>10} "
            f"{'nights split':>12} {'near split':>10} {'hour mean±std':>14} {'pooled':>6} {'site+hour mean±std':>18} {'pooled':>6} "
            f"{'seeds (hour)':>13}")
    print(head)
    print("-" * len(head))
    for name, sizes, scorable, st, heads, seed_means in results:
        h, sh = heads["hour"], heads["site+hour"]
        print(f"{name:<16} {f'{sizes.min()}-{sizes.max()}':>13} {min(scorable):>12} {st['sites']:>11} "
              f"{st['days']:>10} {st['nights']:>12} {st['near']:>10} {f'{h[0]:.3f}±{h[1]:.3f}':>14} {h[2]:>6.3f} "
              f"{f'{sh[0]:.3f}±{sh[1]:.3f}':>18} {sh[2]:>6.3f} "
              f"{f'{min(seed_means):.3f}-{max(seed_means):.3f}':>13}")
    h, sh = shadow_heads["hour"], shadow_heads["site+hour"]
    sizes = np.bincount(shadow)
    print(f"{'shadow LOSO (9)':<16} {f'{sizes.min()}-{sizes.max()}':>13} {'':>12} {'':>11} {'':>10} {'':>12} {'':>10} "
          f"{f'{h[0]:.3f}±{h[1]:.3f}':>14} {h[2]:>6.3f} {f'{sh[0]:.3f}±{sh[1]:.3f}':>18} {sh[2]:>6.3f}")
    print("* = the default (FoldParams()). windows/fold and min scorable: labelled soundscape windows and classes\n"
          "with a positive and a negative per fold; split columns: sites / calendar site-days / site-nights (noon\n"
          f"to noon) in > 1 fold, and same-site file pairs < {NEAR_HOURS:g} h apart in different folds. Pooled < 0.5 is\n"
          "expected for priors: each fold's rates are fitted without it, so pooling mixes differently calibrated folds.")
    print(f"\n{time.perf_counter() - t0:.1f} s ({datetime.now():%Y-%m-%d %H:%M})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
