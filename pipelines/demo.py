"""``python -m pipelines.demo``: the whole birdclef-stack flow on a bundled synthetic dataset.

Generates a small BirdCLEF-shaped dataset (14 real classes, focal clips and 60-s soundscapes with
exact 5-s labels) and runs every stage that exists on it, printing a short summary of each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from featurestore.folds import make_folds
from featurestore.ingest import run_ingest
from pipelines._cli import parser, run_main
from pipelines.demo_data import FULL, SMALL, generate_demo_dataset
from pipelines.report import write_report

MARKER = "demo.json"


def default_out() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "birdclef-stack" / "demo"


def ensure_dataset(out: Path, small: bool, seed: int) -> Path:
    """Generate the dataset unless ``out`` already holds the same one (same size and seed)."""
    wanted = {"size": "small" if small else "full", "seed": seed, "generator": 1}
    marker = out / MARKER
    data = out / "data"
    if marker.exists() and json.loads(marker.read_text()) == wanted and (data / "train.csv").exists():
        return data
    data = generate_demo_dataset(out, SMALL if small else FULL, seed=seed)
    marker.write_text(json.dumps(wanted))
    return data


def run_demo(out: Path, *, small: bool = False, seed: int = 2026, workers: int | None = None,
             quiet: bool = False) -> dict:
    """Run every stage on the demo dataset; returns the stage summaries by name."""
    say = (lambda *_: None) if quiet else print
    out = Path(out).expanduser().resolve()
    store = out / "store"
    summaries: dict = {}

    t0 = time.perf_counter()
    data = ensure_dataset(out, small, seed)
    say(f"[demo] dataset ready at {data} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    summaries["ingest"] = run_ingest(data, store, workers=workers)
    say(f"[demo] ingest ({time.perf_counter() - t0:.1f} s)\n{summaries['ingest'].render()}")

    t0 = time.perf_counter()
    summaries["folds"] = make_folds(store, new_version=True)  # regenerated demo data = new fold inputs
    say(f"[demo] folds ({time.perf_counter() - t0:.1f} s)\n{summaries['folds'].render()}")

    t0 = time.perf_counter()
    summaries["report"] = write_report(store, out / "memo.html")
    say(f"[demo] data memo written to {summaries['report']} ({time.perf_counter() - t0:.1f} s)")

    say(f"[demo] store: {store}\n[demo] try: duckdb {store / 'catalog.duckdb'} "
        "\"SELECT class_name, count(*) FROM recordings GROUP BY 1\"")
    return summaries


def main(argv: list[str] | None = None) -> int:
    ap = parser("demo", __doc__)
    ap.add_argument("--out", type=Path, default=default_out(),
                    help=f"work folder for the demo data and store (default {default_out()})")
    ap.add_argument("--small", action="store_true", help="a smaller dataset (used by the tests)")
    ap.add_argument("--seed", type=int, default=2026, help="generator seed (default 2026)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    args = ap.parse_args(argv)
    run_demo(args.out, small=args.small, seed=args.seed, workers=args.workers)
    return 0


if __name__ == "__main__":
    run_main(main)
