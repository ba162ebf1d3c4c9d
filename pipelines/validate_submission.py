"""``python -m pipelines.validate_submission``: check a submission.csv before uploading it.

Checks the columns and their order against sample_submission.csv, unique row ids, numbers, NaN and
the [0, 1] range, and (with --audio) that every 5-s window of every soundscape has exactly one row:
each file is expected to cover the competition's 60 s, or what its header says when that is more
(an undecodable, truncated or short file still needs all its rows; predict writes exactly these).
Exit 0 when valid; an invalid file prints one ``error: ...`` line on stderr and exits 2.
"""

from __future__ import annotations

from pathlib import Path

from pipelines._cli import parser, run_main
from submit.submission import expected_ids_for_audio, validate_submission

EPILOG = """
Example:
  python -m pipelines.validate_submission submission.csv --sample data/sample_submission.csv \\
      --audio data/test_soundscapes
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("validate_submission", __doc__, EPILOG)
    ap.add_argument("submission", type=Path, help="the submission.csv to check")
    ap.add_argument("--sample", type=Path, required=True, help="the competition's sample_submission.csv")
    ap.add_argument("--audio", type=Path, default=None, help="test_soundscapes folder: check row coverage too")
    args = ap.parse_args(argv)
    expected = expected_ids_for_audio(args.audio) if args.audio else None
    n = validate_submission(args.submission, args.sample, expected)  # SubmissionError -> error: ..., exit 2
    print(f"valid: {n} rows" + (f", every window of {args.audio} covered" if expected else ""))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (validation only reads)")
