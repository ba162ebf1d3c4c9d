"""``python -m pipelines.compact``: rewrite a part table's many small Parquet parts as few large ones.

The embed job writes one small part per task (8,334 parts for 1M windows); every read of a part view
opens each of them. Compaction keeps exactly the rows the view shows (the latest row per key) in parts
of about ``--target-mb``. The library: featurestore/compact.py.
"""

from __future__ import annotations

import sys

from featurestore.compact import TARGET_BYTES, compact_store
from pipelines._cli import add_store, parser, positive_int, run_main

EPILOG = """
Safe at any moment: new parts are written (tmp file + rename) before any old part is removed, so readers
never miss a row (in between, each row is there twice and the view shows it once); kill -9 and re-run
finishes the job with no row lost or doubled. It holds the store's writer lock; readers are let in while
rows are copied and wait only while old parts are removed. Progress lines at least every 30 s.

Examples:
  python -m pipelines.compact --store work/store
  python -m pipelines.compact --store work/store --table birdnet_frames --target-mb 512
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("compact", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--table", help="one part table (default: every part table of the store)")
    ap.add_argument("--target-mb", type=positive_int, default=TARGET_BYTES // 2**20,
                    help=f"about this many MB per new part (default {TARGET_BYTES // 2**20})")
    args = ap.parse_args(argv)
    compact_store(args.store, args.table, target_bytes=args.target_mb * 2**20,
                  say=lambda line: print(line, file=sys.stdout, flush=True))
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; no row is lost or doubled (new parts are written before old ones are removed): "
        "re-run pipelines.compact to finish"
    ))
