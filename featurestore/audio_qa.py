"""Per-file audio facts for the ``audio_inventory`` table (runs in worker processes).

One call decodes one file and returns a flat dict: duration, rate, channels, level statistics,
hashes of the bytes and of the decoded PCM, and a decode error or warning. It never raises for
bad audio: a file that is missing or cannot be decoded becomes a row whose ``error`` says why;
a truncated file, an all-zero one or one below 32 kHz gets a ``warning``.

Two messages have their one home here, so ingest, embed and predict say the same words:
:func:`unreadable_audio` (a missing, empty or undecodable file, naming its path once) and
:func:`low_rate_warning` (audio below the competition's 32 kHz).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from featurestore.errors import AudioError
from featurestore.files import file_sha256

QA_FRAME_SECONDS = 0.05
SILENT_DBFS = -60.0
CLIP_LEVEL = 0.999
MIN_SAMPLE_RATE = 32000   # the competition's rate; below it the models see audio upsampled from a low rate
_EPS = 1e-12

INVENTORY_FIELDS = (
    "path", "source", "filename", "size_bytes", "mtime_ns", "sha256_bytes", "sha256_pcm", "format", "subtype",
    "sample_rate", "channels", "frames", "duration_s", "peak", "rms_dbfs", "clipped_fraction",
    "silent_frame_fraction", "snr_db", "error", "warning",
)


def unreadable_audio(path: str | os.PathLike, exc: BaseException | None = None) -> AudioError:
    """The one error for an audio file that cannot be opened or decoded (``exc``: what the decoder raised).

    ``file not found: <path>``, ``<path>: empty file (0 bytes)``, or ``<path>: cannot decode audio
    (<error type>: <why>)``: the path once (libsndfile's own message repeats it; only its reason is kept).
    """
    path = Path(path)
    if not path.exists():
        return AudioError(f"file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        return AudioError(f"{path}: empty file (0 bytes)")
    if exc is None:
        return AudioError(f"{path}: cannot decode audio")
    why = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc).replace(str(path), path.name)
    return AudioError(f"{path}: cannot decode audio ({type(exc).__name__}: {why})")


def low_rate_warning(sample_rate: int) -> str | None:
    """The warning for audio below the competition's rate, or None (the inventory and predict say it alike)."""
    if sample_rate >= MIN_SAMPLE_RATE:
        return None
    return (f"sample rate {sample_rate} Hz is below {MIN_SAMPLE_RATE} Hz (a low-rate or wrong file: the models see "
            f"it upsampled, with nothing above {sample_rate / 2000:g} kHz)")


def ogg_has_end_of_stream(path: Path) -> bool:
    """True if the last Ogg page carries the end-of-stream flag (a truncated file lacks it)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    last = tail.rfind(b"OggS")
    return last >= 0 and last + 5 < len(tail) and bool(tail[last + 5] & 0x04)


def frame_levels_db(mono: np.ndarray, sample_rate: int, frame_seconds: float = QA_FRAME_SECONDS) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames (a trailing partial frame included)."""
    size = max(1, int(round(frame_seconds * sample_rate)))
    n_frames = int(np.ceil(len(mono) / size))
    padded = np.zeros(n_frames * size, dtype=np.float64)
    padded[: len(mono)] = mono
    power = np.square(padded).reshape(n_frames, size).sum(axis=1)
    counts = np.full(n_frames, size, dtype=np.float64)
    counts[-1] = len(mono) - size * (n_frames - 1)
    return 10.0 * np.log10(power / counts + _EPS)


def level_stats(samples: np.ndarray, sample_rate: int) -> dict:
    """Peak, RMS dBFS, clipped fraction, silent-frame fraction and an SNR proxy of (frames, channels) audio.

    The SNR proxy is the spread between loud and quiet 50-ms frames: 95th minus 10th percentile
    of frame RMS in dB. Clean focal calls score high, steady noise scores near zero.
    """
    mono = samples.mean(axis=1, dtype=np.float64)
    levels = frame_levels_db(mono, sample_rate)
    return {
        "peak": float(np.max(np.abs(samples))),
        "rms_dbfs": float(10.0 * np.log10(np.mean(np.square(mono)) + _EPS)),
        "clipped_fraction": float(np.mean(np.abs(samples) >= CLIP_LEVEL)),
        "silent_frame_fraction": float(np.mean(levels < SILENT_DBFS)),
        "snr_db": float(np.percentile(levels, 95) - np.percentile(levels, 10)),
    }


QA_BLOCK_FRAMES = 640  # QA frames (50 ms each) decoded per block: ~32 s, so memory does not grow with the file


@dataclass
class AudioScan:
    """What one streamed pass over a file found (``stats`` is None when a block was not finite)."""

    sample_rate: int
    channels: int
    frames: int
    finite: bool
    sha256_pcm: str | None
    stats: dict | None


def scan_audio(path: str | os.PathLike, block_frames: int = QA_BLOCK_FRAMES) -> AudioScan:
    """:func:`level_stats` and the PCM sha256 of a file, decoded ``block_frames`` QA frames at a time.

    Blocks hold whole 50-ms frames (a remainder is carried over), so frame levels, SNR proxy,
    silence, peak, clipping and the PCM hash equal a whole-file decode exactly; the RMS differs
    only by the float64 summation order (tested to 1e-9 dB).
    """
    digest = hashlib.sha256()
    peak, clipped, square_sum, levels, frames, finite = 0.0, 0, 0.0, [], 0, True
    with sf.SoundFile(str(path)) as fh:
        rate, channels = int(fh.samplerate), int(fh.channels)
        size = max(1, int(round(QA_FRAME_SECONDS * rate)))
        carry = np.zeros((0, channels), np.float32)
        while True:
            block = fh.read(size * block_frames, dtype="float32", always_2d=True)
            last = block.shape[0] == 0
            frames += len(block)
            finite = finite and bool(np.all(np.isfinite(block)))
            if not finite:   # only count the decoded frames from here on, as the row reports them
                if last:
                    return AudioScan(rate, channels, frames, False, None, None)
                continue
            pcm16 = np.clip(np.round(block * 32767.0), -32768, 32767).astype("<i2")
            digest.update(pcm16.tobytes())
            if len(block):
                peak = max(peak, float(np.max(np.abs(block))))
                clipped += int(np.count_nonzero(np.abs(block) >= CLIP_LEVEL))
                square_sum += float(np.sum(np.square(block.mean(axis=1, dtype=np.float64))))
            block = np.concatenate([carry, block]) if len(carry) else block
            whole = len(block) if last else len(block) - len(block) % size
            if whole:
                levels.append(frame_levels_db(block[:whole].mean(axis=1, dtype=np.float64), rate))
            carry = block[whole:]
            if last:
                break
    if frames == 0:
        return AudioScan(rate, channels, 0, True, None, None)
    levels_db = np.concatenate(levels)
    stats = {"peak": peak, "rms_dbfs": float(10.0 * np.log10(square_sum / frames + _EPS)),
             "clipped_fraction": clipped / float(frames * channels),
             "silent_frame_fraction": float(np.mean(levels_db < SILENT_DBFS)),
             "snr_db": float(np.percentile(levels_db, 95) - np.percentile(levels_db, 10))}
    return AudioScan(rate, channels, frames, True, digest.hexdigest(), stats)


def inspect_audio(path: str | os.PathLike, source: str, filename: str) -> dict:
    """Decode one file and return its inventory row (``error`` set instead of raising)."""
    path = Path(path)
    row: dict = dict.fromkeys(INVENTORY_FIELDS)
    row.update(path=f"{source}/{filename}", source=source, filename=filename)
    if not path.exists():
        row["error"] = str(unreadable_audio(path))
        return row
    try:
        stat = path.stat()
        row.update(size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
        row["sha256_bytes"] = file_sha256(path)
        if stat.st_size == 0:
            row["error"] = str(unreadable_audio(path))
            return row
        info = sf.info(str(path))
        scan = scan_audio(path)   # streamed in blocks: memory does not grow with the file's length
        sample_rate = scan.sample_rate
    except Exception as exc:  # soundfile raises several types for unreadable input; deleted while read: not found
        row["error"] = str(unreadable_audio(path, exc))
        return row
    row.update(format=info.format, subtype=info.subtype, sample_rate=int(sample_rate),
               channels=scan.channels, frames=scan.frames, duration_s=scan.frames / float(sample_rate))
    if scan.frames == 0:
        row["error"] = f"{path}: decoded to 0 audio frames"
        return row
    if not scan.finite:
        row["error"] = f"{path}: decoded audio contains NaN or inf"
        return row
    row["sha256_pcm"] = scan.sha256_pcm
    row.update(scan.stats)
    warnings = []
    if row["peak"] == 0.0:
        warnings.append("every sample is zero (digital silence: a dead channel or a failed recording)")
    if (low_rate := low_rate_warning(sample_rate)) is not None:
        warnings.append(low_rate)
    if info.format == "OGG" and not ogg_has_end_of_stream(path):
        warnings.append(f"truncated ogg (no end-of-stream page); kept the {row['duration_s']:.2f} s that decode")
    if info.frames != scan.frames:
        warnings.append(f"header says {info.frames} frames, decoded {scan.frames}")
    if warnings:
        row["warning"] = f"{path}: " + "; ".join(warnings)
    return row
