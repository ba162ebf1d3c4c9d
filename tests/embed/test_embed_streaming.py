"""Long recordings are streamed: same numbers as a whole-file decode, and memory that does not grow.

Equality contract (issue 10, item 8):

* resampling, BirdNET frames/embeddings, QA peak / clipping / silence / SNR proxy / PCM sha256 and
  the classical features of a streamed file vs the same file decoded whole: bit-identical;
* classical features computed in ``FRAME_BLOCK`` blocks vs one whole-file STFT pass:
  |diff| <= 1e-4 + 1e-5 * |x| (measured: <= 8e-6 absolute on dB / MFCC / PCEN statistics, one float32
  ulp (3e-7 relative) on centroid / bandwidth in Hz; round-off of block-sized FFT / matrix
  products); a file of one block (<= 65 s, e.g. every 60-s soundscape) is bit-identical;
* QA RMS dBFS: within 1e-9 dB (float64 summation order).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from embed_helpers import birdnet_cache

import embed.audio as audio_mod
import embed.classical as classical_mod
from embed.audio import Audio, StreamResampler, decode, decode_blocks, frame_grid, resample
from embed.classical import Classical, frame_features, window_frame_range, window_stats
from embed.extractors import one_blas_thread
from featurestore.audio_qa import inspect_audio, level_stats, scan_audio

SPINETAIL = "field/spinetail.wav"                           # 19.5 s, 44.1 kHz, a real field recording
FROG = "bc2026/train_audio/1595929/iNat1242529.ogg"         # 26.2 s, 32 kHz ogg
TINY = "bc2026/train_audio/1161364/iNat1264238.ogg"         # 0.29 s
REPO = Path(__file__).resolve().parents[2]


def streamed(path: Path) -> Audio:
    """The file opened for streaming whatever its length (Audio.open only streams long files)."""
    info = sf.info(str(path))
    return Audio(path, None, int(info.samplerate), int(info.frames))


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny decode and STFT blocks, so a short real clip crosses many block edges."""
    monkeypatch.setattr(audio_mod, "BLOCK_SECONDS", 1.3)
    monkeypatch.setattr(classical_mod, "FRAME_BLOCK", 64)


@pytest.mark.parametrize("rates", [(44100, 32000), (44100, 48000), (32000, 48000)])
def test_stream_resampler_equals_resample_poly_on_a_real_44k_file(shared_data: Path, rates) -> None:
    x, rate = decode(shared_data / SPINETAIL)
    assert rate == 44100
    whole = resample(x, *rates)
    for block in (1000, 44100, 123457):
        rs = StreamResampler(*rates)
        y = np.concatenate([rs.push(x[i: i + block]) for i in range(0, len(x), block)] + [rs.finish()])
        assert y.dtype == np.float32 and np.array_equal(y, whole)


def test_block_decode_equals_whole_decode(shared_data: Path, tmp_path: Path) -> None:
    for path in (shared_data / FROG, shared_data / SPINETAIL):
        whole, _ = decode(path)
        assert np.array_equal(np.concatenate(list(decode_blocks(path, 5000))), whole)
    stereo = tmp_path / "stereo.flac"
    x, rate = sf.read(str(shared_data / SPINETAIL), dtype="float32")
    sf.write(stereo, np.stack([x, x[::-1]], axis=1), rate)
    assert np.array_equal(np.concatenate(list(decode_blocks(stereo, 777))), decode(stereo)[0])


def _single_pass(audio: Audio, starts: list[float]) -> np.ndarray:
    """The classical features from one whole-file frame_features call (the pre-streaming algorithm)."""
    c = Classical()
    with one_blas_thread():                                      # as Classical.compute runs
        ff = frame_features(audio.at(32000), c.p)
    n = ff.logmel.shape[0]
    return window_stats(ff, [window_frame_range(s, audio.duration_s, 32000, 512, n) for s in starts], c.p)


@pytest.mark.parametrize("clip", [SPINETAIL, FROG, TINY])
def test_classical_streamed_equals_decoded(shared_data: Path, clip: str, small_blocks: None) -> None:
    path = shared_data / clip
    decoded = Audio.load(path)
    starts = [0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0] if decoded.duration_s > 5 else [0.0]
    a = Classical().compute(decoded, starts)
    b = Classical().compute(streamed(path), starts)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.valid_fraction, b.valid_fraction)
    np.testing.assert_allclose(a.features, _single_pass(decoded, starts), rtol=1e-5, atol=1e-4)
    shuffled = Classical().compute(streamed(path), starts[::-1])       # any window order
    assert np.array_equal(shuffled.features, a.features[::-1])


def test_classical_one_block_file_is_bit_identical_to_a_single_pass(shared_data: Path) -> None:
    audio = Audio.load(shared_data / FROG)
    starts = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert np.array_equal(Classical().compute(audio, starts).features, _single_pass(audio, starts))


def test_birdnet_streamed_equals_decoded(shared_data: Path, tmp_path_factory: pytest.TempPathFactory,
                                         small_blocks: None) -> None:
    from embed.birdnet import BirdNet

    path = shared_data / SPINETAIL                               # 44.1 kHz: resampled to 48 kHz as it streams
    extractor = BirdNet(None, hop_s=1.0, cache_dir=birdnet_cache(tmp_path_factory))
    decoded = Audio.load(path)
    starts = [0.0, 5.0, 10.0, 15.0]                              # the last window is a 4.5-s tail
    a = extractor.compute(decoded, starts)
    b = extractor.compute(streamed(path), starts)
    grid = frame_grid(starts, decoded.duration_s, 48000, 3.0, 1.0)
    for g in (a.grid, b.grid):
        for f in ("window_index", "frame_index", "start_s", "start_sample", "valid_fraction"):
            assert np.array_equal(getattr(g, f), getattr(grid, f))
    assert a.embedding.shape == (12, 1024) and np.array_equal(a.embedding, b.embedding)
    # the frames themselves: the decoded path cuts them from one resample_poly call
    frames = np.stack([decoded.at(48000)[s: s + 144000] for s in grid.start_sample[:3]])
    assert np.array_equal(extractor._run(frames)["embedding"].astype(np.float16), a.embedding[:3])


def _whole_file_qa(path: Path) -> dict:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    return {**level_stats(samples, rate), "sha256_pcm": hashlib.sha256(pcm.tobytes()).hexdigest(),
            "frames": samples.shape[0]}


def test_qa_scan_equals_a_whole_file_decode(shared_data: Path, tmp_path: Path) -> None:
    stereo = tmp_path / "stereo_clipped.wav"
    x, rate = sf.read(str(shared_data / SPINETAIL), dtype="float32")
    sf.write(stereo, np.stack([np.clip(4 * x, -1, 1), x], axis=1), rate, subtype="FLOAT")
    for path in (shared_data / SPINETAIL, shared_data / FROG, shared_data / TINY, stereo):
        ref = _whole_file_qa(path)
        for block_frames in (1, 7, 640):                          # 50 ms, 0.35 s and 32 s blocks
            scan = scan_audio(path, block_frames)
            assert scan.frames == ref["frames"] and scan.sha256_pcm == ref["sha256_pcm"]
            for key in ("peak", "clipped_fraction", "silent_frame_fraction", "snr_db"):
                assert scan.stats[key] == ref[key], key
            assert scan.stats["rms_dbfs"] == pytest.approx(ref["rms_dbfs"], abs=1e-9)
        row = inspect_audio(path, "t", path.name)
        assert row["sha256_pcm"] == ref["sha256_pcm"] and row["snr_db"] == ref["snr_db"]
    assert _whole_file_qa(stereo)["clipped_fraction"] > 0    # the clipping count is exercised


_CHILD = textwrap.dedent("""
    import json, sys
    from embed.classical import Classical
    from embed.features import embed_file
    from featurestore.audio_qa import inspect_audio
    row = inspect_audio(sys.argv[1], "t", "long.flac")
    (starts, X), = embed_file(sys.argv[1], [Classical()]).values()
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
    print(json.dumps({"peak_mb": hwm, "windows": int(X.shape[0]), "error": row["error"]}))
""")


def test_long_file_peak_rss_is_bounded(tmp_path: Path) -> None:
    """QA + classical on a 20-min file stay under 700 MB; the whole-file code peaked at ~1.6 GB here
    (3.4 GB QA, 4.8 GB classical on a 1-h file; see bench/long_file_memory.py)."""
    spec = importlib.util.spec_from_file_location("long_file_memory", REPO / "bench" / "long_file_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "long.flac"
    bench.synthesise(path, 20 * 60.0)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"),
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["error"] is None and out["windows"] == 240
    assert out["peak_mb"] < 700, out
