"""Embedding throughput: the BirdNET interpreter ceiling vs the whole embed job with 1 and 2 workers.

On the same real-length files (default: the twelve 60-s, 32-kHz .ogg soundscapes of the small demo
dataset, generated into a temp folder), in one run, prints audio-seconds per wall-second and per
CPU-second for

  (a) the BirdNET-only interpreter ceiling: frames decoded, resampled and cut beforehand, the best
      of a few batch sizes, one interpreter thread;
  (b) the whole embed job with 1 worker: decode + resample + BirdNET + classical + Parquet writes,
      extractors one after another ($BIRDCLEF_STACK_OVERLAP=0);
  (b') the same, with BirdNET overlapped with decoding-side work in a thread (the default when a core
      is spare: 1 worker on 2 cores; audio-s per CPU-s shows the second core it uses);
  (c) the same job with 2 workers (on 2 cores: no overlap, every core has a worker);
  (d) the BirdNET-only ceiling of (a) in 2 processes at once: what the cores themselves give two
      independent interpreters (shared caches, memory bandwidth, a VM's vCPU mapping) - the bound
      for (c)/(b);

and a last line ``pipeline/ceiling ratio: X (overlapped: X')  2-worker scaling: Y, after start-up Y'
(hardware: Z)`` (wall-clock rates (b)/(a), (b')/(a), (c)/(b), (c minus the pool's start-up, measured
separately)/(b) and (d)/(a)). The machine's load average is printed first: other work on the cores
lowers (c).

Usage: python bench/embed_throughput.py [--data DIR] [--sources train_soundscapes,test_soundscapes] [--files 12] [--hop 1.0]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embed.audio import Audio, cut_frames, frame_grid
from embed.birdnet import FRAME_SECONDS, SAMPLE_RATE, make_runner, patched_model
from embed.extractors import OVERLAP_ENV, environ_set
from embed.job import run_embed
from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore
from featurestore.windows import is_audio

LABELS_CSV = "train_soundscapes_labels.csv"


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the job's worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def prepare(data: Path | None, work: Path, sources: list[str], n_files: int) -> tuple[Path, list[Path], float]:
    """A store ingested from a copy of ``data`` that holds only the first ``n_files`` audio files of ``sources``
    (links; the labels CSV cut to them), so every stage below embeds exactly the files it counts.
    Returns (store, files, audio seconds)."""
    if data is None:
        from featurestore.demo_data import SMALL, generate_demo_dataset
        data = generate_demo_dataset(work / "demo", SMALL, seed=11)
    files = [p for src in sources if (data / src).is_dir()
             for p in sorted(x for x in (data / src).iterdir() if x.is_file() and is_audio(x))][:n_files]
    if not files:
        raise SystemExit(f"no audio files in {sources} under {data}")
    subset = work / "subset"
    for src in sources:
        (subset / src).mkdir(parents=True)
    for item in data.iterdir():
        if item.name not in sources and item.name != LABELS_CSV:
            (subset / item.name).symlink_to(item.resolve())
    for f in files:
        (subset / f.parent.name / f.name).symlink_to(f.resolve())
    if (data / LABELS_CSV).exists():
        import csv
        keep = {f.name for f in files}
        with open(data / LABELS_CSV, newline="") as src_f, open(subset / LABELS_CSV, "w", newline="") as dst:
            rows = csv.reader(src_f)
            out = csv.writer(dst)
            out.writerow(next(rows))
            out.writerows(r for r in rows if r and r[0] in keep)
    store = work / "store"
    run_ingest(subset, store, workers=os.cpu_count())
    with FeatureStore.open(store, read_only=True) as s:
        rows = s.sql("SELECT source, filename, max(audio_end_s) AS d FROM windows GROUP BY 1, 2 ORDER BY 1, 2"
                     ).to_pylist()
    stored = sorted((r["source"], r["filename"]) for r in rows if r["source"] in sources)
    counted = sorted((f.parent.name, f.name) for f in files)
    assert stored == counted, f"the store holds {len(stored)} files of {sources}, the bench counts {len(counted)}"
    return store, files, sum(r["d"] for r in rows if r["source"] in sources)


def ceiling(files: list[Path], hop: float, cache: Path | None) -> tuple[float, float, int, int]:
    """Wall and CPU seconds of BirdNET alone on every frame of ``files``, at the best batch size."""
    frames = []
    for path in files:
        audio = Audio.load(path)
        starts = list(range(0, int(round(audio.duration_s / 5)) * 5, 5)) or [0]
        grid = frame_grid(starts, audio.duration_s, SAMPLE_RATE, FRAME_SECONDS, hop)
        frames.append(cut_frames(audio.at(SAMPLE_RATE), grid.start_sample, int(FRAME_SECONDS * SAMPLE_RATE)))
    frames = np.concatenate(frames)
    model = patched_model(cache)
    best, best_batch = float("inf"), 1
    probe = frames[: min(len(frames), 48)]
    for batch in (1, 2, 4, 8):
        runner = make_runner(model, batch_size=batch)
        runner.run(probe[:batch])                       # warm-up (allocation, XNNPACK packing)
        t0 = time.perf_counter()
        runner.run(probe)
        if (elapsed := time.perf_counter() - t0) < best:
            best, best_batch = elapsed, batch
    runner = make_runner(model, batch_size=best_batch)
    runner.run(frames[:best_batch])
    t0, c0 = time.perf_counter(), time.process_time()
    runner.run(frames)
    return time.perf_counter() - t0, time.process_time() - c0, best_batch, frames


def _ceiling_worker(args: tuple[str, int, str | None]) -> float:
    frames_file, batch, cache = args
    frames = np.load(frames_file)
    runner = make_runner(patched_model(cache), batch_size=batch)
    runner.run(frames[:batch])
    t0 = time.perf_counter()
    runner.run(frames)
    return time.perf_counter() - t0


def two_process_ceiling(frames: np.ndarray, batch: int, cache: Path | None, work: Path) -> float:
    """Wall seconds for two processes each running BirdNET alone on ``frames`` at the same time."""
    from embed.extractors import pool_env
    from featurestore.workers import worker_pool

    path = work / "frames.npy"
    np.save(path, frames)
    args = (str(path), batch, str(cache) if cache else None)
    with worker_pool(2, env=pool_env(2)) as pool:
        return max(pool.map(_ceiling_worker, [args, args]))


def _ping(_: int) -> int:
    return 1


def pool_start_up(workers: int, cache: Path | None, work: Path) -> float:
    """Seconds until ``workers`` spawned embed workers are ready (imports + extractors built): the fixed
    cost a multi-worker job pays once, large beside a 12-file run, nothing beside a 10,000-file one."""
    from embed import registry
    from embed.extractors import pool_env
    from embed.job import init_worker
    from featurestore.workers import worker_pool

    params = [registry.build(n, None).params() for n in ("birdnet", "classical")]
    t0 = time.perf_counter()
    with worker_pool(workers, init_worker, (params, {"cache_dir": cache}, str(work / "parts")),
                     env=pool_env(workers)) as pool:                                          # as the job
        pool.map(_ping, range(workers), chunksize=1)
        return time.perf_counter() - t0


def job(store: Path, work: Path, workers: int, sources: list[str], hop: float, cache: Path | None,
        n_files: int, audio_s: float, overlap: bool = True) -> tuple[float, float]:
    copy = work / f"store-{workers}-{overlap}"
    shutil.copytree(store, copy)
    t0, c0 = time.perf_counter(), cpu_seconds()
    with environ_set({OVERLAP_ENV: "1" if overlap else "0"}):
        summary = run_embed(copy, ["birdnet", "classical"], workers=workers, sources=sources, hop_s=hop,
                            cache_dir=cache)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert not summary.errors, summary.render()
    # what was timed is what is counted: the job embedded exactly the bench's files and audio
    assert summary.files == n_files and abs(summary.audio_s - audio_s) < 1e-3 * max(1.0, audio_s), (
        f"the job embedded {summary.files} file(s), {summary.audio_s:.1f} s; the bench counts {n_files}, {audio_s:.1f} s")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="competition-layout folder (default: generate the demo dataset)")
    ap.add_argument("--sources", default="train_soundscapes,test_soundscapes",
                    help="sources to use (default train_soundscapes,test_soundscapes)")
    ap.add_argument("--files", type=int, default=12, help="number of files (default 12)")
    ap.add_argument("--hop", type=float, default=1.0, help="BirdNET frame hop in s (default 1.0)")
    ap.add_argument("--cache-dir", type=Path, help="patched-model cache (default: the user cache)")
    args = ap.parse_args()
    sources = args.sources.split(",")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        work = Path(tmp)
        store, files, audio_s = prepare(args.data, work, sources, args.files)
        sources = sorted({f.parent.name for f in files})      # the sources the counted files come from
        print(f"{len(files)} file(s) of {', '.join(sources)}, {audio_s:.1f} s of audio, hop {args.hop:g} s")
        rates = {}
        wall, cpu, batch, frames = ceiling(files, args.hop, args.cache_dir)
        n_frames = len(frames)
        rates["a"] = audio_s / wall
        print(f"(a) BirdNET ceiling, {n_frames} frames, batch {batch}: {audio_s / wall:7.1f} audio-s/wall-s "
              f"{audio_s / cpu:7.1f} audio-s/CPU-s ({1000 * wall / n_frames:.1f} ms/frame)")
        for key, workers, overlap in (("b", 1, False), ("b'", 1, True), ("c", 2, False)):
            wall, cpu = job(store, work, workers, sources, args.hop, args.cache_dir, len(files), audio_s, overlap)
            rates[key] = audio_s / wall
            if key == "c":
                start_up = pool_start_up(workers, args.cache_dir, work)
                rates["c-steady"] = audio_s / max(1e-9, wall - start_up)
            print(f"({key}) embed job, {workers} worker(s), birdnet+classical{', overlapped' if overlap else ''}: "
                  f"{audio_s / wall:7.1f} audio-s/wall-s {audio_s / cpu:7.1f} audio-s/CPU-s")
        wall = two_process_ceiling(frames, batch, args.cache_dir, work)
        rates["d"] = 2 * audio_s / wall
        print(f"(d) BirdNET ceiling in 2 processes at once: {rates['d']:7.1f} audio-s/wall-s")
        print(f"(c) without its {start_up:.1f}-s worker start-up (spawn, imports, extractors; measured separately): "
              f"{rates['c-steady']:7.1f} audio-s/wall-s")
    overlapped = rates["b'"] / rates["a"]
    print(f"pipeline/ceiling ratio: {rates['b'] / rates['a']:.2f} (overlapped: {overlapped:.2f})"
          f"  2-worker scaling: {rates['c'] / rates['b']:.2f}, after start-up {rates['c-steady'] / rates['b']:.2f} "
          f"(hardware: {rates['d'] / rates['a']:.2f})")


if __name__ == "__main__":
    main()
