"""``python -m pipelines.plan``: will this bundle fit Kaggle's budget? Per-stage costs (decode,
resample, each extractor, each head and the stack) measured on this machine on real audio, scaled to
the target CPU count with the process-scaling factor measured here, printed as projected minutes per
stage for the head and for each cheaper time-guard level. The scaling model is printed with it.
Without ``--measure-audio`` the costs measured at export time are used. With ``--bundle`` given more than
once (the two submission tracks, ``pipelines.export --track safe|bold``) each bundle is planned in turn and
a table puts them side by side: track, projected minutes and the headroom each leaves in the budget.
The library: submit/plan.py.
"""

from __future__ import annotations

from pipelines._cli import add_measure, parser, positive_int, run_main
from submit.plan import plan_tracks, render_tracks

EPILOG = """
Example:
  python -m pipelines.plan --bundle bundle --measure-audio data/train_soundscapes --files 600 --cpus 4 --budget-min 90
  python -m pipelines.plan --bundle bundle-safe --bundle bundle-bold
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("plan", __doc__, EPILOG)
    ap.add_argument("--bundle", required=True, action="append",
                    help="bundle folder written by pipelines.export; repeat it to compare bundles (e.g. the safe "
                         "and the bold track) side by side")
    add_measure(ap, audio_help="soundscapes to measure on here (default: the costs the export measured)",
                files_help="files of --measure-audio measured", audio_alias="--audio")
    ap.add_argument("--files", type=positive_int, default=600, help="test files to project for (default 600)")
    ap.add_argument("--cpus", type=positive_int, default=4, help="Kaggle CPUs (default 4)")
    ap.add_argument("--budget-min", type=float, default=90.0, help="budget in minutes (default 90)")
    args = ap.parse_args(argv)
    plans = plan_tracks(args.bundle, args.measure_audio, n_files=args.files, cpus=args.cpus,
                        budget_min=args.budget_min, measure_files=args.measure_files)
    if len(plans) == 1:
        p = plans[0]
        print(f"{p.text}\nheadroom in the {p.budget_min:.0f} min budget (track {p.track or 'none'}): "
              f"{p.headroom_min:+.1f} min ({p.headroom_pct:+.0f}%)")
    else:
        print(render_tracks(plans, args.files, args.cpus))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (the plan only measures)")
