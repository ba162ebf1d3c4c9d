"""``python -m pipelines.predict``: a trained head → submission.csv for a folder of soundscapes.

Embeds the audio with exactly the extractor versions the head was trained on (a mismatch is
refused), applies every fold model and averages them, and writes row_id + one column per class in
sample_submission.csv's order, then validates the file. A file that cannot be decoded gets the
class prior for its 12 rows (reported) so the submission stays complete.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from featurestore.store import FeatureStore, StoreError
from models.frame import class_names_of
from models.predict import list_audio, predict_audio
from models.submission import read_header, validate_submission, write_submission
from models.training import HEADS_DIR
from pipelines._cli import parser, run_main
from pipelines.leaderboard import leaderboard
from pipelines.validate_submission import expected_ids_for_audio


def best_head(store: FeatureStore) -> str:
    """The leaderboard's first head."""
    board = leaderboard(store)
    if board.num_rows == 0:
        raise StoreError(f"no experiments in {store.root}; run pipelines.train first")
    return board.column("head_id")[0].as_py()


def main(argv: list[str] | None = None) -> int:
    ap = parser("predict", __doc__)
    ap.add_argument("--store", required=True, help="feature store folder holding the trained head")
    ap.add_argument("--head", default="best", help="head id from pipelines.leaderboard (default: best OOF AUC)")
    ap.add_argument("--audio", required=True, type=Path, help="folder of soundscapes (e.g. test_soundscapes)")
    ap.add_argument("--out", required=True, type=Path, help="submission.csv to write")
    ap.add_argument("--sample", type=Path, default=None,
                    help="sample_submission.csv for the column order (default: the store's taxonomy order)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    args = ap.parse_args(argv)

    with FeatureStore.open(args.store, create=False, read_only=True) as store:
        head_id = best_head(store) if args.head == "best" else args.head
        columns = read_header(args.sample)[1:] if args.sample else class_names_of(store)
        head_dir = store.root / HEADS_DIR / head_id
    files = list_audio(args.audio)
    with tqdm(total=len(files), unit="file", desc=f"predict {head_id}") as bar:
        row_ids, probs, errors = predict_audio(head_dir, args.audio, columns, workers=args.workers,
                                               progress=bar.update)
    write_submission(args.out, row_ids, probs, columns)
    for error in errors:
        print(f"warning: {error}")
    n = validate_submission(args.out, args.sample or ["row_id", *columns], expected_ids_for_audio(args.audio))
    print(f"wrote {args.out}: {n} rows x {len(columns)} classes from head {head_id} (validated)")
    return 0


if __name__ == "__main__":
    run_main(main)
