"""Classical features agree with librosa 0.11 on a real clip, and window statistics with a recomputation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from embed.audio import Audio
from embed.classical import Classical, ClassicalParams, feature_names, frame_features

librosa = pytest.importorskip("librosa")

CLIP = "bc2026/train_audio/1595929/iNat1242529.ogg"   # 26.2 s, 32 kHz, a real frog recording
SR, N_FFT, HOP = 32000, 2048, 512


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Audio:
    return Audio.load(shared_data / CLIP)


@pytest.fixture(scope="module")
def reference(clip: Audio) -> dict:
    """librosa's matrices, (frames, bands) like ours."""
    y = clip.signal
    mel_power = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=128, power=2.0)
    logmel = librosa.power_to_db(mel_power, top_db=None)
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=20)
    mel_mag = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=128, power=1.0) * 2**31
    t_frames = 0.4 * SR / HOP
    b = (np.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[:] * mel_mag[:, :1]   # steady state on the first frame
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    return {
        "mel_power": mel_power.T, "logmel": logmel.T, "mfcc": mfcc.T,
        "mfcc_d1": librosa.feature.delta(mfcc).T, "mfcc_d2": librosa.feature.delta(mfcc, order=2).T,
        "pcen": librosa.pcen(mel_mag, sr=SR, hop_length=HOP, zi=zi).T,
        "shape": np.stack([librosa.feature.spectral_centroid(S=S, sr=SR)[0],
                           librosa.feature.spectral_bandwidth(S=S, sr=SR)[0],
                           librosa.feature.spectral_flatness(S=S)[0]], axis=1),
    }


def test_frame_matrices_match_librosa(clip: Audio, reference: dict) -> None:
    ff = frame_features(clip.signal, ClassicalParams())
    mel_mine = 10 ** (ff.logmel.astype(np.float64) / 10)
    loud = reference["mel_power"] > 1e-8
    rel = np.abs(mel_mine - reference["mel_power"]) / reference["mel_power"]
    assert ff.logmel.shape == reference["logmel"].shape
    assert np.median(rel[loud]) < 1e-5 and rel[loud].max() < 1e-3
    # within 50 dB of the loudest bin the two agree to 1e-3 dB; far below it float32 FFT round-off dominates
    above = reference["logmel"] > reference["logmel"].max() - 50
    np.testing.assert_allclose(ff.logmel[above], reference["logmel"][above], atol=1e-3)
    np.testing.assert_allclose(ff.logmel, reference["logmel"], atol=0.1)
    scale = np.abs(reference["mfcc"]).max()
    np.testing.assert_allclose(ff.mfcc, reference["mfcc"], atol=1e-5 * scale)
    np.testing.assert_allclose(ff.mfcc_d1, reference["mfcc_d1"], atol=1e-5 * scale)
    np.testing.assert_allclose(ff.mfcc_d2, reference["mfcc_d2"], atol=1e-5 * scale)
    # PCEN: tiny values in near-silent high bands carry float32 round-off of the mel magnitude
    np.testing.assert_allclose(ff.pcen, reference["pcen"], rtol=1e-3, atol=1e-3)
    assert np.linalg.norm(ff.pcen - reference["pcen"]) / np.linalg.norm(reference["pcen"]) < 1e-5
    np.testing.assert_allclose(ff.shape[:, :2], reference["shape"][:, :2], rtol=1e-4)   # centroid, bandwidth (Hz)
    np.testing.assert_allclose(ff.shape[:, 2], reference["shape"][:, 2], rtol=1e-3, atol=1e-7)


def test_window_statistics_equal_a_float64_recomputation(clip: Audio, reference: dict) -> None:
    extractor = Classical()
    starts = [0, 5, 10, 15, 20, 25]
    out = extractor.compute(clip, starts)
    names = extractor.feature_names()
    assert out.features.shape == (6, len(names)) == (6, 815) and out.features.dtype == np.float32
    assert len(set(names)) == len(names)
    np.testing.assert_allclose(out.valid_fraction, [1, 1, 1, 1, 1, (clip.duration_s - 25) / 5], rtol=1e-6)
    col = {n: i for i, n in enumerate(names)}
    centres = np.arange(reference["logmel"].shape[0]) * HOP / SR
    for w, start in enumerate(starts):
        inside = (centres >= start) & (centres < min(start + 5, clip.duration_s))
        logmel = reference["logmel"][inside].astype(np.float64)
        pcen = reference["pcen"][inside].astype(np.float64)
        centroid = reference["shape"][inside, 0].astype(np.float64)
        row = out.features[w]
        assert row[col["logmel017_mean"]] == pytest.approx(logmel[:, 17].mean(), abs=2e-3)
        assert row[col["logmel100_std"]] == pytest.approx(logmel[:, 100].std(), abs=2e-3)
        assert row[col["pcen040_p90"]] == pytest.approx(np.percentile(pcen[:, 40], 90), rel=1e-3, abs=1e-5)
        assert row[col["mfcc003_mean"]] == pytest.approx(reference["mfcc"][inside, 3].mean(), rel=1e-4, abs=1e-3)
        assert row[col["centroid_p50"]] == pytest.approx(np.median(centroid), rel=1e-4)


def test_tiny_clip_and_param_dependent_version(shared_data: Path) -> None:
    tiny = Audio.load(shared_data / "bc2026/train_audio/1161364/iNat1264238.ogg")   # 0.29 s: 19 STFT frames
    out = Classical().compute(tiny, [0])
    assert out.features.shape == (1, 815) and np.all(np.isfinite(out.features))
    assert out.valid_fraction[0] == pytest.approx(0.288 / 5)
    assert Classical().version == Classical().version
    assert Classical(ClassicalParams(n_mels=64)).version != Classical().version
    assert len(feature_names(ClassicalParams(n_mels=64))) == 815 - 5 * 64
    rebuilt = Classical.from_params(Classical().params())
    assert rebuilt.version == Classical().version
