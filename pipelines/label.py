"""``python -m pipelines.label``: export the user labels of a store (the ``user_labels`` table, written one
click at a time by the labelling tools) as files. The library: featurestore/user_labels.py."""

from __future__ import annotations

from featurestore.user_labels import EXPORT_FORMATS, export_labels
from pipelines._cli import add_store, parser, run_main

EPILOG = """
Formats (the current label of each window, class and annotator: the latest click wins, undone clicks are gone):
  csv                one row per label: window_id, source, filename, start_s, end_s, primary_label, label
                     (positive / negative / uncertain), annotator, session, query, probe_round, labelled_at
  soundscape-labels  the competition's train_soundscapes_labels.csv columns filename,start,end,primary_label
                     (HH:MM:SS, ';'-joined classes): soundscape windows with a positive used for training
                     (labels two annotators disagree on, and uncertain ones, are left out)
  raven              one Raven Pro selection table (tab-separated) for every file: Begin File names the audio
                     file, Begin Time (s) = File Offset (s) is the start within it (open that file alone in
                     Raven); Species, Label and Annotator columns

The file is written under a temporary name and renamed, so it is whole or absent; its folder must exist.

Examples:
  python -m pipelines.label --store work/store --export soundscape-labels --out work/user_soundscape_labels.csv
  python -m pipelines.label --store work/store --export raven --out work/user_labels.selections.txt
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("label", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--export", required=True, choices=EXPORT_FORMATS, metavar="FORMAT",
                    help=f"file format: {', '.join(EXPORT_FORMATS)}")
    ap.add_argument("--out", required=True, help="file to write (replaced if it exists; its folder must exist)")
    args = ap.parse_args(argv)
    print(export_labels(args.store, args.export, args.out).render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (the file is renamed into place only when whole)")
