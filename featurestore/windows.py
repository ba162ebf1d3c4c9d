"""The 5-s window grid of every audio file: the sample ids that every later table joins on."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from featurestore.competition import WINDOW_SECONDS

SOUNDSCAPE_SOURCES = ("train_soundscapes", "test_soundscapes")
MIN_TAIL_SECONDS = 1.0


def window_id(source: str, filename: str, start_s: float) -> str:
    """Stable sample id of one window, e.g. ``train_audio/1161364/iNat1264238.ogg@0``."""
    return f"{source}/{filename}@{int(round(start_s))}"


def window_starts(duration_s: float, soundscape: bool, window_s: int = WINDOW_SECONDS,
                  min_tail_s: float = MIN_TAIL_SECONDS) -> list[int]:
    """Start seconds of the windows of a file.

    Soundscapes get ``round(duration / 5)`` windows (a 59.98-s or 60.02-s file still gives the
    competition's 12). Focal clips get every full window plus a trailing partial one when it
    holds at least ``min_tail_s`` of audio; a clip shorter than one window still gets one.
    """
    if duration_s <= 0:
        return []
    if soundscape:
        count = max(1, int(round(duration_s / window_s)))
    else:
        full = int(math.floor(duration_s / window_s + 1e-9))
        tail = duration_s - full * window_s
        count = full + (1 if tail >= min_tail_s or full == 0 else 0)
    return [i * window_s for i in range(count)]


def build_windows(inventory: pa.Table, window_s: int = WINDOW_SECONDS, min_tail_s: float = MIN_TAIL_SECONDS) -> pa.Table:
    """Window table from ``audio_inventory`` rows (files with a decode error get no windows)."""
    cols: dict[str, list] = {k: [] for k in ("window_id", "source", "filename", "start_s", "end_s",
                                             "audio_end_s", "is_partial", "row_id")}
    rows = sorted(inventory.select(["source", "filename", "duration_s", "error"]).to_pylist(),
                  key=lambda r: (r["source"], r["filename"]))
    for r in rows:
        if r["error"] is not None or r["duration_s"] is None:
            continue
        soundscape = r["source"] in SOUNDSCAPE_SOURCES
        stem = Path(r["filename"]).stem
        for start in window_starts(r["duration_s"], soundscape, window_s, min_tail_s):
            end = start + window_s
            cols["window_id"].append(window_id(r["source"], r["filename"], start))
            cols["source"].append(r["source"])
            cols["filename"].append(r["filename"])
            cols["start_s"].append(start)
            cols["end_s"].append(end)
            cols["audio_end_s"].append(min(float(end), r["duration_s"]))
            cols["is_partial"].append(r["duration_s"] < end - 1e-6)
            cols["row_id"].append(f"{stem}_{end}" if soundscape else None)
    types = {"start_s": pa.int32(), "end_s": pa.int32(), "audio_end_s": pa.float64(), "is_partial": pa.bool_()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})
