"""``python -m pipelines.ingest``: load a BirdCLEF competition folder into a feature store."""

from __future__ import annotations

from featurestore.ingest import run_ingest
from pipelines._cli import PlannedProgress, add_store, add_workers, parser, positive_int, run_main

EPILOG = """
The data folder is the unzipped competition: taxonomy.csv, train.csv, train_soundscapes_labels.csv,
sample_submission.csv, train_audio/<label>/*.ogg, train_soundscapes/*.ogg, test_soundscapes/*.ogg
(any of the audio folders may be absent).

Writes the tables taxonomy, recordings, soundscapes, soundscape_labels, windows, audio_inventory and
ingest_problems. Re-running is cheap: only new or changed audio files are decoded, unchanged tables
keep their version. A killed run resumes where it stopped. Bad audio never stops the run; bad CSVs
stop it before anything is written.

Example:
  python -m pipelines.ingest --data /kaggle/input/birdclef-2026 --store work/store
  duckdb work/store/catalog.duckdb "SELECT class_name, count(*) FROM taxonomy GROUP BY 1"
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("ingest", __doc__)
    ap.epilog = EPILOG
    ap.add_argument("--data", required=True, help="competition data folder")
    add_store(ap, creates=True)
    add_workers(ap, "decode processes for the audio pass")
    ap.add_argument("--batch-size", type=positive_int, default=64,
                    help="audio files per atomic Parquet part; a kill loses at most one batch (default 64)")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")

    with PlannedProgress("audio QA", "file", quiet=args.quiet) as bar:   # once the CSVs are parsed and planned
        summary = run_ingest(args.data, args.store, workers=args.workers, batch_size=args.batch_size,
                             progress=bar.update, on_total=bar.start)
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; audio files finished so far are kept in the store: re-run the same command to "
        "resume"
    ))
