"""``python -m pipelines.search``: find stored windows like some examples ("search by example").

Each ``--query`` is one of:

  clip.ogg@12.5             the 5-s window of an audio file at 12.5 s, embedded now by the extractor rebuilt
                            from the stored version (a changed model file is refused)
  <window id>               a stored window, e.g. train_soundscapes/BC2026_Train_0001_S01_..._054500.ogg@15
  class:CODE                every window of the focal clips (train_audio) of class CODE
  head:HEAD_ID:CODE         a trained head's probability of CODE ranks the windows (must be the only query)

Similarity is the COSINE between L2-normalised window features (the view pooled per window, --pooling, default
mean) and each example; several examples combine by --combine mean (default) or max. The search is exact: every
stored window is scanned from a float16 copy kept under <store>/search_cache/ (built once per stored extractor
version, rebuilt when the features change) and the best candidates are re-scored from the stored features.
The query's own windows are never returned.

--where is one SQL condition over the columns window_id, source, filename, start_s, site, date, hour (site, date
and hour are parsed from soundscape names; NULL for focal clips). --per-file / --per-site cap the hits from one
file / one site. --exclude-labelled skips windows that already have labels (expert soundscape labels, focal clips'
train.csv labels, and user_labels when that table exists). --out writes a .csv (rank, window_id, filename,
start_s, site, score, best_query) or a self-contained .html page (mel thumbnail and 5-s audio player per hit).
The library: models/search.py and reports/search_page.py.
"""

from __future__ import annotations

import shlex
import sys

from models.search import COMBINES, SearchParams
from pipelines._cli import PlannedProgress, add_store, at_least, cap_or_none, parser, run_main
from reports.search_page import run_search, summary_line

EPILOG = """
Examples:
  python -m pipelines.search --store work/store --features birdnet --query class:trsowl --exclude-labelled \\
      --where "site = 'S22' AND hour BETWEEN 18 AND 23" --out trsowl.html
  python -m pipelines.search --store work/store --features perch --query my_clip.ogg@12.5 --k 100 --out hits.csv
  python -m pipelines.search --store work/store --features birdnet \\
      --query train_soundscapes/BC2026_Train_0001_S01_20240121_054500.ogg@15 --query class:banana --combine max \\
      --out more.csv
  python -m pipelines.search --store work/store --query head:linear-1a2b3c4d5e6f:banana --out banana.csv
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("search", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--features", default="birdnet",
                    help="feature view to compare: birdnet, perch, custom:<name>, ... (default birdnet; ignored "
                         "by a head: query, which reads its head's own view)")
    ap.add_argument("--query", action="append", required=True,
                    help="clip.ogg@OFFSET, a stored window id, class:CODE or head:HEAD_ID:CODE (repeat for several)")
    defaults = SearchParams()
    ap.add_argument("--k", type=at_least(1), default=defaults.k, help=f"hits to return (default {defaults.k})")
    ap.add_argument("--combine", choices=COMBINES, default=defaults.combine,
                    help="how the cosines to several examples combine (default mean)")
    ap.add_argument("--pooling", choices=("mean", "max", "meanmax"), default=defaults.pooling,
                    help="frames -> window pooling of the view (default mean)")
    ap.add_argument("--where", default=None,
                    help="SQL condition over window_id, source, filename, start_s, site, date, hour")
    ap.add_argument("--per-file", type=cap_or_none, default=defaults.per_file,
                    help=f"at most this many hits per audio file (default {defaults.per_file}; none: no cap)")
    ap.add_argument("--per-site", type=cap_or_none, default=defaults.per_site,
                    help="at most this many hits per site (default: no cap)")
    ap.add_argument("--exclude-labelled", action="store_true", help="skip windows that already have labels")
    ap.add_argument("--data", default=None,
                    help="competition data folder holding the audio for the .html page (default: the one ingest "
                         "recorded)")
    ap.add_argument("--no-cache", action="store_true",
                    help="do not read or write <store>/search_cache/ (decode the stored features instead)")
    ap.add_argument("--out", required=True, help="a .csv or .html file to write, in an existing folder")
    args = ap.parse_args(argv)
    params = SearchParams(k=args.k, combine=args.combine, pooling=args.pooling, where=args.where,
                          per_file=args.per_file, per_site=args.per_site, exclude_labelled=args.exclude_labelled)
    command = "python -m pipelines.search " + shlex.join(sys.argv[1:] if argv is None else argv)
    path, result = run_search(args.store, args.features, args.query, params, args.out, data_dir=args.data,
                              command=command, use_cache=not args.no_cache, bars=PlannedProgress)
    print(summary_line(path, result))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (--out is replaced only by a complete file)")
