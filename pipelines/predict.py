"""``python -m pipelines.predict``: a trained head → submission.csv for a folder of soundscapes.

Embeds the audio with exactly the extractor versions the head was trained on (a mismatch is
refused), applies every fold model and averages them, and writes row_id + one column per class in
sample_submission.csv's order, validated before it replaces ``--out`` (temp file + rename). A bad
file (undecodable, empty, NaN/inf, truncated or shorter than 60 s) gets the class prior on every
row it has no usable audio for, with one warning, so the submission stays complete. A file below
32 kHz is predicted with ingest's warning; files not named as competition soundscapes get one warning
for the run. Two files with the same stem (``x.ogg``, ``x.flac``) would write the same row ids: they
are refused at once, naming both, before anything is predicted.

Which files: the ``--audio`` folder's own files in a format soundfile decodes here (ogg, flac, wav, mp3,
aiff, ... - the Kaggle notebook and the dry run use the same list). Sub-folders are not searched (Kaggle's
test_soundscapes/ is flat and a row id carries only the file's stem); they, hidden files, m4a/aac (they
need ffmpeg) and other suffixes are skipped, with one warning naming them and saying why.

``--format windows`` is batch prediction for monitoring data: any audio under ``--audio`` (any length, any
name, nested folders) -> one row per 5-s window (``file, start_s, end_s`` + one column per class) or, with
``--long``, one row per window and class at or above ``--min-prob``, in ``--out`` (.parquet or .csv). Each
file's rows are kept in ``<out>.parts/`` as soon as it is predicted, so a killed run resumes where it stopped.

A stacked head (``stack-<hash>``, from ``pipelines.stack``) embeds each file once for the union of its
base heads' extractors, runs every base head, then its level-2 model and post-processing steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines._cli import (
    add_engine,
    add_store,
    check_engine,
    parser,
    progress,
    run_main,
)
from submit.predict import predict_submission
from submit.windows import predict_windows

EPILOG = """
Example:
  python -m pipelines.predict --store work/store --audio data/test_soundscapes --out submission.csv
  python -m pipelines.predict --store work/store --head-id lgbm-3f2a9c1b0d4e --audio data/test_soundscapes \\
      --out submission.csv --sample data/sample_submission.csv
  python -m pipelines.predict --store work/store --audio recordings/ --format windows --out windows.parquet
  python -m pipelines.predict --store work/store --audio recordings/ --format windows --long --min-prob 0.5 \
      --out detections.csv --engine ray --address auto
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("predict", __doc__, EPILOG)
    add_store(ap, help="feature store folder holding the trained head")
    ap.add_argument("--head-id", default="best",
                    help="trained or stacked head id from pipelines.leaderboard (default: the best full-CV head)")
    ap.add_argument("--audio", required=True, type=Path,
                    help="folder of soundscapes (e.g. test_soundscapes): its own files only, sub-folders are not "
                         "searched (skipped with a warning), in any format soundfile decodes (not m4a/aac); "
                         "--format windows: any folder (nested folders searched) or audio file")
    ap.add_argument("--out", required=True, type=Path,
                    help="submission.csv to write; --format windows: a .parquet or .csv")
    ap.add_argument("--format", choices=("submission", "windows"), default="submission",
                    help="submission (default): the competition's rows; windows: rows per 5-s window of any audio")
    ap.add_argument("--long", action="store_true",
                    help="--format windows: one row per window and class (file, start_s, end_s, class, prob)")
    ap.add_argument("--min-prob", type=float, default=0.0,
                    help="--format windows --long: keep only rows with prob >= this (default 0: all)")
    ap.add_argument("--sample", type=Path, default=None,
                    help="sample_submission.csv for the column order (default: the store's taxonomy order)")
    add_engine(ap)
    args = ap.parse_args(argv)
    check_engine(ap, args)
    if args.format == "windows":
        if args.sample is not None:
            ap.error("--sample is for --format submission (windows rows have one column per head class)")
        summary = predict_windows(
            args.store, args.audio, args.out, head_id=args.head_id, fmt="long" if args.long else "wide",
            min_prob=args.min_prob, workers=args.workers, engine=args.engine, address=args.address,
            actors=args.actors, make_progress=lambda n, desc: progress(n, desc, "file", quiet=args.quiet),
            on_warning=lambda warning: print(f"warning: {warning}", file=sys.stderr))
        print(summary.render())
        return 0
    if args.long or args.min_prob:
        ap.error("--long and --min-prob are for --format windows")
    summary = predict_submission(
        args.store, args.audio, args.out, head_id=args.head_id, sample=args.sample, workers=args.workers,
        engine=args.engine, address=args.address, actors=args.actors, make_progress=lambda n, desc: progress(n, desc, "file", quiet=args.quiet),
        on_warning=lambda warning: print(f"warning: {warning}", file=sys.stderr))
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; a submission is written only when every file is predicted (nothing kept, --out "
        "untouched); with --format windows each finished file's rows are kept in <out>.parts/ and the "
        "same command resumes"
    ))
