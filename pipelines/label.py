"""``python -m pipelines.label``: label one class in the browser (``--class CODE``: a local web app; a linear probe
retrains after every page and picks the next), import labels given in a spreadsheet to a search result, or export
the store's user labels (the ``user_labels`` table: one durable row per label, latest wins, undo kept as a log) as
files. Training uses them by default once any exist. The library: reports/label_app.py (the app),
models/probe.py (the loop), featurestore/user_labels.py (the labels)."""

from __future__ import annotations

import functools
import getpass
import sys
from pathlib import Path

from featurestore.user_labels import EXPORT_FORMATS, export_labels, import_labels
from pipelines._cli import PlannedProgress, add_store, parser, port_number, run_main, say
from reports.label_app import interrupted_words

EPILOG = """
Label in the browser (no --import / --export): --class CODE serves a page of windows at http://127.0.0.1:PORT/
(this computer only; the URL is the first line printed; --port 0 picks a free port). Per window: a mel
spectrogram, a 5-s clip, the probe's score and why it was picked; positive / negative / uncertain buttons, undo
and "next page" (retrains the probe on every label of the class and picks windows near its boundary, its top
scores and a random audit sample). Keys: j/k or arrows move, p/n/u label, space plays, z or ctrl-z undoes, Enter
is the next page. Every click is written to the store before the page shows it (a closed tab, Ctrl-C or a crash
loses nothing) and the store stays open read-only, so training jobs can run meanwhile. Each round's line (labels
so far, positives, precision of the last page, held-out ROC-AUC of the probe on your labels) is printed here and
shown on the page. The first page is a search by example: --query as in pipelines.search (default class:CODE).

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
  python -m pipelines.label --store work/store --class trsowl            # then open the printed URL
  python -m pipelines.label --store work/store --class trsowl --features perch --query my_clip.ogg@12.5 --port 0
  python -m pipelines.search --store work/store --query class:trsowl --exclude-labelled --out work/trsowl.csv
  python -m pipelines.label --store work/store --import work/trsowl.csv --class trsowl   # after filling 'label'
  python -m pipelines.label --store work/store --export soundscape-labels --out work/user_soundscape_labels.csv
  python -m pipelines.label --store work/store --export raven --out work/user_labels.selections.txt
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("label", __doc__, EPILOG)
    add_store(ap)
    action = ap.add_mutually_exclusive_group()
    action.add_argument("--import", dest="import_csv", metavar="FILE",
                        help="a CSV with window_id and label columns (a filled-in pipelines.search CSV)")
    action.add_argument("--export", choices=EXPORT_FORMATS, metavar="FORMAT",
                        help=f"write the current labels as: {', '.join(EXPORT_FORMATS)}")
    ap.add_argument("--class", dest="primary_label", metavar="CODE",
                    help="the class to label in the browser, or the class of an --import")
    ap.add_argument("--annotator", default=None, help="who labels (default: your login name)")
    ap.add_argument("--out", help="with --export: file to write (replaced if it exists; its folder must exist)")
    web = ap.add_argument_group("labelling in the browser (--class without --import / --export)")
    web.add_argument("--features", default="birdnet", help="feature view to search and train the probe on "
                     "(birdnet, perch, custom:<name>; default birdnet)")
    web.add_argument("--query", action="append", default=None,
                     help="the first page's search: clip.ogg@OFFSET, a stored window id or class:CODE (repeat for "
                          "several; default class:CODE)")
    web.add_argument("--port", type=port_number, default=8765, help="port on 127.0.0.1 (default 8765; 0: a free one)")
    web.add_argument("--data", type=Path, default=None,
                     help="competition data folder with the audio (default: the one ingest recorded)")
    args = ap.parse_args(argv)
    serving = not args.import_csv and not args.export
    if serving and (args.primary_label is None or args.out):
        ap.error("give --class CODE to label in the browser (and no --out), or --import FILE / --export FORMAT")
    if not serving and (args.query or args.data or args.port != 8765 or args.features != "birdnet"):
        ap.error("--features, --query, --port and --data are for labelling in the browser (without --import / "
                 "--export)")
    annotator = args.annotator or getpass.getuser()
    if serving:
        from reports.label_app import AppSettings, run_label_app

        settings = AppSettings(args.store, args.primary_label, annotator, features=args.features,
                               query=tuple(args.query or ()), data_dir=args.data, port=args.port)
        run_label_app(settings, say=say, bars=functools.partial(PlannedProgress, quiet=args.quiet))
        return 0
    if args.import_csv:
        if not args.primary_label or args.out:
            ap.error("--import needs --class CODE (and takes no --out)")
        print(import_labels(args.store, args.import_csv, args.primary_label, annotator).render())
        return 0
    if not args.out or args.primary_label or args.annotator:
        ap.error("--export needs --out FILE (and takes no --class or --annotator)")
    print(export_labels(args.store, args.export, args.out).render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=interrupted_words(sys.argv[1:]), heartbeat=False)
