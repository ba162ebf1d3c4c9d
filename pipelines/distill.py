"""``python -m pipelines.distill``: distil a teacher (typically the stacked ensemble) into a head on a
cheaper feature set. The teacher labels every stored window fold by fold; the student is
cross-validated on those soft labels (labelled windows: ``(1 - alpha) * label + alpha * teacher``),
scored on the true labels, and its fold mean and predict cost per 60-s file are printed beside the
teacher's, measured in one run on the same audio. The library: students/distill.py.
"""

from __future__ import annotations

from dataclasses import replace

from models.heads import PARAMS_BY_KIND
from models.pseudo_labels import PseudoParams, make_params
from pipelines._cli import (
    add_measure,
    add_pseudo_params,
    add_question,
    add_seed,
    add_store,
    json_object,
    parser,
    pseudo_overrides,
    run_main,
    say,
    store_question,
)
from students.distill import run_distill

EPILOG = """
Example:
  python -m pipelines.distill --store work/store --teacher stack-1a2b3c4d5e6f --head-kind linear --features classical
  # then ship the student as the time guard's fallback (its head id is printed by distill)
  python -m pipelines.export --store work/store --head-id stack-1a2b3c4d5e6f --fallback-head linear-5f4e3d2c1b0a \
      --out bundle
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("distill", __doc__, EPILOG)
    add_store(ap)
    d = replace(PseudoParams(), min_prob=0.0)      # distillation learns the teacher's soft predictions as they are
    ap.add_argument("--teacher", required=True, help="trained or stacked head id to distil")
    ap.add_argument("--head-kind", default="linear", help=f"student head kind: {', '.join(PARAMS_BY_KIND)} "
                    "(default linear)")
    ap.add_argument("--features", default="classical", help="student feature view(s), comma-joined (default classical)")
    ap.add_argument("--params", type=json_object, default="{}", help="JSON object of student head parameters to override")
    ap.add_argument("--alpha", type=float, default=1.0,
                    help="labelled windows learn (1 - alpha) * label + alpha * teacher (default 1: the teacher)")
    add_pseudo_params(ap, d)
    add_measure(ap, audio_help="audio files for the cost measurement (default: --measure-files of the store's "
                               "train soundscapes)", files_help="store files measured when --measure-audio is not given",
                zero_skips=True, many=True, audio_alias="--audio", files_alias="--cost-files")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip training the student's head on the labels alone (the comparison row)")
    add_seed(ap)
    add_question(ap)
    args = ap.parse_args(argv)
    params = make_params({**pseudo_overrides(args), "pool": "all"})
    result = run_distill(args.store, args.teacher, args.head_kind, args.features, alpha=args.alpha, params=params,
                         overrides=args.params, audio=args.measure_audio, n_cost_files=args.measure_files, seed=args.seed,
                         baseline=not args.no_baseline, say=say)
    print(result.render())
    store_question(args.store, [result.student.head_id, *([result.baseline.head_id] if result.baseline else [])],
                   args.question)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; the teacher's finished pseudo-label parts and the finished folds of the student "
        "being trained are kept: re-run the same command to resume"
    ))
