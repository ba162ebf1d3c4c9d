"""``python -m pipelines.predict``: a trained head → submission.csv for a folder of soundscapes.

Embeds the audio with exactly the extractor versions the head was trained on (a mismatch is
refused), applies every fold model and averages them, and writes row_id + one column per class in
sample_submission.csv's order, validated before it replaces ``--out`` (temp file + rename). A bad
file (undecodable, empty, NaN/inf, truncated or shorter than 60 s) gets the class prior on every
row it has no usable audio for, with one warning, so the submission stays complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

from featurestore.store import FeatureStore, StoreError
from models.experiments import best_head_id
from models.frame import class_names_of
from models.predict import predict_audio
from models.submission import read_header, write_submission
from models.training import HEADS_DIR
from pipelines._cli import add_quiet, add_store, add_workers, parser, progress, run_main
from pipelines.validate_submission import expected_ids_for_audio

EPILOG = """
Example:
  python -m pipelines.predict --store work/store --audio data/test_soundscapes --out submission.csv
  python -m pipelines.predict --store work/store --head-id lgbm-3f2a9c1b0d4e --audio data/test_soundscapes \\
      --out submission.csv --sample data/sample_submission.csv
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("predict", __doc__, EPILOG)
    add_store(ap, help="feature store folder holding the trained head")
    ap.add_argument("--head-id", default="best",
                    help="trained head id from pipelines.leaderboard (default: the best full-CV head)")
    ap.add_argument("--audio", required=True, type=Path, help="folder of soundscapes (e.g. test_soundscapes)")
    ap.add_argument("--out", required=True, type=Path, help="submission.csv to write")
    ap.add_argument("--sample", type=Path, default=None,
                    help="sample_submission.csv for the column order (default: the store's taxonomy order)")
    add_workers(ap)
    add_quiet(ap)
    args = ap.parse_args(argv)

    with FeatureStore.open(args.store, create=False, read_only=True) as store:
        head_id = best_head_id(store) if args.head_id == "best" else args.head_id
        columns = read_header(args.sample)[1:] if args.sample else class_names_of(store)
        head_dir = store.root / HEADS_DIR / head_id
    if not head_dir.is_dir():
        raise StoreError(f"no trained head {head_id!r} in {args.store}; pick one from pipelines.leaderboard")
    bars = []
    try:
        row_ids, probs, errors = predict_audio(
            head_dir, args.audio, columns, workers=args.workers, progress=lambda n: bars[0].update(n),
            on_start=lambda n: bars.append(progress(n, f"predict {head_id}", "file", quiet=args.quiet)))
    finally:
        for bar in bars:
            bar.close()
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    # validated before it replaces args.out: a failed check leaves no (or the previous) file
    write_submission(args.out, row_ids, probs, columns, sample_submission=args.sample or ["row_id", *columns],
                     expected_ids=expected_ids_for_audio(args.audio))
    print(f"wrote {args.out}: {len(row_ids)} rows x {len(columns)} classes from head {head_id} (validated)")
    return 0


if __name__ == "__main__":
    run_main(main)
