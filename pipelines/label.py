"""``python -m pipelines.label``: import labels given in a spreadsheet to a search result, or export the
store's user labels (the ``user_labels`` table: one durable row per label, latest wins, undo kept as a log)
as files. Training uses them by default once any exist. The library: featurestore/user_labels.py."""

from __future__ import annotations

import getpass

from featurestore.user_labels import EXPORT_FORMATS, export_labels, import_labels
from pipelines._cli import add_store, parser, run_main

EPILOG = """
Import: --import FILE is a CSV with columns window_id and label (a pipelines.search --out hits.csv with a label
column you filled in: positive / negative / uncertain, or p/n/u, y/n, 1/0, ?; blank rows are skipped); every
label is for --class CODE, by --annotator (default: your login name). All rows or none are stored.

Export formats (the current label of each window, class and annotator: the latest click wins, undone clicks are gone):
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
  python -m pipelines.search --store work/store --query class:trsowl --exclude-labelled --out work/trsowl.csv
  python -m pipelines.label --store work/store --import work/trsowl.csv --class trsowl   # after filling 'label'
  python -m pipelines.label --store work/store --export soundscape-labels --out work/user_soundscape_labels.csv
  python -m pipelines.label --store work/store --export raven --out work/user_labels.selections.txt
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("label", __doc__, EPILOG)
    add_store(ap)
    action = ap.add_mutually_exclusive_group(required=True)
    action.add_argument("--import", dest="import_csv", metavar="FILE",
                        help="a CSV with window_id and label columns (a filled-in pipelines.search CSV)")
    action.add_argument("--export", choices=EXPORT_FORMATS, metavar="FORMAT",
                        help=f"write the current labels as: {', '.join(EXPORT_FORMATS)}")
    ap.add_argument("--class", dest="primary_label", metavar="CODE", help="with --import: the class labelled")
    ap.add_argument("--annotator", default=None, help="with --import: who labelled (default: your login name)")
    ap.add_argument("--out", help="with --export: file to write (replaced if it exists; its folder must exist)")
    args = ap.parse_args(argv)
    if args.import_csv:
        if not args.primary_label or args.out:
            ap.error("--import needs --class CODE (and takes no --out)")
        annotator = args.annotator or getpass.getuser()
        print(import_labels(args.store, args.import_csv, args.primary_label, annotator).render())
        return 0
    if not args.out or args.primary_label or args.annotator:
        ap.error("--export needs --out FILE (and takes no --class or --annotator)")
    print(export_labels(args.store, args.export, args.out).render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; nothing written (an import is stored whole or not at all, an export "
                               "renamed into place only when whole)")
