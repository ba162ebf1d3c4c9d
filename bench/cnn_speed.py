"""Milliseconds per 5-s window: the CNN student (numpy front end + TFLite) vs BirdNET V2.4, in one run.

Both run as the embed job runs them (:meth:`Extractor.compute` on a decoded file: framing, front end,
interpreter, one XNNPACK thread each): BirdNET on its 3 frames per window at the default 1-s hop, the
CNN on its one 5-s frame. Repetitions alternate (BirdNET, CNN, BirdNET, ...) so machine load hits both;
the median of each is printed. Decoding is done once, outside the timing: it is the same for both.

Usage: python bench/cnn_speed.py --model work/cnn/cnn.tflite [--audio FILE] [--repeats 5]
       (a model: python -m pipelines.cnn --store STORE --teacher birdnet --out work/cnn)
Default audio: the shared real field recording (../shared/data/field/spinetail.wav).
Last line: ``speed-up per window over BirdNET: X.Xx`` (target >= 3x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from embed.audio import Audio
from embed.birdnet import BirdNet
from embed.cnn import CnnModel
from featurestore.windows import window_starts

FIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "field" / "spinetail.wav"


def windows_of(out) -> int:
    """Windows an extractor output covers (a frame model's frames name their window)."""
    grid = getattr(out, "grid", None)
    return len(set(grid.window_index.tolist())) if grid is not None else len(out.features)


def per_window_ms(extractor, audio: Audio, starts: list[float]) -> float:
    t0 = time.perf_counter()
    out = extractor.compute(audio, starts)
    elapsed = time.perf_counter() - t0
    # what was timed is what is counted: every window of the file, once
    assert windows_of(out) == len(starts), f"{extractor.name} computed {windows_of(out)} windows, counted {len(starts)}"
    return 1000.0 * elapsed / len(starts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="the CNN's .tflite (its .json beside it)")
    ap.add_argument("--audio", type=Path, default=FIELD, help="audio file to embed (default: the field clip)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    audio = Audio.load(args.audio)
    starts = [float(s) for s in window_starts(audio.duration_s, soundscape=True)]
    birdnet, student = BirdNet(None, threads=1), CnnModel(args.model, threads=1)
    for ex in (birdnet, student):       # warm-up: interpreter creation, resampling cache, XNNPACK packing
        ex.compute(audio, starts[:1])
    times: dict[str, list[float]] = {"birdnet": [], "cnn": []}
    for _ in range(args.repeats):
        times["birdnet"].append(per_window_ms(birdnet, audio, starts))
        times["cnn"].append(per_window_ms(student, audio, starts))
    b, c = statistics.median(times["birdnet"]), statistics.median(times["cnn"])
    print(f"audio: {args.audio} ({audio.duration_s:.1f} s, {len(starts)} windows), {args.repeats} alternating repeats")
    print(f"BirdNET V2.4 (3 x 3-s frames per window): {b:8.2f} ms per window")
    print(f"CNN student {args.model.name} (1 x 5-s frame): {c:8.2f} ms per window "
          f"(input {list(student.frontend.input_shape)})")
    print(f"speed-up per window over BirdNET: {b / c:.1f}x")


if __name__ == "__main__":
    main()
