"""``python -m pipelines.leaderboard``: experiments ranked by OOF macro AUC."""

from __future__ import annotations

import pyarrow as pa

from featurestore.store import FeatureStore
from pipelines._cli import parser, run_main

COLUMNS = ("rank", "head_id", "tag", "features", "oof_auc", "fold_std", "rare_auc", "train_seconds", "eval_rows")


def leaderboard(store: FeatureStore, tag: str | None = None) -> pa.Table:
    """Experiments ranked by OOF AUC (ties: lower fold std, then faster); tags baseline/replay/full/tuned."""
    if not store.has_plain_table("experiments"):
        return pa.table({c: pa.array([], pa.string()) for c in COLUMNS})
    where = "WHERE tag = ?" if tag else ""
    return store.sql(
        "SELECT row_number() OVER (ORDER BY oof_auc DESC NULLS LAST, fold_std, train_seconds) AS rank, head_id, "
        "CASE WHEN head IN ('prior', 'zeroshot') THEN 'baseline/' || tag ELSE tag END AS tag, features, oof_auc, "
        f"fold_std, rare_auc, train_seconds, eval_rows FROM experiments {where} ORDER BY rank",
        [tag] if tag else None)


def render(table: pa.Table) -> str:
    if table.num_rows == 0:
        return "no experiments yet; run pipelines.train"
    lines = [f"{'#':>2}  {'head_id':<22} {'tag':<16} {'features':<22} {'OOF AUC':>8} {'fold std':>8} "
             f"{'rare AUC':>8} {'train s':>8}"]
    for r in table.to_pylist():
        rare = f"{r['rare_auc']:.4f}" if r["rare_auc"] is not None else "-"
        std = f"{r['fold_std']:.4f}" if r["fold_std"] is not None else "-"
        lines.append(f"{r['rank']:>2}  {r['head_id']:<22} {r['tag']:<16} {r['features']:<22} {r['oof_auc']:>8.4f} "
                     f"{std:>8} {rare:>8} {r['train_seconds']:>8.1f}")
    lines.append(f"scored on: {table.column('eval_rows')[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = parser("leaderboard", __doc__)
    ap.add_argument("--store", required=True, help="feature store folder")
    ap.add_argument("--tag", default=None, help="only experiments with this tag (full, replay, tuned, ...)")
    args = ap.parse_args(argv)
    with FeatureStore.open(args.store, create=False, read_only=True) as store:
        print(render(leaderboard(store, args.tag)))
    return 0


if __name__ == "__main__":
    run_main(main)
