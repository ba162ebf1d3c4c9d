"""``python -m pipelines.errors``: the error-analysis page of a trained or stacked head - one
self-contained HTML file you can read and listen to offline.

Sections: per-class AUC with training counts, taxon and frequency bucket (worst first); for the
worst classes the top false positives and missed positives as mel-spectrogram thumbnails with an
audio player of each 5-s window; which other class outscores the true one on missed windows
(confusion pairs); slices by fold, site, hour, overlap-heavy windows, taxon group and frequency; the
head-diversity matrix. Audio is read from the data folder ingest recorded (``--data`` overrides it).
The library: reports/error_page.py.
"""

from __future__ import annotations

from pipelines._cli import add_store, non_negative_int, parser, run_main
from reports.error_page import ErrorPageParams, summary_line, write_error_page

EPILOG = """
Example:
  python -m pipelines.leaderboard --store work/store
  python -m pipelines.errors --store work/store --head-id stack-1a2b3c4d5e6f --out errors.html
  python -m pipelines.errors --store work/store --head-id best --data /kaggle/input/birdclef-2026
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("errors", __doc__, EPILOG)
    add_store(ap, help="feature store folder holding the head's OOF table")
    ap.add_argument("--head-id", "--head", required=True,
                    help="trained or stacked head id (pipelines.leaderboard), or 'best': the best full-CV head")
    ap.add_argument("--out", default="errors.html",
                    help="HTML file to write, in an existing folder (default errors.html)")
    ap.add_argument("--data", default=None,
                    help="competition data folder holding the audio (default: the one ingest recorded); a folder "
                         "that does not exist or holds none of the examples' audio is refused")
    defaults = ErrorPageParams()
    ap.add_argument("--worst", type=non_negative_int, default=defaults.worst,
                    help=f"classes shown with audio examples, worst AUC first (default {defaults.worst})")
    ap.add_argument("--examples", type=non_negative_int, default=defaults.examples,
                    help=f"false positives and missed positives per class (default {defaults.examples})")
    ap.add_argument("--diversity-heads", type=non_negative_int, default=defaults.diversity_heads,
                    help=f"other heads in the diversity matrix (default {defaults.diversity_heads})")
    args = ap.parse_args(argv)
    params = ErrorPageParams(worst=args.worst, examples=args.examples, diversity_heads=args.diversity_heads)
    path, report = write_error_page(args.store, args.head_id, args.out, params, data_dir=args.data)
    print(summary_line(path, report))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (--out is replaced only by a complete page)")
