"""``python -m pipelines.pseudo``: pseudo-label every unlabelled train soundscape window with a teacher
head (or stacked head) from stored features - fold by fold, so fold k's student only ever sees labels
from the teacher's fold-k model - into the versioned ``pseudo_labels`` table. No re-embedding. The
library: students/pseudo.py.
"""

from __future__ import annotations

from pathlib import Path

from models.pseudo_labels import PseudoParams, make_params
from pipelines._cli import (
    add_pseudo_params,
    add_question,
    add_store,
    parser,
    positive_int,
    pseudo_overrides,
    run_main,
    store_question,
)
from students.pseudo import run_pseudo

EPILOG = """
Example:
  python -m pipelines.pseudo --store work/store --teacher stack-1a2b3c4d5e6f --power 1.5 --cap 0.75
  duckdb work/store/catalog.duckdb "SELECT * FROM pseudo_runs"
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("pseudo", __doc__, EPILOG)
    add_store(ap)
    d = PseudoParams()
    ap.add_argument("--teacher", required=True, help="trained or stacked head id that labels the windows")
    add_pseudo_params(ap, d)
    ap.add_argument("--pool", default=d.pool, choices=["unlabelled", "all"],
                    help="windows to label: unlabelled soundscapes (default), or all windows for distillation")
    ap.add_argument("--answers", type=Path, default=None,
                    help="held-back labels of some unlabelled windows (train_soundscapes_labels.csv layout, e.g. "
                         "the demo's unlabelled_answers.csv): print the labels' macro ROC-AUC against them")
    ap.add_argument("--round", type=positive_int, default=1, help="self-training round recorded with the labels (default 1)")
    add_question(ap)
    args = ap.parse_args(argv)
    params = make_params({**pseudo_overrides(args), "pool": args.pool})
    result = run_pseudo(args.store, args.teacher, params, round_=args.round, answers=args.answers)
    print(result.render())
    # no experiments row: the question is kept with the pseudo-label version (models.experiments.run_questions)
    store_question(args.store, [result.version], args.question, kind="pseudo")
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; pseudo-labels of finished parts are kept: re-run the same command to resume"
    ))
