"""``python -m pipelines.answer``: the search log's answer - what a run taught, recorded on its experiments row.

A run asked its question with ``--question`` (train, tune, stack, pseudo, selftrain, distill, cnn); this job
records the answer, a verdict on the idea (``reproduced``, ``rejected`` or ``postponed``) and when, on the row
of ``--head-id`` (for pipelines.pseudo, which writes no experiments row, the pseudo-label version), replacing an
earlier answer. The dashboard lists the ideas by verdict. The library: models/experiments.py ``record_answer``.
"""

from __future__ import annotations

from featurestore.store import FeatureStore
from models.experiments import ANSWER_VERDICTS, record_answer
from pipelines._cli import add_store, parser, run_main

EPILOG = """
Examples:
  python -m pipelines.train --store work/store --head-kind linear --pooling max --question 'does max pooling help?'
  python -m pipelines.answer --store work/store --head-id linear-0a1b2c3d4e5f --verdict rejected \\
      "max pooling: fold mean -0.004, within one std of mean pooling"
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("answer", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--head-id", required=True,
                    help="the run's head id (from its output or pipelines.leaderboard; a pseudo-label version for "
                         "pipelines.pseudo)")
    ap.add_argument("--verdict", choices=ANSWER_VERDICTS, default=None,
                    help="what became of the idea the run tested (default: none recorded)")
    ap.add_argument("answer", help="what was learned, in words")
    args = ap.parse_args(argv)
    with FeatureStore.open(args.store, create=False) as store:
        got = record_answer(store, args.head_id, args.answer, args.verdict)
    asked = f" to {got['question']!r}" if got["question"] else " (the run asked no --question)"
    verdict = f" [{got['verdict']}]" if got["verdict"] else ""
    print(f"answer recorded on {got['head_id']}{asked}{verdict}: {got['answer']}")
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (the answer is written in one transaction at the end)")
