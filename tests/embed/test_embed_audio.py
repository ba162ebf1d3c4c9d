"""Audio front end: decode + mono mix, polyphase resampling, the frame grid and padding, bad files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from embed.audio import Audio, AudioError, cut_frames, decode, frame_grid, frame_offsets, resample
from featurestore.windows import window_starts

TINY_CLIP = "bc2026/train_audio/1161364/iNat1264238.ogg"


def test_frame_offsets_cover_the_window() -> None:
    assert frame_offsets(3.0, 1.0) == [0.0, 1.0, 2.0]
    assert frame_offsets(3.0, 2.0) == [0.0, 2.0]
    assert frame_offsets(3.0, 1.5) == [0.0, 1.5, 2.0]   # last frame ends exactly at the window end
    assert frame_offsets(3.0, 3.0) == [0.0, 2.0]
    assert frame_offsets(5.0, 5.0) == [0.0]
    assert frame_offsets(1.0, 2.0) == [0.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        frame_offsets(3.0, 0.0)


def test_decode_real_clip_and_pad_a_short_one(shared_data: Path) -> None:
    path = shared_data / TINY_CLIP
    signal, rate = decode(path)
    info = sf.info(str(path))
    assert rate == 32000 and signal.dtype == np.float32 and len(signal) == info.frames
    audio = Audio(path, signal, rate)
    assert audio.duration_s == pytest.approx(0.288)
    starts = window_starts(audio.duration_s, soundscape=False)
    assert starts == [0]                                   # a 0.29-s clip keeps one window
    grid = frame_grid(starts, audio.duration_s, 48000, 3.0, 1.0)
    # frames 1 and 2 would only repeat the same 0.29 s with more padding: one frame, 9.6 % real audio
    assert grid.frame_index.tolist() == [0] and grid.valid_fraction[0] == pytest.approx(0.288 / 3, abs=1e-6)
    frames = cut_frames(audio.at(48000), grid.start_sample, 144000)
    n_real = len(audio.at(48000))
    assert frames.shape == (1, 144000) and np.all(frames[0, n_real:] == 0) and np.any(frames[0, :n_real] != 0)


def test_frame_grid_full_and_tail_windows() -> None:
    grid = frame_grid([0, 5, 10], 11.5, 48000, 3.0, 1.0)
    # full windows: 3 frames each; the 1.5-s tail window: one frame (it already reaches the end)
    assert grid.window_index.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert grid.start_s.tolist() == [0, 1, 2, 5, 6, 7, 10]
    assert grid.valid_fraction.tolist() == pytest.approx([1, 1, 1, 1, 1, 1, 0.5])
    # a 59.98-s soundscape: the last window's third frame still holds new audio and is kept
    grid = frame_grid([55], 59.98, 48000, 3.0, 1.0)
    assert grid.frame_index.tolist() == [0, 1, 2] and grid.valid_fraction[2] == pytest.approx(2.98 / 3, abs=1e-6)


def test_stereo_44k_is_mixed_to_mono_and_resampled(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(int(2.0 * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * 3000 * t)
    right = 0.2 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    audio = Audio.load(path)
    assert audio.rate == rate
    np.testing.assert_allclose(audio.signal, (left + right) / 2, atol=1e-6)
    at48 = audio.at(48000)
    np.testing.assert_allclose(at48, resample_poly(audio.signal.astype(np.float64), 160, 147), atol=1e-5)
    assert audio.at(48000) is at48                          # resampled once per rate
    spectrum = np.abs(np.fft.rfft(at48[4800:-4800]))
    freqs = np.fft.rfftfreq(len(at48) - 9600, 1 / 48000)
    assert abs(freqs[np.argmax(spectrum)] - 3000) < 5      # the tone keeps its pitch at the new rate
    assert resample(audio.signal, rate, rate) is audio.signal


def test_corrupt_and_empty_files_raise_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ogg"
    bad.write_bytes(b"OggS" + bytes(range(256)) * 8)
    with pytest.raises(AudioError, match=r"broken\.ogg: cannot decode audio"):
        Audio.load(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 32000)
    with pytest.raises(AudioError, match=r"empty\.wav: decoded to 0 audio frames"):
        decode(empty)


def test_unreadable_files_are_named_once_in_the_words_ingest_and_predict_use(shared_data: Path,
                                                                             tmp_path: Path) -> None:
    """Issue 23 item 13: a real 0-byte file, a real corrupt one and a real streamed (> 300 s) file with a NaN
    sample. Decoding, opening and the embed job's recorded error say what ingest's inventory and predict say
    (featurestore.audio_qa.unreadable_audio), the path once (it used to be twice: libsndfile's message repeats
    it, and the job prefixed a streamed file's error with the path again)."""
    from embed.audio import STREAM_ABOVE_S, decode_blocks
    from embed.job import FileTask, run_task
    from embed.registry import build
    from featurestore.audio_qa import inspect_audio

    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.ogg"
    corrupt.write_bytes(b"OggS" + bytes(range(256)) * 8)
    samples, rate = sf.read(str(shared_data / "bc2026/train_audio/1595929/iNat1242532.ogg"), dtype="float32")
    long = np.resize(samples, int(STREAM_ABOVE_S + 1) * rate)
    long[40 * rate] = np.nan
    streamed = tmp_path / "long_nan.wav"
    sf.write(str(streamed), long, rate, subtype="FLOAT")
    said = {empty: f"{empty}: empty file (0 bytes)",
            corrupt: inspect_audio(corrupt, "test_soundscapes", corrupt.name)["error"]}   # ingest's inventory row
    assert inspect_audio(empty, "test_soundscapes", empty.name)["error"] == said[empty]
    # libsndfile's reason, without its "Error opening '<path>': " (the wording varies with its version)
    assert re.fullmatch(rf"{re.escape(str(corrupt))}: cannot decode audio \(LibsndfileError: [^'/]+\)", said[corrupt])
    for path, words in said.items():
        for attempt in (Audio.open, Audio.load, decode, lambda p: list(decode_blocks(p, 1000))):
            with pytest.raises(AudioError) as caught:
                attempt(path)
            assert str(caught.value) == words
    assert Audio.open(streamed).streamed
    said[streamed] = f"{streamed}: decoded audio contains NaN or inf"

    extractor = build("classical", None)
    (tmp_path / "parts" / "embed_errors").mkdir(parents=True)
    task = [FileTask(f"test_soundscapes/{p.name}", str(p), 60.0, {extractor.version: [(f"{p.name}@0", 0)]})
            for p in said]
    result = run_task([extractor], task, tmp_path / "parts")
    assert [e["message"] for e in result.errors] == list(said.values())
    assert all(e["message"].count(str(tmp_path)) == 1 for e in result.errors)
