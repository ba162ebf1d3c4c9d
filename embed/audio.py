"""Audio front end: decode to mono, polyphase resampling and the frame grid inside 5-s windows.

Every extractor sees the same signal: soundfile decode (ogg/flac/wav/mp3), channels averaged to
mono float32, resampled with :func:`scipy.signal.resample_poly` to the model's rate. Windows that
run past the end of the audio (short clips, a focal clip's trailing partial window) are
zero-padded and every frame records the fraction of it that is real audio.

Long recordings are streamed: :meth:`Audio.open` decodes a file longer than ``STREAM_ABOVE_S``
only block by block (``BLOCK_SECONDS``), and extractors read any file through
:meth:`Audio.stream`, a forward-only :class:`SignalStream` at their rate. Streaming resamples with
:class:`StreamResampler`, which evaluates the very sums ``resample_poly`` does (same filter, same
taps, same order), so a streamed file gives the same samples as a decoded one.

A file that cannot be opened or decoded raises :class:`AudioError` with the words ingest and predict
use too (:func:`featurestore.audio_qa.unreadable_audio`: not found, empty file (0 bytes), or cannot
decode audio), naming the path once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly, upfirdn

from featurestore.audio_qa import unreadable_audio
from featurestore.errors import AudioError
from featurestore.windows import WINDOW_SECONDS

STREAM_ABOVE_S = 300.0   # Audio.open streams files longer than this (seconds, from the header)
BLOCK_SECONDS = 30.0     # decode block of a streamed file


def _mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> mono float32; row-wise, so a block gives the rows of the whole."""
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32 (channels averaged) and its sample rate."""
    path = Path(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for unreadable input
        raise unreadable_audio(path, exc) from exc
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: decoded to 0 audio frames")
    mono = _mono(samples)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: decoded audio contains NaN or inf")
    return mono, int(rate)


def decode_blocks(path: str | os.PathLike, block_frames: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``path`` in order; together exactly :func:`decode`'s signal (same errors)."""
    path = Path(path)
    n = 0
    try:
        with sf.SoundFile(str(path)) as fh:
            while True:
                try:
                    block = fh.read(block_frames, dtype="float32", always_2d=True)
                except Exception as exc:  # soundfile raises several types for unreadable input
                    raise unreadable_audio(path, exc) from exc
                if block.shape[0] == 0:
                    break
                mono = _mono(block)
                if not np.all(np.isfinite(mono)):
                    raise AudioError(f"{path}: decoded audio contains NaN or inf")
                n += len(mono)
                yield mono
    except AudioError:
        raise
    except Exception as exc:  # opening failed
        raise unreadable_audio(path, exc) from exc
    if n == 0:
        raise AudioError(f"{path}: decoded to 0 audio frames")


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR, scipy's default) to ``rate_out``, float32."""
    if rate_in == rate_out:
        return signal
    ratio = Fraction(int(rate_out), int(rate_in))
    return resample_poly(signal, ratio.numerator, ratio.denominator).astype(np.float32, copy=False)


class StreamResampler:
    """``resample(signal, rate_in, rate_out)`` fed block by block, with bounded memory.

    Rebuilds ``resample_poly``'s float32 filter ``h`` and output offset, then computes each output
    ``y[m] = sum_j x[j] * h[m*down - j*up]`` with ``upfirdn`` on a buffered segment that starts at a
    multiple of ``down`` (so the polyphase alignment is unchanged) and holds every input sample the
    output needs: the same taps in the same order as the whole-signal call, hence the same floats
    (tested). Hand-written because scipy has no streaming ``resample_poly``; soxr is not a dependency.
    """

    def __init__(self, rate_in: int, rate_out: int):
        ratio = Fraction(int(rate_out), int(rate_in))
        self.up, self.down = ratio.numerator, ratio.denominator
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = np.asarray(firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)), dtype=np.float32)
        h *= self.up
        n_pre_pad = self.down - half_len % self.down
        self.offset = (half_len + n_pre_pad) // self.down   # resample_poly's n_pre_remove
        # resample_poly also appends zeros after h until its output is long enough; zero taps add
        # nothing, and the slice below never reads past the outputs that exist without them.
        self.h = np.concatenate([np.zeros(n_pre_pad, np.float32), h])
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0      # input index of _buf[0]
        self.n_in = 0            # input samples received
        self.n_out = 0           # output samples produced

    def _first_input(self, m: int) -> int:
        """Lowest input index feeding output ``m`` of upfirdn, rounded down to a multiple of ``down``."""
        j = max(0, -((len(self.h) - 1 - m * self.down) // self.up))   # ceil((m*down - len(h) + 1) / up)
        return j - j % self.down

    def _produce(self, stop: int) -> np.ndarray:
        """Outputs ``n_out .. stop - 1`` from the buffer (which holds every input they use)."""
        if stop <= self.n_out:
            return np.zeros(0, np.float32)
        m0, m1 = self.n_out + self.offset, stop + self.offset
        j0 = self._first_input(m0)
        segment = self._buf[j0 - self._buf_start:]
        shift = j0 * self.up // self.down
        y = upfirdn(self.h, segment, self.up, self.down)[m0 - shift: m1 - shift]
        self.n_out = stop
        keep = self._first_input(stop + self.offset)
        self._buf = self._buf[keep - self._buf_start:]
        self._buf_start = keep
        return y.astype(np.float32, copy=False)

    def push(self, block: np.ndarray) -> np.ndarray:
        """Feed the next input block; returns the outputs that no later input can change."""
        self._buf = np.concatenate([self._buf, np.asarray(block, np.float32)])
        self.n_in += len(block)
        # output q is final once its last input, floor((q + offset) * down / up), has arrived
        ready = -(-(self.n_in * self.up) // self.down) - self.offset
        return self._produce(max(ready, self.n_out))

    def finish(self) -> np.ndarray:
        """The remaining outputs; the total is ``ceil(n_in * up / down)``, as ``resample_poly`` gives."""
        return self._produce(-(-(self.n_in * self.up) // self.down))


class SignalStream:
    """A file's signal at one rate, read forward: ``take`` ranges in (roughly) increasing order and
    ``release`` what no later range needs, so memory holds about one decode block at a time.

    ``native_read`` counts decoded samples at the file's rate; once ``eof`` is set it is the
    file's length, and ``end`` the length at this rate.
    """

    def __init__(self, blocks: Iterator[np.ndarray], native_rate: int, rate: int):
        self._blocks = blocks
        self.native_rate, self.rate = int(native_rate), int(rate)
        self._resampler = StreamResampler(native_rate, rate) if native_rate != rate else None
        self._buf = np.zeros(0, np.float32)
        self._start = 0          # sample index of _buf[0]
        self._floor = 0          # samples before this were released (also those not read yet)
        self.native_read = 0
        self.eof = False

    @classmethod
    def of_array(cls, signal: np.ndarray, rate: int, native_frames: int, native_rate: int) -> SignalStream:
        """A stream over an in-memory signal already at ``rate``, decoded from ``native_frames`` samples."""
        stream = cls(iter(()), native_rate, rate)
        stream._buf, stream.native_read, stream.eof = signal, int(native_frames), True
        return stream

    @property
    def end(self) -> int:
        return self._start + len(self._buf)

    @property
    def duration_s(self) -> float:
        """Seconds decoded so far (the file's duration once ``eof``), exactly as ``Audio.duration_s``."""
        return self.native_read / float(self.native_rate)

    def samples_known(self) -> int:
        """``round(duration_s * rate)`` so far: a lower bound of the file's length in samples at this rate."""
        return int(round(self.duration_s * self.rate))

    def _read(self) -> None:
        block = next(self._blocks, None)
        if block is None:
            self.eof = True
            new = self._resampler.finish() if self._resampler else np.zeros(0, np.float32)
        else:
            self.native_read += len(block)
            new = self._resampler.push(block) if self._resampler else block
        if len(new):
            self._buf = np.concatenate([self._buf, new]) if len(self._buf) else new
            self.release(self._floor)

    def fill_past(self, stop: int) -> None:
        """Read until the end is known or both ``end`` and :meth:`samples_known` exceed ``stop``."""
        while not self.eof and (self.end <= stop or self.samples_known() <= stop):
            self._read()

    def take(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start .. stop - 1`` (zeros before 0 and after the end), float32."""
        self.fill_past(stop)
        if max(start, 0) < self._start:
            raise ValueError(f"samples from {start} were already released (kept from {self._start})")
        a, b = max(start, self._start), min(stop, self.end)
        if a == start and b == stop:
            return self._buf[a - self._start: b - self._start]
        out = np.zeros(stop - start, np.float32)
        if b > a:
            out[a - start: b - start] = self._buf[a - self._start: b - self._start]
        return out

    def release(self, before: int) -> None:
        """Forget samples before ``before``, including those still to be read (a gap between windows)."""
        self._floor = max(self._floor, before)
        before = self._floor
        drop = min(max(0, before - self._start), len(self._buf))
        if drop:
            self._buf = self._buf[drop:]
            self._start += drop

    def drain(self) -> None:
        """Read to the end of the file (so its length is known and every block was checked)."""
        while not self.eof:
            self._read()
            self.release(self.end)


@dataclass
class Audio:
    """One file: decoded (``signal``), or opened for streaming (``signal`` is None until :meth:`at`)."""

    path: Path
    signal: np.ndarray | None
    rate: int
    header_frames: int = 0
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Audio:
        signal, rate = decode(path)
        return cls(Path(path), signal, rate)

    @classmethod
    def open(cls, path: str | os.PathLike, stream_above_s: float = STREAM_ABOVE_S) -> Audio:
        """:meth:`load` a file up to ``stream_above_s`` long; a longer one is only opened (and streamed)."""
        path = Path(path)
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises several types for unreadable input
            raise unreadable_audio(path, exc) from exc
        if info.frames <= stream_above_s * info.samplerate:
            return cls.load(path)
        return cls(path, None, int(info.samplerate), int(info.frames))

    @property
    def streamed(self) -> bool:
        return self.signal is None

    @property
    def duration_s(self) -> float:
        """Decoded length; the header's for a streamed file (a stream reports the decoded one)."""
        n = self.header_frames if self.signal is None else len(self.signal)
        return n / float(self.rate)

    def at(self, rate: int) -> np.ndarray:
        """The signal at ``rate`` Hz (computed once per rate; decodes a streamed file whole)."""
        if self.signal is None:
            self.signal, _ = decode(self.path)
        if rate == self.rate:
            return self.signal
        if rate not in self._cache:
            self._cache[rate] = resample(self.signal, self.rate, rate)
        return self._cache[rate]

    def stream(self, rate: int, block_s: float | None = None) -> SignalStream:
        """The signal at ``rate`` as a :class:`SignalStream` (streamed from the file when not decoded)."""
        if self.signal is not None:
            return SignalStream.of_array(self.at(rate), rate, len(self.signal), self.rate)
        blocks = decode_blocks(self.path, max(1, int(round((block_s or BLOCK_SECONDS) * self.rate))))
        return SignalStream(blocks, self.rate, rate)


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
