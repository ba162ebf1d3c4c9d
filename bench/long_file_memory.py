"""Peak memory per stage for a long recording vs a 1-minute one (issue 10, item 8).

Synthesises a 1-minute and a ``--minutes`` (default 60) minute, 32-kHz mono file (FLAC, or OGG
with ``--format ogg``; written block by block, so the parent stays small) in a temp folder, then
runs each stage in a fresh subprocess and reads that child's peak RSS (``VmHWM``):

* ``qa``        featurestore.audio_qa.inspect_audio (the ingest QA pass of one file)
* ``classical`` the classical extractor on every 5-s window (embed.features.embed_file)
* ``birdnet``   the BirdNET extractor (embed.features.embed_file) on the windows of the first
                ``--birdnet-minutes`` minutes plus the last minute; the whole file is still decoded
                (old code) or streamed through (new code), only fewer frames go through the model,
                because BirdNET runs ~40 audio-s per s on one core.

Prints one line per stage: peak RSS for the 1-min file, for the long file, their ratio, and the
child's wall time. The child only uses APIs that predate streaming, so the same script measures
an older checkout: ``PYTHONPATH=/path/to/old/checkout python bench/long_file_memory.py``.

Usage: python bench/long_file_memory.py [--minutes 60] [--format flac|ogg] [--hop 1] [--birdnet-minutes 5]
       [--stages qa,classical,birdnet] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 32000


def synthesise(path: Path, seconds: float, seed: int = 0) -> None:
    """Pink-ish noise with a chirping call every few seconds, written in 10-s blocks (bounded memory)."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    block = 10 * RATE
    n_total = int(round(seconds * RATE))
    t = np.arange(block) / RATE
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = "OGG" if path.suffix == ".ogg" else "FLAC"
    subtype = "VORBIS" if fmt == "OGG" else "PCM_16"
    with sf.SoundFile(str(tmp), "w", RATE, 1, subtype=subtype, format=fmt) as fh:
        for start in range(0, n_total, block):
            n = min(block, n_total - start)
            noise = np.cumsum(rng.standard_normal(n)) * 0.002
            noise -= np.linspace(noise[0], noise[-1], n)          # keep the random walk bounded
            call = np.zeros(n)
            for at in rng.uniform(0, max(n / RATE - 1.0, 0.1), size=3):
                i0 = int(at * RATE)
                seg = slice(i0, min(n, i0 + int(0.4 * RATE)))
                tt = t[: seg.stop - seg.start]
                call[seg] += 0.3 * np.sin(2 * np.pi * (2500 + 3000 * tt) * tt) * np.hanning(len(tt))
            fh.write((noise + call + 0.01 * rng.standard_normal(n)).astype(np.float32))
    os.replace(tmp, path)


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(stage: str, path: str, hop: float, birdnet_minutes: float) -> None:
    """Run one stage on one file and print {"peak_mb", "seconds", "check"} as JSON."""
    t0 = time.perf_counter()
    if stage == "qa":
        from featurestore.audio_qa import inspect_audio

        row = inspect_audio(path, "bench", Path(path).name)
        if row["error"]:
            raise SystemExit(row["error"])
        check = f"rms {row['rms_dbfs']:.3f} dBFS, snr {row['snr_db']:.2f} dB"
    else:
        from embed.features import embed_file
        from featurestore.windows import window_starts

        duration = sf.info(path).duration
        starts = window_starts(duration, soundscape=True)
        if stage == "classical":
            from embed.classical import Classical

            extractor = Classical()
        else:
            from embed.birdnet import BirdNet

            extractor = BirdNet(None, hop_s=hop)
            head = [s for s in starts if s < birdnet_minutes * 60]
            starts = head + [s for s in starts if s >= duration - 60 and s not in head]
        out = embed_file(path, [extractor], window_starts=starts)
        (_, X), = out.values()
        # what was measured is what is counted: every requested window of the file
        assert X.shape[0] == len(starts), f"{stage}: {X.shape[0]} windows embedded, {len(starts)} requested"
        check = f"{X.shape[0]} windows x {X.shape[1]}, mean {float(np.mean(X)):.6g}"
    print(json.dumps({"peak_mb": vm_hwm_mb(), "seconds": time.perf_counter() - t0, "check": check}))


def measure(stage: str, path: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", stage, str(path), "--hop", str(args.hop),
           "--birdnet-minutes", str(args.birdnet_minutes)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{stage} on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the long file (default 60)")
    ap.add_argument("--format", choices=("flac", "ogg"), default="flac")
    ap.add_argument("--hop", type=float, default=1.0, help="BirdNET frame hop in seconds (default 1)")
    ap.add_argument("--birdnet-minutes", type=float, default=5.0,
                    help="BirdNET embeds the windows of the first N minutes plus the last minute (default 5)")
    ap.add_argument("--stages", default="qa,classical,birdnet")
    ap.add_argument("--keep", help="folder for the synthetic files (kept, and reused when present)")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.hop, args.birdnet_minutes)
        return

    import embed

    print(f"code under test: {Path(embed.__file__).resolve().parent.parent}")
    with tempfile.TemporaryDirectory(prefix="long_file_memory_") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        short = folder / f"one_minute.{args.format}"
        long = folder / f"long_{args.minutes:g}min.{args.format}"
        t0 = time.perf_counter()
        synthesise(short, 60.0, seed=1)
        synthesise(long, args.minutes * 60.0, seed=2)
        print(f"files: {short.name}, {long.name} ({long.stat().st_size / 1e6:.0f} MB) ready in "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"{'stage':<10} {'1 min peak':>11} {f'{args.minutes:g} min peak':>13} {'ratio':>6} "
              f"{'1 min s':>8} {'long s':>8}  check (long)")
        for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
            a, b = measure(stage, short, args), measure(stage, long, args)
            print(f"{stage:<10} {a['peak_mb']:>8.0f} MB {b['peak_mb']:>10.0f} MB {b['peak_mb'] / a['peak_mb']:>6.2f} "
                  f"{a['seconds']:>8.1f} {b['seconds']:>8.1f}  {b['check']}", flush=True)
        if stage_note := (f"birdnet: windows of the first {args.birdnet_minutes:g} min + the last minute, "
                          f"hop {args.hop:g} s" if "birdnet" in args.stages else ""):
            print(stage_note)


if __name__ == "__main__":
    main()
