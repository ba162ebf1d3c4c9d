"""``python -m pipelines.leaderboard``: experiments ranked by their fold-mean AUC.

Full cross-validation runs are ranked first; fast (tuner subsample) and replay runs in sections
of their own, since they were trained on less. Each row shows the fold mean +/- std (the
headline), the pooled OOF score and the calibration gap between them, the file-bootstrap CI,
classes scored and dropped as degenerate, and which windows were scored.
"""

from __future__ import annotations

import pyarrow as pa

from featurestore.store import FeatureStore
from models.experiments import MODES, BoardFilter, known_values, ranked
from pipelines._cli import add_store, parser, run_main

EPILOG = """
Example:
  python -m pipelines.leaderboard --store work/store
  python -m pipelines.leaderboard --store work/store --mode full --head-kind lgbm
"""


def _f(value, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def render(table: pa.Table) -> str:
    rows = table.to_pylist()
    lines: list[str] = []
    header = (f"{'#':>2}  {'head_id':<22} {'tag':<9} {'features':<18} {'fold mean':>9} {'± std':>7} "
              f"{'pooled':>7} {'gap':>7} {'95% CI':>15} {'rare':>6} {'cls':>4} {'degen':>5} {'scored on':<10} "
              f"{'windows':>7} {'train s':>8}")
    for mode in MODES:
        section = [r for r in rows if r["mode"] == mode]
        if not section:
            continue
        lines += ["", f"[{mode}]" + ("" if mode == "full" else " (trained on a subset; not comparable with full)"),
                  header]
        for r in section:
            ci = f"[{_f(r['ci_low'], '.3f')}, {_f(r['ci_high'], '.3f')}]" if r["ci_low"] is not None else "-"
            tag = r["tag"] if r["head"] not in ("prior", "zeroshot") else f"base/{r['tag']}"
            lines.append(
                f"{r['rank']:>2}  {r['head_id']:<22} {tag:<9} {r['features']:<18} {_f(r['fold_mean']):>9} "
                f"{_f(r['fold_std']):>7} {_f(r['oof_auc'], '.3f'):>7} {_f(r['calibration_gap'], '+.3f'):>7} "
                f"{ci:>15} {_f(r['rare_auc'], '.3f'):>6} {_f(r['n_classes_scored'], 'd'):>4} "
                f"{_f(r['n_classes_degenerate'], 'd'):>5} {r['scored_on'] or '-':<10} "
                f"{_f(r['n_eval_windows'], 'd'):>7} {_f(r['train_seconds'], '.1f'):>8}")
    return "\n".join(lines).lstrip("\n")


def empty_message(store: FeatureStore, flt: BoardFilter) -> str:
    asked = {k: v for k, v in (("tag", flt.tag), ("mode", flt.mode), ("head", flt.head)) if v}
    if not asked or not known_values(store, "head_id"):
        return "no experiments yet; run pipelines.train"
    have = "; ".join(f"{k}s present: {', '.join(known_values(store, k)) or 'none'}" for k in asked)
    wanted = ", ".join(f"{k} {v!r}" for k, v in asked.items())
    return f"no experiments with {wanted} ({have})"


def main(argv: list[str] | None = None) -> int:
    ap = parser("leaderboard", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--tag", default=None, help="only experiments with this tag (full, replay, tuned, ...)")
    ap.add_argument("--mode", choices=MODES, default=None, help="only this mode (default: all, full first)")
    ap.add_argument("--head-kind", default=None, help="only this head kind (prior, zeroshot, linear, lgbm)")
    args = ap.parse_args(argv)
    flt = BoardFilter(tag=args.tag, mode=args.mode, head=args.head_kind)
    with FeatureStore.open(args.store, create=False, read_only=True) as store:
        board = ranked(store, flt)
        print(render(board) if board.num_rows else empty_message(store, flt))
    return 0


if __name__ == "__main__":
    run_main(main)
