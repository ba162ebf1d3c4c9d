"""``python -m pipelines.ingest``: load a BirdCLEF competition folder into a feature store."""

from __future__ import annotations

import os

from tqdm import tqdm

from featurestore.ingest import run_ingest
from pipelines._cli import parser, run_main

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
    ap.add_argument("--store", required=True, help="feature store folder (created if missing)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="decode processes for the audio pass (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="audio files per atomic Parquet part; a kill loses at most one batch (default 64)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.batch_size < 1:
        ap.error("--workers and --batch-size must be >= 1")

    bar = tqdm(total=0, unit="file", desc="audio QA", disable=args.quiet, dynamic_ncols=True)
    def on_total(n: int) -> None:
        bar.total = n
        bar.refresh()
    summary = run_ingest(args.data, args.store, workers=args.workers, batch_size=args.batch_size,
                         progress=bar.update, on_total=on_total)
    bar.close()
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main)
