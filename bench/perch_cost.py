"""Cost per 5-s window of Perch (each form you give: SavedModel folder, .onnx, .tflite) beside BirdNET V2.4.

Each extractor runs through its own embed path (``Extractor.compute``: framing, peak normalisation,
the runtime, logit mapping) on the same decoded real audio, one interpreter thread each, the
extractors taking turns ``--repeats`` times (side by side in one run: the machine is shared and
noisy); the best turn of each counts. Prints seconds per window and the ratio to BirdNET, which
carries across machines better than the seconds do. The first call of each extractor (model load,
a SavedModel's XLA compile) is timed apart as its start-up.

The real Perch v2 is far larger than any stand-in: its cost on your machine is what this prints
with ``--model`` pointing at the real files (and what ``pipelines.plan`` measures for a bundle).

Usage: python bench/perch_cost.py --model ~/models/perch_v2_cpu/1 --model perch_v2.tflite
       [--audio FILE ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from embed import registry
from embed.audio import Audio
from embed.extractors import Extractor
from featurestore.windows import window_starts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_AUDIO = [SHARED / "field" / "spinetail.wav", SHARED / "bc2026" / "train_audio" / "1595929" / "iNat1242529.ogg"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="a Perch form: SavedModel folder, .onnx, .tflite")
    ap.add_argument("--audio", action="append", type=Path, help="audio files (default: the shared field clip and "
                                                                "a 26-s focal clip)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    clips = [(Audio.open(p), p.name) for p in (args.audio or DEFAULT_AUDIO)]
    work = [(audio, [float(s) for s in window_starts(audio.duration_s, soundscape=False)]) for audio, _ in clips]
    n_windows = sum(len(s) for _, s in work)
    extractors: dict[str, Extractor] = {"birdnet": registry.build("birdnet", None, threads=1)}
    for path in args.model:
        ex = registry.build("perch", None, model=Path(path).expanduser(), threads=1)
        extractors[f"perch ({ex.params()['runtime']}: {Path(path).name})"] = ex
    print(f"{n_windows} windows of {', '.join(n for _, n in clips)}; {args.repeats} turns each, best counts")
    best: dict[str, float] = {}
    for name, ex in extractors.items():           # start-up: model load, first call (a SavedModel's XLA compile)
        t0 = time.perf_counter()
        ex.compute(*work[0])
        print(f"  {name}: start-up {time.perf_counter() - t0:.2f} s")
    for _ in range(args.repeats):
        for name, ex in extractors.items():
            t0 = time.perf_counter()
            for audio, starts in work:
                ex.compute(audio, starts)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    base = best["birdnet"] / n_windows
    for name, seconds in best.items():
        per = seconds / n_windows
        print(f"{name:50s} {per * 1000:8.1f} ms/window   {per / base:8.3g}x BirdNET")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
