"""``python -m pipelines.validate_submission``: check a submission.csv before uploading it.

Checks the columns and their order against sample_submission.csv, unique row ids, numbers, NaN and
the [0, 1] range, and (with --audio) that every 5-s window of every soundscape has exactly one row.
Exit 0 when valid; an invalid file prints one ``error: ...`` line on stderr and exits 2.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from models.predict import list_audio
from models.submission import validate_submission
from pipelines._cli import parser, run_main

EPILOG = """
Example:
  python -m pipelines.validate_submission submission.csv --sample data/sample_submission.csv \\
      --audio data/test_soundscapes
"""

SOUNDSCAPE_SECONDS = 60


def expected_ids_for_audio(audio_dir: Path, window_s: int = 5) -> list[str]:
    """row_ids of every 5-s window (ends 5, 10, ... rounded duration) of every audio file in a folder.

    A file whose header cannot be read is expected to be a full 60-s competition soundscape.
    """
    ids = []
    for path in list_audio(audio_dir):
        try:
            seconds = sf.info(str(path)).duration
        except (sf.LibsndfileError, RuntimeError):
            seconds = SOUNDSCAPE_SECONDS
        n = max(1, round(seconds / window_s))
        ids += [f"{path.stem}_{window_s * (i + 1)}" for i in range(n)]
    return ids


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
    run_main(main)
