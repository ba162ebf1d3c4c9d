"""``python -m pipelines.validate_submission``: check a submission.csv before uploading it.

Checks the columns and their order against sample_submission.csv, unique row ids, numbers, NaN and
the [0, 1] range, and (with --audio) that every 5-s window of every soundscape has exactly one row.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from models.submission import SubmissionError, validate_submission
from pipelines._cli import parser, run_main


def expected_ids_for_audio(audio_dir: Path, window_s: int = 5) -> list[str]:
    """row_ids of every 5-s window (ends 5, 10, ... rounded duration) of every audio file in a folder."""
    ids = []
    files = sorted(p for p in Path(audio_dir).iterdir() if p.suffix.lower() in (".ogg", ".flac", ".wav", ".mp3"))
    for path in files:
        n = max(1, round(sf.info(str(path)).duration / window_s))
        ids += [f"{path.stem}_{window_s * (i + 1)}" for i in range(n)]
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = parser("validate_submission", __doc__)
    ap.add_argument("submission", type=Path, help="the submission.csv to check")
    ap.add_argument("--sample", type=Path, required=True, help="the competition's sample_submission.csv")
    ap.add_argument("--audio", type=Path, default=None, help="test_soundscapes folder: check row coverage too")
    args = ap.parse_args(argv)
    expected = expected_ids_for_audio(args.audio) if args.audio else None
    try:
        n = validate_submission(args.submission, args.sample, expected)
    except SubmissionError as exc:
        print(f"invalid: {exc}")
        return 1
    print(f"valid: {n} rows" + (f", every window of {args.audio} covered" if expected else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
