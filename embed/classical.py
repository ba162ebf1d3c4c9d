"""Classical per-window features: log-mel, PCEN, MFCC + deltas, spectral shape and band energies.

Hand-written with numpy/scipy instead of librosa on purpose: the tests assert agreement with
librosa 0.11 (same STFT, Slaney mel basis, power_to_db, DCT-II MFCC, Savitzky-Golay deltas,
PCEN, spectral centroid/bandwidth/flatness), while this module is faster per minute of audio and
keeps librosa (217 MB, numba warm-up) out of the Kaggle inference path.

Frame-level matrices are computed once over the whole file at 32 kHz (so PCEN and the deltas see
real context across window edges), then summarised per 5-s window over the frames whose centre
lies inside the window and inside the audio: mean and std everywhere, percentiles for PCEN,
spectral shape and band energies.

The file is read as a stream (:meth:`embed.audio.Audio.stream`) in blocks of ``FRAME_BLOCK`` STFT
frames, so memory does not grow with its length: PCEN's smoother carries its state from block to
block, the deltas keep 8 frames of MFCC history, and a window's statistics are taken as soon as
its frames are final. A decoded and a streamed file go through the same blocks and give the same
floats; against one whole-file :func:`frame_features` call the blocks differ only by float32
round-off of the block-sized FFT/matrix products (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sp_fft
from scipy.signal import get_window, lfilter, lfilter_zi, savgol_filter

from embed.audio import Audio, SignalStream
from embed.extractors import EMBED_CODE_VERSION, Extractor, View, WindowOutput, one_blas_thread
from featurestore.windows import WINDOW_SECONDS

if TYPE_CHECKING:
    import pyarrow as pa

AMIN = 1e-10
PCEN_SCALE = 2.0**31  # librosa's recommended input scale for PCEN's default parameters
# STFT frames per block: 65.5 s at 32 kHz / hop 512, so a 60-s soundscape (3,751 frames) is one block and
# gives exactly the single-pass floats; ~150 MB of FFT work arrays at the peak.
FRAME_BLOCK = 4096
DELTA_HISTORY = 8     # MFCC frames kept before the first non-final delta (>= delta_width - 1)


@dataclass(frozen=True)
class ClassicalParams:
    sample_rate: int = 32000
    n_fft: int = 2048
    hop: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    n_mfcc: int = 20
    delta_width: int = 9
    pcen_gain: float = 0.98
    pcen_bias: float = 2.0
    pcen_power: float = 0.5
    pcen_time_constant: float = 0.4
    pcen_eps: float = 1e-6
    band_edges_hz: tuple[float, ...] = (0, 500, 1000, 2000, 3000, 4500, 6500, 9000, 16000)
    percentiles: tuple[float, ...] = (10, 50, 90)
    pcen_percentiles: tuple[float, ...] = (90,)


# ---------------------------------------------------------------------------- frame-level matrices
def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                    f / f_sp)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def fft_frequencies(sr: int, n_fft: int) -> np.ndarray:
    return np.fft.rfftfreq(n_fft, 1.0 / sr)


def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular Slaney-normalised mel filters (== librosa.filters.mel)."""
    fmax = float(sr) / 2 if fmax is None else fmax
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_frequencies(sr, n_fft))
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def stft_power(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(..., frames, 1 + n_fft // 2) power spectrogram of (..., samples) signals (a batch of equal-length
    frames is one FFT call), centred frames with zero padding, periodic Hann."""
    pad = n_fft // 2
    y = np.asarray(y, dtype=np.float32)
    lead = [(0, 0)] * (y.ndim - 1)
    padded = np.pad(y, [*lead, (pad, pad)])
    if padded.shape[-1] < n_fft:
        padded = np.pad(padded, [*lead, (0, n_fft - padded.shape[-1])])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]
    spec = sp_fft.rfft(frames * get_window("hann", n_fft, fftbins=True).astype(np.float32), axis=-1)
    return np.square(spec.real) + np.square(spec.imag)


def power_to_db(S: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(AMIN, S))


def pcen(S: np.ndarray, sr: int, hop: int, p: ClassicalParams) -> np.ndarray:
    """PCEN over time (axis 0) of a (frames, bands) magnitude spectrogram (== librosa.pcen).

    The smoother starts in steady state on the first frame (librosa's ``zi`` times the first
    frame) instead of librosa's default state of 1.0, which would give the first seconds of
    every file a large gain transient.
    """
    t_frames = p.pcen_time_constant * sr / float(hop)
    b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    zi = lfilter_zi([b], [1, b - 1])[0] * S[:1]
    smooth, _ = lfilter([b], [1, b - 1], S, zi=zi, axis=0)
    gain = np.exp(-p.pcen_gain * (np.log(p.pcen_eps) + np.log1p(smooth / p.pcen_eps)))
    bias, power = p.pcen_bias, p.pcen_power
    return (bias**power) * np.expm1(power * np.log1p(S * gain / bias))


def delta(x: np.ndarray, width: int, order: int) -> np.ndarray:
    """Savitzky-Golay derivative over time (axis 0), librosa.feature.delta(mode="interp")."""
    n = x.shape[0]
    width = min(width, n if n % 2 else n - 1)
    if width < 3:
        return np.zeros_like(x)
    return savgol_filter(x, width, polyorder=order, deriv=order, axis=0, mode="interp")


def spectral_shape(power: np.ndarray, mag: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """(frames, 3) centroid, bandwidth (Hz) and flatness, as librosa's spectral_* on |STFT|.

    Bandwidth uses sum(p * (f - c)^2) = sum(p * f^2) - c^2 (p sums to 1): two mat-vec products
    instead of a frames x bins deviation matrix.
    """
    total = mag.sum(axis=1, dtype=np.float64)
    total = np.where(total < np.finfo(mag.dtype).tiny, 1.0, total)
    centroid = (mag @ freqs).astype(np.float64) / total
    second = (mag @ np.square(freqs)).astype(np.float64) / total
    bandwidth = np.sqrt(np.maximum(second - np.square(centroid), 0.0))
    thresh = np.maximum(np.float32(AMIN), power)
    flatness = np.exp(np.mean(np.log(thresh), axis=1, dtype=np.float64)) / np.mean(thresh, axis=1, dtype=np.float64)
    return np.stack([centroid, bandwidth, flatness], axis=1)


def band_matrix(sr: int, n_fft: int, edges: tuple[float, ...]) -> np.ndarray:
    freqs = fft_frequencies(sr, n_fft)
    m = np.zeros((len(freqs), len(edges) - 1), dtype=np.float32)
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        m[(freqs >= lo) & (freqs < hi if j < len(edges) - 2 else freqs <= hi), j] = 1.0
    return m


@dataclass
class FrameFeatures:
    """Frame-level matrices of one file, each (frames, bands)."""

    logmel: np.ndarray
    pcen: np.ndarray
    mfcc: np.ndarray
    mfcc_d1: np.ndarray
    mfcc_d2: np.ndarray
    shape: np.ndarray
    bands: np.ndarray


def pcen_init(mel_mag_first: np.ndarray, sr: int, hop: int, p: ClassicalParams) -> np.ndarray:
    """PCEN smoother state in steady state on the first frame (see :func:`pcen`)."""
    t_frames = p.pcen_time_constant * sr / float(hop)
    b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    return lfilter_zi([b], [1, b - 1])[0] * mel_mag_first[:1]


def pcen_block(S: np.ndarray, zi: np.ndarray, sr: int, hop: int, p: ClassicalParams) -> tuple[np.ndarray, np.ndarray]:
    """PCEN of consecutive frames ``S`` given the smoother state ``zi``; returns (pcen, state after)."""
    t_frames = p.pcen_time_constant * sr / float(hop)
    b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    smooth, zf = lfilter([b], [1, b - 1], S, zi=zi, axis=0)
    gain = np.exp(-p.pcen_gain * (np.log(p.pcen_eps) + np.log1p(smooth / p.pcen_eps)))
    bias, power = p.pcen_bias, p.pcen_power
    return (bias**power) * np.expm1(power * np.log1p(S * gain / bias)), zf


def _per_frame(power: np.ndarray, p: ClassicalParams, basis: np.ndarray, bands: np.ndarray) -> dict[str, np.ndarray]:
    """The matrices that depend on one frame only, plus the PCEN input (mel magnitude)."""
    mel_power = power @ basis.T
    logmel = power_to_db(mel_power)
    mfcc = sp_fft.dct(logmel, type=2, norm="ortho", axis=1)[:, : p.n_mfcc]
    mag = np.sqrt(power)
    mel_mag = mag @ basis.T
    return {"logmel": logmel, "mfcc": mfcc, "mel_mag": mel_mag * PCEN_SCALE,
            "shape": spectral_shape(power, mag, fft_frequencies(p.sample_rate, p.n_fft).astype(np.float32)),
            "bands": power_to_db(power @ bands)}


def frame_features(y: np.ndarray, p: ClassicalParams, basis: np.ndarray | None = None,
                   bands: np.ndarray | None = None) -> FrameFeatures:
    """Frame-level matrices of a whole signal in one pass (the reference the streamed blocks are tested against)."""
    sr = p.sample_rate
    basis = mel_basis(sr, p.n_fft, p.n_mels, p.fmin, p.fmax) if basis is None else basis
    bands = band_matrix(sr, p.n_fft, p.band_edges_hz) if bands is None else bands
    m = _per_frame(stft_power(y, p.n_fft, p.hop), p, basis, bands)
    return FrameFeatures(
        logmel=m["logmel"],
        pcen=pcen(m["mel_mag"], sr, p.hop, p),
        mfcc=m["mfcc"],
        mfcc_d1=delta(m["mfcc"], p.delta_width, 1),
        mfcc_d2=delta(m["mfcc"], p.delta_width, 2),
        shape=m["shape"],
        bands=m["bands"],
    )


class FrameStream:
    """Frame-level matrices of a :class:`SignalStream`, produced block by block in frame order.

    :meth:`advance` computes the next ``FRAME_BLOCK`` STFT frames and appends every frame whose
    matrices are final (all but the last ``delta_width // 2``, whose deltas wait for the next
    block, until the end of the file) to ``buffer``, which holds frames ``first .. done - 1``.
    ``n_frames`` is the file's frame count once ``finished``.
    """

    FIELDS = ("logmel", "pcen", "mfcc", "mfcc_d1", "mfcc_d2", "shape", "bands")

    def __init__(self, stream: SignalStream, p: ClassicalParams, basis: np.ndarray, bands: np.ndarray,
                 block: int | None = None):
        self.stream, self.p, self.basis, self.bands = stream, p, basis, bands
        self.block = max(2 * DELTA_HISTORY, block or FRAME_BLOCK)
        self.computed = 0                 # STFT frames computed
        self.first = self.done = 0        # buffer holds final frames [first, done)
        self.buffer: dict[str, np.ndarray] = {}
        self.finished = False
        self.n_frames: int | None = None
        self._zi: np.ndarray | None = None
        self._mfcc = np.zeros((0, p.n_mfcc), np.float32)   # MFCC rows [_mfcc_start, computed)
        self._mfcc_start = 0
        self._pending: dict[str, np.ndarray] = {}          # non-delta rows [done, computed)

    def frames_known(self) -> int:
        """A lower bound of the file's frame count (exact once ``finished``)."""
        return self.n_frames if self.n_frames is not None else 1 + self.stream.samples_known() // self.p.hop

    def advance(self) -> None:
        p, half = self.p, self.p.n_fft // 2
        t0 = self.computed
        t1 = t0 + self.block
        self.stream.fill_past((t1 - 1) * p.hop + half)
        if self.stream.eof:
            # a centred STFT of n samples has 1 + n // hop frames (old: len(pad(y, half)) >= n_fft always)
            self.n_frames = 1 + self.stream.end // p.hop
            t1 = min(t1, self.n_frames)
        if t1 > t0:
            segment = self.stream.take(t0 * p.hop - half, (t1 - 1) * p.hop + half)
            frames = np.lib.stride_tricks.sliding_window_view(segment, p.n_fft)[:: p.hop]
            spec = sp_fft.rfft(frames * get_window("hann", p.n_fft, fftbins=True).astype(np.float32), axis=1)
            m = _per_frame(np.square(spec.real) + np.square(spec.imag), p, self.basis, self.bands)
            if self._zi is None:
                self._zi = pcen_init(m["mel_mag"], p.sample_rate, p.hop, p)
            m["pcen"], self._zi = pcen_block(m.pop("mel_mag"), self._zi, p.sample_rate, p.hop, p)
            self._mfcc = np.concatenate([self._mfcc, m["mfcc"]])
            self._pending = {k: np.concatenate([self._pending[k], v]) if self._pending else v for k, v in m.items()}
            self.computed = t1
        self.stream.release(self.computed * p.hop - half)
        self.finished = self.n_frames is not None and self.computed >= self.n_frames
        self._finalise()

    def _finalise(self) -> None:
        """Deltas for the frames whose Savitzky-Golay neighbourhood is complete; move them to ``buffer``."""
        half = self.p.delta_width // 2
        ready = self.computed if self.finished else self.computed - half
        if ready <= self.done:
            return
        # savgol_filter(mode="interp") is a convolution inside and a polynomial fit on the first / last
        # delta_width rows: on this slice it sees, for every frame it finalises, what it sees on the whole file
        x = self._mfcc
        whole = self._mfcc_start == 0 and self.finished
        width = self.p.delta_width
        if whole:
            d1, d2 = delta(x, width, 1), delta(x, width, 2)
        else:
            d1 = savgol_filter(x, width, polyorder=1, deriv=1, axis=0, mode="interp")
            d2 = savgol_filter(x, width, polyorder=2, deriv=2, axis=0, mode="interp")
        a, b = self.done - self._mfcc_start, ready - self._mfcc_start
        n = ready - self.done
        new = {k: v[:n] for k, v in self._pending.items()}
        new["mfcc_d1"], new["mfcc_d2"] = d1[a:b], d2[a:b]
        self._pending = {k: v[n:] for k, v in self._pending.items()}
        self.buffer = {k: np.concatenate([self.buffer[k], new[k]]) if self.buffer else new[k] for k in self.FIELDS}
        self.done = ready
        keep = max(0, ready - DELTA_HISTORY) - self._mfcc_start
        self._mfcc, self._mfcc_start = self._mfcc[keep:], self._mfcc_start + keep

    def frames(self, t0: int, t1: int) -> FrameFeatures:
        """Final frames ``t0 .. t1 - 1`` (``first <= t0``, ``t1 <= done``)."""
        a, b = t0 - self.first, t1 - self.first
        return FrameFeatures(**{k: self.buffer[k][a:b] for k in self.FIELDS})

    def release(self, before: int) -> None:
        """Forget final frames before ``before``."""
        drop = min(max(0, before - self.first), self.done - self.first)
        if drop:
            self.buffer = {k: v[drop:] for k, v in self.buffer.items()}
            self.first += drop


# ---------------------------------------------------------------------------- per-window statistics
def window_frame_range(start_s: float, duration_s: float, sr: int, hop: int, n_frames: int,
                       window_s: float = WINDOW_SECONDS) -> tuple[int, int]:
    """Frames whose centre (t * hop / sr) lies in [start, min(start + window, duration)); at least one."""
    end_s = min(start_s + window_s, duration_s)
    t0 = min(int(math.ceil(start_s * sr / hop - 1e-9)), n_frames - 1)
    t1 = min(int(math.ceil(end_s * sr / hop - 1e-9)), n_frames)
    return t0, max(t1, t0 + 1)


def _stat_blocks(p: ClassicalParams) -> list[tuple[str, int, tuple[str, ...]]]:
    """(matrix name, width, statistics) in feature-vector order."""
    pct = tuple(f"p{int(q)}" for q in p.percentiles)
    return [
        ("logmel", p.n_mels, ("mean", "std")),
        ("pcen", p.n_mels, ("mean", "std", *(f"p{int(q)}" for q in p.pcen_percentiles))),
        ("mfcc", p.n_mfcc, ("mean", "std")),
        ("mfcc_d1", p.n_mfcc, ("mean", "std")),
        ("mfcc_d2", p.n_mfcc, ("mean", "std")),
        ("shape", 3, ("mean", "std", *pct)),
        ("bands", len(p.band_edges_hz) - 1, ("mean", "std", *pct)),
    ]


def feature_names(p: ClassicalParams) -> list[str]:
    shape_names = ("centroid", "bandwidth", "flatness")
    band_names = [f"band{int(lo)}_{int(hi)}" for lo, hi in zip(p.band_edges_hz[:-1], p.band_edges_hz[1:],
                                                                   strict=True)]
    names = []
    for block, width, stats in _stat_blocks(p):
        for stat in stats:
            for i in range(width):
                col = (shape_names[i] if block == "shape" else band_names[i] if block == "bands"
                       else f"{block}{i:03d}")
                names.append(f"{col}_{stat}")
    return names


def window_stats(ff: FrameFeatures, ranges: list[tuple[int, int]], p: ClassicalParams) -> np.ndarray:
    """(windows, features) float32 statistics over each window's frames."""
    out = []
    for t0, t1 in ranges:
        parts = []
        for block, _, stats in _stat_blocks(p):
            x = getattr(ff, block)[t0:t1].astype(np.float64)
            pct = [float(s[1:]) for s in stats if s.startswith("p")]
            parts.append(x.mean(axis=0))
            parts.append(x.std(axis=0))
            if pct:
                parts.append(np.percentile(x, pct, axis=0).ravel())
        out.append(np.concatenate(parts))
    return np.asarray(out, dtype=np.float32).reshape(len(ranges), -1)


class Classical(Extractor):
    """Per-window classical statistics at 32 kHz (see the module docstring)."""

    family = "classical"
    output = "windows"
    table = "classical_windows"
    views = (View("classical", "features", "classical", labels="feature_names"),)

    def __init__(self, params: ClassicalParams | None = None):
        super().__init__()
        self.p = params or ClassicalParams()
        self._basis = mel_basis(self.p.sample_rate, self.p.n_fft, self.p.n_mels, self.p.fmin, self.p.fmax)
        self._bands = band_matrix(self.p.sample_rate, self.p.n_fft, self.p.band_edges_hz)

    @classmethod
    def build(cls, taxonomy: pa.Table | None = None, *, presets: Mapping[str, dict] | None = None,
              **_) -> Classical:
        """``--extractor classical``: the default :class:`ClassicalParams` (no job option applies)."""
        return cls()

    @classmethod
    def from_params(cls, params: dict, **_) -> Classical:
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params["classical"].items()}
        return cls(ClassicalParams(**fields))

    def params(self) -> dict:
        return {"kind": self.family, "classical": asdict(self.p), "code_version": EMBED_CODE_VERSION}

    @property
    def sample_rate(self) -> int:
        """The rate the audio is resampled to before the front end (as frame models declare it)."""
        return self.p.sample_rate

    def feature_names(self) -> list[str]:
        return feature_names(self.p)

    def compute(self, audio: Audio, window_starts: list[float]) -> WindowOutput:
        """Window statistics, streaming the file (windows in any order; each one's frames are kept
        until it is done, so memory is bounded when they come roughly in time order)."""
        p, sr = self.p, self.p.sample_rate
        frames = FrameStream(audio.stream(sr), p, self._basis, self._bands)
        order = sorted(range(len(window_starts)), key=lambda i: float(window_starts[i]))
        features: list[np.ndarray | None] = [None] * len(window_starts)
        valid = np.zeros(len(window_starts), np.float32)
        with one_blas_thread():
            for pos, i in enumerate(order):
                start = float(window_starts[i])
                while True:
                    # the window's range is final once the audio is known to reach past it (or has ended)
                    end_known = frames.finished or frames.stream.duration_s >= start + WINDOW_SECONDS
                    duration = frames.stream.duration_s if frames.finished else start + WINDOW_SECONDS
                    t0, t1 = window_frame_range(start, duration, sr, p.hop, frames.frames_known())
                    if end_known and (frames.finished or t1 < frames.frames_known()) and t1 <= frames.done:
                        break
                    frames.release(min(int(math.ceil(start * sr / p.hop - 1e-9)), frames.frames_known() - 1))
                    frames.advance()
                features[i] = window_stats(frames.frames(t0, t1), [(0, t1 - t0)], p)[0]
                valid[i] = min(max((duration - start) / WINDOW_SECONDS, 0.0), 1.0)
                if pos + 1 < len(order):
                    nxt = float(window_starts[order[pos + 1]])
                    frames.release(min(int(math.ceil(nxt * sr / p.hop - 1e-9)), frames.frames_known() - 1))
            frames.stream.drain()   # every block decoded and checked, as a whole-file decode would
        matrix = np.asarray(features, dtype=np.float32).reshape(len(window_starts), len(self.feature_names()))
        return WindowOutput(matrix, valid)
