"""``--engine ray`` beside ``--engine local``: the same files embedded by both in one run, on fresh store copies.

Prints, for one machine:

* ``ray/local throughput: X.XX`` — audio seconds per wall second of the Ray run over the local one (the whole
  job: planning, the actors' start-up and the catalog; the Ray runtime's own start, paid once per cluster,
  is not counted and printed apart); the issue's goal is >= 0.9. ``--repeat N`` alternates the two N times
  and keeps the fastest of each (a shared box's load drifts over minutes);
* ``actor start-up: S s`` — the Ray pipeline's start until every actor has its extractors built;
* whether both stores hold bit-identical features (every window once);
* a projection for N machines x C cores on the full campaign (400 h of audio) from the measured per-core
  rate of the Ray run (start-up excluded), plus the start-up once.

Example (the demo's birdnet+classical embed on the small demo built in a temporary folder; ~2 min on 2 cores)::

    python bench/engine_ratio.py
    python bench/engine_ratio.py --store work/store --extractor classical --sources train_audio
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embed.extractors import ONE_THREAD_ENV  # noqa: E402

os.environ.update(ONE_THREAD_ENV)

import duckdb  # noqa: E402

from embed.job import run_embed  # noqa: E402
from embed.ray_engine import ray_session  # noqa: E402

CAMPAIGN_HOURS = 400.0
MACHINES = (1, 2, 4, 8, 16, 32)
CORES = (4, 16, 64)


def demo_store(folder: Path) -> Path:
    """The small demo dataset, ingested (as the test suite's ``demo_store``)."""
    from featurestore.demo_data import SMALL, generate_demo_dataset
    from featurestore.ingest import run_ingest

    generate_demo_dataset(folder / "demo", SMALL, seed=7)
    run_ingest(folder / "demo" / "data", folder / "store", workers=os.cpu_count() or 1)
    return folder / "store"


def stored_rows(store: Path, table: str) -> list[tuple]:
    """Every raw row of a part table without its write time, sorted (the parts, not the view)."""
    con = duckdb.connect()
    rows = con.execute(f"SELECT * EXCLUDE (written_at) FROM read_parquet('{store}/parts/{table}/*.parquet', "
                       "union_by_name = true)").fetchall()
    return sorted(rows, key=repr)


def projection(per_core_rate: float, startup_s: float) -> list[str]:
    """Hours for the campaign on N machines x C cores at ``per_core_rate`` audio-s per core-second."""
    lines = [f"projection for {CAMPAIGN_HOURS:.0f} h of audio at {per_core_rate:.1f} audio-s per core-second "
             f"(+{startup_s:.0f} s start-up), hours of wall time:",
             "  machines " + "".join(f"{f'x {c} cores':>13}" for c in CORES)]
    for n in MACHINES:
        cells = [(CAMPAIGN_HOURS * 3600 / (per_core_rate * n * c) + startup_s) / 3600 for c in CORES]
        lines.append(f"  {n:>8} " + "".join(f"{h:>13.2f}" for h in cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="an ingested store to copy (default: the small demo, built in a temp folder)")
    ap.add_argument("--extractor", default="birdnet,classical", help="extractors (default birdnet,classical)")
    ap.add_argument("--sources", help="only these sources, comma-joined (default all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="local workers = Ray actors (default: all cores)")
    ap.add_argument("--address", help="Ray cluster (default: a Ray runtime started here)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each engine, alternated; the fastest of each kept (default 1)")
    ap.add_argument("--keep", help="keep the two stores in this folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    sources = args.sources.split(",") if args.sources else None

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="engine-ratio-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = Path(args.store) if args.store else demo_store(work / "demo")
        local, ray_store = work / "local", work / "ray"
        local_wall = ray_wall = float("inf")
        with ray_session(args.address) as cluster:
            print(f"ray: {cluster.describe()}", flush=True)
            for attempt in range(args.repeat):   # alternated, the fastest of each kept: the box's load drifts
                for target in (local, ray_store):
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(source, target)
                t = time.perf_counter()
                a = run_embed(local, args.extractor, workers=args.workers, sources=sources)
                local_wall = min(local_wall, time.perf_counter() - t)
                t = time.perf_counter()
                run = run_embed(ray_store, args.extractor, engine="ray", actors=args.workers, sources=sources)
                if time.perf_counter() - t < ray_wall:
                    ray_wall, b = time.perf_counter() - t, run
                print(f"run {attempt + 1}/{args.repeat}: local {a.audio_s:.0f} audio-s in {a.wall_s:.1f} s "
                      f"({args.workers} worker(s)); ray {run.wall_s:.1f} s ({run.workers} actor(s), actor start-up "
                      f"{run.actor_startup_s or 0:.1f} s); load average {os.getloadavg()[0]:.1f}", flush=True)
        startup = b.actor_startup_s or 0.0
        same = all(stored_rows(local, t) == stored_rows(ray_store, t) for t in sorted(a.rows_written))
        ratio = (b.audio_s / ray_wall) / (a.audio_s / local_wall)
        steady = (b.audio_s / max(1e-9, ray_wall - startup)) / (a.audio_s / local_wall)
        print(f"ray/local throughput: {ratio:.2f} (excluding the actors' start-up: {steady:.2f})")
        print(f"ray cluster start (once per cluster, not counted): {cluster.connect_s:.1f} s")
        print(f"actor start-up: {startup:.1f} s")
        print(f"features bit-identical, every window once: {'yes' if same and a.windows_now == b.windows_now else 'NO'}")
        per_core = b.audio_s / max(1e-9, ray_wall - startup) / max(1, b.workers)
        print("\n".join(projection(per_core, startup)))
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
