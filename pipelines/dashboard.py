"""``python -m pipelines.dashboard``: the campaign dashboard - one page (or CSV) with a decision per head and stack.

One row per experiment, full cross-validation first: fold mean +/- std, pooled and rare-class AUC, the worst
site / hour-bucket / overlap slice and its gap to the fold mean, the predict cost per 60-s file and the projected
Kaggle minutes (measured once on real audio by the planner and stored on the row), the OOF correlation with the
current best, the level-2 CV gain the head adds to the current best stack, the question the run asked and what was
learned, and a decision (promote / test more / replay first / watch / prune) by rules printed on the page. Also:
fold mean vs cost with the Pareto front, the search log, the ideas by verdict, the submission tracks and the
students whose subgroups dropped. ``--audio DIR`` first measures the predict cost of the rows that have none
(``submit.plan.record_predict_costs``); the page itself needs no audio.
"""

from __future__ import annotations

from dataclasses import fields

from pipelines._cli import add_store, parser, run_main
from reports.dashboard import (
    FORMATS,
    DashboardParams,
    DecisionParams,
    summary_line,
    unmeasured_heads,
    write_dashboard,
)
from reports.htmlpage import check_out

EPILOG = """
Example:
  python -m pipelines.dashboard --store work/store --out work/dashboard.html
  python -m pipelines.dashboard --store work/store --out work/dashboard.html --audio data/train_soundscapes
  python -m pipelines.dashboard --store work/store --out work/dashboard.csv --format csv
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("dashboard", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--out", required=True, help="the page (or CSV) to write; its folder must exist")
    ap.add_argument("--format", choices=FORMATS, default="html", help="html (default) or csv (one row per head)")
    ap.add_argument("--audio", "--measure-audio", dest="audio", default=None,
                    help="measure the predict cost of rows that have none on this audio folder first (stored)")
    ap.add_argument("--measure-files", type=int, default=3, help="audio files measured with --audio (default 3)")
    ap.add_argument("--no-scaling", action="store_true",
                    help="with --audio: skip timing the process pools (projection assumes S(n) = n: optimistic)")
    ap.add_argument("--no-gain", action="store_true", help="skip the level-2 CV runs of the stack gain column")
    d = DecisionParams()
    for f in fields(DecisionParams):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=getattr(d, f.name),
                        help=f"decision rule parameter (default {getattr(d, f.name):g})")
    args = ap.parse_args(argv)
    params = DashboardParams(DecisionParams(**{f.name: getattr(args, f.name) for f in fields(DecisionParams)}),
                             stack_gain=not args.no_gain).check()
    check_out(args.out)                     # before any measuring: a bad --out costs nothing
    if args.audio:
        from submit import plan

        heads = unmeasured_heads(args.store)
        if heads:
            done = plan.record_predict_costs(args.store, heads, args.audio, measure_files=args.measure_files,
                                             scaling=not args.no_scaling)
            print(f"predict cost measured for {len(done.measured)} head(s)"
                  + "".join(f"; {h}: {why}" for h, why in done.skipped.items()))
    path, dash = write_dashboard(args.store, args.out, fmt=args.format, params=params)
    print(summary_line(path, dash))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; no page written (--audio stores the costs only once all are measured)")
