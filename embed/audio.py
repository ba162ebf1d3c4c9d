"""Audio front end: decode to mono, polyphase resampling and the frame grid inside 5-s windows.

Every extractor sees the same signal: soundfile decode (ogg/flac/wav/mp3), channels averaged to
mono float32, resampled with :func:`scipy.signal.resample_poly` to the model's rate. Windows that
run past the end of the audio (short clips, a focal clip's trailing partial window) are
zero-padded and every frame records the fraction of it that is real audio.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from featurestore.competition import WINDOW_SECONDS, DataError


class AudioError(DataError):
    """An audio file cannot be decoded; the message names the file."""


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32 (channels averaged) and its sample rate."""
    path = Path(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for unreadable input
        raise AudioError(f"{path}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: decoded to 0 audio frames")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: decoded audio contains NaN or inf")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR, scipy's default) to ``rate_out``, float32."""
    if rate_in == rate_out:
        return signal
    ratio = Fraction(int(rate_out), int(rate_in))
    return resample_poly(signal, ratio.numerator, ratio.denominator).astype(np.float32, copy=False)


@dataclass
class Audio:
    """One decoded file with a per-rate cache of its resampled versions."""

    path: Path
    signal: np.ndarray
    rate: int
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Audio:
        signal, rate = decode(path)
        return cls(Path(path), signal, rate)

    @property
    def duration_s(self) -> float:
        return len(self.signal) / float(self.rate)

    def at(self, rate: int) -> np.ndarray:
        """The signal at ``rate`` Hz (computed once per rate)."""
        if rate == self.rate:
            return self.signal
        if rate not in self._cache:
            self._cache[rate] = resample(self.signal, self.rate, rate)
        return self._cache[rate]


def frame_offsets(frame_s: float, hop_s: float, window_s: float = WINDOW_SECONDS) -> list[float]:
    """Frame starts inside one window: 0, hop, 2*hop, ... plus one frame ending at the window's end.

    A 3-s frame with a 1-s hop gives [0, 1, 2]; a 2-s hop [0, 2]; a 5-s frame [0].
    """
    if frame_s <= 0 or hop_s <= 0:
        raise ValueError("frame and hop lengths must be positive")
    last = max(0.0, window_s - frame_s)
    offsets = [k * hop_s for k in range(int(math.floor(last / hop_s + 1e-9)) + 1)]
    if offsets[-1] < last - 1e-9:
        offsets.append(last)
    return [round(o, 6) for o in offsets]


@dataclass(frozen=True)
class FrameGrid:
    """The frames of one file's windows: which window, which frame, where, and how much is audio."""

    window_index: np.ndarray   # (n,) int32 index into the window list
    frame_index: np.ndarray    # (n,) int16 position inside the window
    start_s: np.ndarray        # (n,) float64 absolute start in the file
    start_sample: np.ndarray   # (n,) int64 at the model rate
    valid_fraction: np.ndarray  # (n,) float32 share of the frame that is real audio


def frame_grid(window_starts: list[float], duration_s: float, rate: int, frame_s: float, hop_s: float,
               window_s: float = WINDOW_SECONDS) -> FrameGrid:
    """Frames for every window.

    A window's later frame is skipped when it starts after the audio ends or when the frame before
    it already reaches the end: it would only repeat part of that audio with more zero padding.
    So a 1.2-s tail window gets one (padded) frame, a full window gets every frame.
    """
    frame_len = int(round(frame_s * rate))
    n_audio = int(round(duration_s * rate))
    rows: list[tuple[int, int, float, int, float]] = []
    for w, start in enumerate(window_starts):
        previous_end = -1
        for k, offset in enumerate(frame_offsets(frame_s, hop_s, window_s)):
            t = float(start) + offset
            s0 = int(round(t * rate))
            if k > 0 and (previous_end >= n_audio or s0 >= n_audio):
                break
            rows.append((w, k, t, s0, min(max((n_audio - s0) / frame_len, 0.0), 1.0)))
            previous_end = s0 + frame_len
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    return FrameGrid(np.asarray(cols[0], np.int32), np.asarray(cols[1], np.int16), np.asarray(cols[2], np.float64),
                     np.asarray(cols[3], np.int64), np.asarray(cols[4], np.float32))


def cut_frames(signal: np.ndarray, start_sample: np.ndarray, frame_len: int) -> np.ndarray:
    """(n, frame_len) float32 frames of ``signal`` starting at ``start_sample``, zero-padded at the end."""
    out = np.zeros((len(start_sample), frame_len), dtype=np.float32)
    for i, s0 in enumerate(start_sample.tolist()):
        piece = signal[s0: s0 + frame_len]
        out[i, : len(piece)] = piece
    return out
