"""Deterministic synthetic BirdCLEF-shaped dataset for the demo and the tests.

Writes the exact competition layout (taxonomy.csv, train.csv, train_soundscapes_labels.csv,
sample_submission.csv, train_audio/<label>/*.ogg, train_soundscapes/*.ogg, test_soundscapes/*.ogg)
for 14 real Pantanal classes (Aves, Amphibia, Insecta), each with its own synthetic call shape.
Soundscapes mix several classes over field-like noise at varied SNR; their 5-s labels are exact
and written like the real file (every row twice). The hidden test labels go to
``test_solution.csv`` beside the data folder so the demo can score its own submission. Unlabelled
train soundscapes (3x the labelled ones, same sites and call mix) have no labels in the competition
folder; their true labels go to ``unlabelled_answers.csv`` beside it, for scoring pseudo-labels.

It lives beside the layout it writes: folder names and the window grid come from
:mod:`featurestore.windows`, CSV headers from :mod:`featurestore.competition` (what ingest reads).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft
from scipy import signal

from featurestore.competition import LABEL_COLUMNS, TAXONOMY_COLUMNS
from featurestore.windows import FOCAL, SOUNDSCAPE, SOUNDSCAPE_SECONDS, TEST, WINDOW_SECONDS, row_id

SAMPLE_RATE = 32000     # the competition's audio rate
LABEL_MIN_OVERLAP_S = 0.3
# every column of the real train.csv, in its order (ingest requires only some of them)
TRAIN_CSV_HEADER = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
                    "common_name", "class_name", "inat_taxon_id", "author", "license", "rating", "url", "filename",
                    "collection"]


@dataclass(frozen=True)
class DemoClass:
    primary_label: str
    inat_taxon_id: str
    scientific_name: str
    common_name: str
    class_name: str
    call: str           # synthesizer name
    f_low: float        # Hz
    f_high: float       # Hz
    call_s: tuple[float, float]
    rate: float = 0.0   # pulses/trill rate (Hz) where it applies


# Real taxonomy rows (BirdCLEF+ 2026), each given a distinct synthetic call.
DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("banana", "10199", "Coereba flaveola", "Bananaquit", "Aves", "chirp_up", 5000, 8000, (0.25, 0.5)),
    DemoClass("barant1", "15764", "Thamnophilus doliatus", "Barred Antshrike", "Aves", "trill", 1200, 1600, (1.0, 2.0), 14),
    DemoClass("baymac", "19018", "Ara ararauna", "Blue-and-yellow Macaw", "Aves", "harmonic", 700, 3500, (0.4, 0.8)),
    DemoClass("ashgre1", "17431", "Hylophilus pectoralis", "Ashy-headed Greenlet", "Aves", "chirp_down", 3500, 6000, (0.3, 0.6)),
    DemoClass("astcra1", "508907", "Mustelirallus albicollis", "Ash-throated Crake", "Aves", "pulse", 1800, 2600, (1.0, 2.5), 7),
    DemoClass("batbel1", "8854", "Procnias nudicollis", "Bare-throated Bellbird", "Aves", "tone", 2300, 2400, (0.3, 0.5)),
    DemoClass("1176823", "1176823", "Leptodactylus luctator", "Wrestler Frog", "Amphibia", "pulse", 300, 700, (0.3, 0.6), 20),
    DemoClass("1595929", "1595929", "Lysapsus limellum", "Uruguay Harlequin Frog", "Amphibia", "trill", 2800, 3400, (0.8, 1.5), 30),
    DemoClass("22930", "22930", "Leptodactylus syphax", "Basin White-lipped Frog", "Amphibia", "chirp_up", 800, 1800, (0.15, 0.3)),
    DemoClass("22956", "22956", "Leptodactylus mystacinus", "Mustached Frog", "Amphibia", "harmonic", 450, 2000, (0.2, 0.35)),
    DemoClass("1161364", "1161364", "Guyalna cuta", "Guyalna cuta", "Insecta", "buzz", 4000, 9000, (2.0, 4.0), 120),
    DemoClass("244024", "244024", "Quesada gigas", "Giant Cicada", "Insecta", "buzz", 1500, 4500, (3.0, 6.0), 60),
    DemoClass("47158son01", "47158", "Insect son01", "Insect sonotype01", "Insecta", "pulse", 9000, 11000, (1.5, 3.0), 45),
    DemoClass("47158son02", "47158", "Insect son02", "Insect sonotype02", "Insecta", "tone", 6500, 6700, (1.0, 2.0)),
)
AUTHORS = ("Ana Souza", "Bruno Lima", "Carla Dias", "Diego Ramos", "Elisa Prado", "Fabio Nunes", "Gabi Torres",
           "Hugo Alves")
SITES = ("S01", "S02", "S03", "S04", "S05")


@dataclass(frozen=True)
class DemoSize:
    clips_per_class: int
    clip_seconds: tuple[float, float]
    train_soundscapes: int
    test_soundscapes: int
    unlabelled_soundscapes: int = 0     # train soundscapes without labels (answers in unlabelled_answers.csv)


FULL = DemoSize(clips_per_class=10, clip_seconds=(1.0, 40.0), train_soundscapes=10, test_soundscapes=4,
                unlabelled_soundscapes=30)
SMALL = DemoSize(clips_per_class=4, clip_seconds=(1.0, 12.0), train_soundscapes=8, test_soundscapes=4,
                 unlabelled_soundscapes=24)
ANSWERS_FILE = "unlabelled_answers.csv"   # beside data/, like test_solution.csv: only ever scored against, never trained on


def audio_file_count(size: DemoSize) -> int:
    """How many audio files :func:`generate_demo_dataset` writes for ``size`` (its progress total)."""
    return (len(DEMO_CLASSES) * size.clips_per_class + size.train_soundscapes + size.test_soundscapes
            + size.unlabelled_soundscapes)


# ---------------------------------------------------------------------------- synthesis
def _envelope(n: int, attack: float = 0.1) -> np.ndarray:
    ramp = max(1, int(n * attack))
    env = np.ones(n)
    env[:ramp] = np.linspace(0.0, 1.0, ramp)
    env[-ramp:] = np.linspace(1.0, 0.0, ramp)
    return env


def _band_noise(rng: np.random.Generator, n: int, f_low: float, f_high: float) -> np.ndarray:
    sos = signal.butter(4, [f_low, min(f_high, SAMPLE_RATE / 2 - 200)], btype="bandpass", fs=SAMPLE_RATE,
                        output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n))


def synth_call(cls: DemoClass, rng: np.random.Generator) -> np.ndarray:
    """One call of ``cls`` at unit peak, with small random variation of pitch and length."""
    duration = rng.uniform(*cls.call_s)
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    shift = rng.uniform(0.95, 1.05)
    lo, hi = cls.f_low * shift, cls.f_high * shift
    if cls.call in ("chirp_up", "chirp_down"):
        f0, f1 = (lo, hi) if cls.call == "chirp_up" else (hi, lo)
        wave = signal.chirp(t, f0=f0, t1=duration, f1=f1, method="quadratic")
    elif cls.call == "harmonic":
        f0 = lo * (1 + 0.03 * np.sin(2 * np.pi * 6 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        wave = sum(np.sin(k * phase) / k for k in range(1, int(hi // lo) + 1))
    elif cls.call == "trill":
        carrier = np.sin(2 * np.pi * np.cumsum(np.linspace(lo, hi, n)) / SAMPLE_RATE)
        wave = carrier * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * cls.rate * t)))
    elif cls.call == "pulse":
        gate = (np.mod(t * cls.rate, 1.0) < 0.35).astype(float)
        wave = _band_noise(rng, n, lo, hi) * gate
    elif cls.call == "buzz":
        wave = _band_noise(rng, n, lo, hi) * (0.6 + 0.4 * np.sin(2 * np.pi * cls.rate * t))
    elif cls.call == "tone":
        wave = np.sin(2 * np.pi * (lo + hi) / 2 * t) + 0.3 * np.sin(2 * np.pi * (lo + hi) * t)
    else:
        raise ValueError(f"unknown call synthesizer {cls.call!r}")
    wave = wave * _envelope(n)
    return wave / (np.max(np.abs(wave)) + 1e-12)


def field_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink noise + slow wind rumble + a faint steady insect band, at unit RMS."""
    size = sp_fft.next_fast_len(n, real=True)  # odd clip lengths make plain FFTs 10x slower
    spectrum = sp_fft.rfft(rng.standard_normal(size))
    freqs = sp_fft.rfftfreq(size, 1 / SAMPLE_RATE)
    pink = sp_fft.irfft(spectrum / np.sqrt(np.maximum(freqs, 20.0)), size)[:n]
    sos = signal.butter(2, 150, btype="lowpass", fs=SAMPLE_RATE, output="sos")
    t = np.arange(n) / SAMPLE_RATE
    wind = signal.sosfilt(sos, rng.standard_normal(n)) * (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t))
    hiss = _band_noise(rng, n, 7000, 8000)
    parts = [p / (np.std(p) + 1e-12) for p in (pink, wind, hiss)]
    noise = parts[0] + rng.uniform(0.3, 1.0) * parts[1] + rng.uniform(0.05, 0.3) * parts[2]
    return noise / np.std(noise)


def place_calls(track: np.ndarray, cls: DemoClass, rng: np.random.Generator, start_s: float, end_s: float,
                gap_s: tuple[float, float], level: float) -> list[tuple[float, float]]:
    """Add calls of ``cls`` between ``start_s`` and ``end_s``; returns their (start, end) seconds."""
    events = []
    t = start_s + rng.uniform(0.0, gap_s[0])
    while t < end_s:
        call = synth_call(cls, rng) * level
        i0 = int(t * SAMPLE_RATE)
        i1 = min(len(track), i0 + len(call))
        if i1 <= i0:
            break
        track[i0:i1] += call[: i1 - i0]
        events.append((i0 / SAMPLE_RATE, i1 / SAMPLE_RATE))
        t = i1 / SAMPLE_RATE + rng.uniform(*gap_s)
    return events


def _write_ogg(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = np.max(np.abs(audio))
    scaled = audio * (0.8 / peak) if peak > 0.8 else audio
    sf.write(str(path), scaled.astype(np.float32), SAMPLE_RATE, format="OGG", subtype="VORBIS")


def window_labels(events: dict[str, list[tuple[float, float]]], duration_s: int) -> list[list[str]]:
    """Labels of each 5-s window: classes with >= 0.3 s of call inside it (or the whole call if shorter)."""
    out = []
    for start in range(0, duration_s, WINDOW_SECONDS):
        end = start + WINDOW_SECONDS
        present = []
        for label, spans in events.items():
            for a, b in spans:
                overlap = min(b, end) - max(a, start)
                if overlap >= min(LABEL_MIN_OVERLAP_S, (b - a) * 0.5):
                    present.append(label)
                    break
        out.append(sorted(present))
    return out


# ---------------------------------------------------------------------------- writers
def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _soundscape(rng: np.random.Generator, site_classes: list[DemoClass]) -> tuple[np.ndarray, dict]:
    n = SOUNDSCAPE_SECONDS * SAMPLE_RATE
    noise_level = 10 ** (rng.uniform(-38, -28) / 20)
    track = field_noise(rng, n) * noise_level
    events: dict[str, list[tuple[float, float]]] = {}
    chosen = rng.choice(len(site_classes), size=min(len(site_classes), int(rng.integers(3, 6))), replace=False)
    for idx in chosen:
        cls = site_classes[int(idx)]
        snr_db = rng.uniform(0, 20)
        start = rng.uniform(0, 30)
        end = min(SOUNDSCAPE_SECONDS, start + rng.uniform(15, 45))
        spans = place_calls(track, cls, rng, start, end, (0.8, 5.0), noise_level * 10 ** (snr_db / 20) * 1.4)
        if spans:
            events[cls.primary_label] = spans
    return track, events


def generate_demo_dataset(out_dir: str | Path, size: DemoSize = FULL, seed: int = 2026, *,
                          progress: Callable[[int], object] | None = None) -> Path:
    """Write the demo dataset under ``out_dir/data`` (and ``out_dir/test_solution.csv``); returns the data dir.
    ``progress(1)`` is called after each audio file written (:func:`audio_file_count` in all); the files are
    the same with or without it."""
    tick = progress or (lambda _n: None)
    out_dir = Path(out_dir)
    data = out_dir / "data"
    rng = np.random.default_rng(seed)
    data.mkdir(parents=True, exist_ok=True)
    labels = [c.primary_label for c in DEMO_CLASSES]
    with open(data / "taxonomy.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TAXONOMY_COLUMNS)
        w.writerows([c.primary_label, c.inat_taxon_id, c.scientific_name, c.common_name, c.class_name]
                     for c in DEMO_CLASSES)

    homes = {a: (rng.uniform(-21.6, -16.5), rng.uniform(-57.6, -55.9)) for a in AUTHORS}
    train_rows = []
    for ci, cls in enumerate(DEMO_CLASSES):
        for k in range(size.clips_per_class):
            duration = float(rng.uniform(*size.clip_seconds))
            n = int(duration * SAMPLE_RATE)
            track = field_noise(rng, n) * 10 ** (rng.uniform(-45, -32) / 20)
            level = 10 ** (rng.uniform(-12, -3) / 20)
            place_calls(track, cls, rng, 0.0, max(0.05, duration - 0.1), (0.3, 2.5), level)
            secondary = []
            if rng.random() < 0.25:
                other = DEMO_CLASSES[(ci + 1 + int(rng.integers(0, len(DEMO_CLASSES) - 1))) % len(DEMO_CLASSES)]
                place_calls(track, other, rng, duration * 0.3, duration, (2.0, 6.0), level * 0.3)
                secondary = [other.primary_label]
            collection = "XC" if cls.class_name == "Aves" and rng.random() < 0.7 else "iNat"
            stem = f"{'XC' if collection == 'XC' else 'iNat'}{100000 + ci * 1000 + k}"
            filename = f"{cls.primary_label}/{stem}.ogg"
            _write_ogg(data / FOCAL / filename, track)
            tick(1)
            author = AUTHORS[int(rng.integers(0, len(AUTHORS)))]
            lat, lon = homes[author]
            train_rows.append([cls.primary_label, str(secondary), "['call']", f"{lat + rng.normal(0, 0.01):.4f}",
                               f"{lon + rng.normal(0, 0.01):.4f}", cls.scientific_name, cls.common_name,
                               cls.class_name, cls.inat_taxon_id, author, "cc-by-nc 4.0",
                               f"{rng.integers(0, 11) / 2:.1f}", f"https://example.org/demo/{stem}", filename,
                               collection])
    with open(data / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TRAIN_CSV_HEADER)
        w.writerows(train_rows)

    site_pool = {site: [DEMO_CLASSES[int(i)] for i in rng.choice(len(DEMO_CLASSES), 8, replace=False)]
                 for site in SITES}
    label_rows: list[list[str]] = []
    solution_rows: list[list] = []
    specs = [("Train", i) for i in range(size.train_soundscapes)] + [("Test", i) for i in range(size.test_soundscapes)]
    for split, i in specs:
        site = SITES[i % len(SITES)] if split == "Train" else SITES[(i * 2 + 1) % len(SITES)]
        day = 20240101 + int(rng.integers(0, 27))
        clock = f"{int(rng.integers(0, 24)):02d}{int(rng.choice([0, 15, 30, 45])):02d}00"
        name = f"BC2026_{split}_{i + 1:04d}_{site}_{day}_{clock}.ogg"
        track, events = _soundscape(rng, site_pool[site])
        _write_ogg(data / (SOUNDSCAPE if split == "Train" else TEST) / name, track)
        tick(1)
        per_window = window_labels(events, SOUNDSCAPE_SECONDS)
        for w_idx, present in enumerate(per_window):
            start = w_idx * WINDOW_SECONDS
            if split == "Train" and present:
                row = [name, _clock(start), _clock(start + WINDOW_SECONDS), ";".join(present)]
                label_rows += [row, row]  # the real file lists every window twice
            if split == "Test":
                solution_rows.append([row_id(name, start + WINDOW_SECONDS)]
                                     + [int(lab in present) for lab in labels])
    with open(data / "train_soundscapes_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_COLUMNS)
        w.writerows(label_rows)
    with open(data / "sample_submission.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *labels])
        w.writerows([r[0], *([round(1 / len(labels), 6)] * len(labels))] for r in solution_rows[:3])
    with open(out_dir / "test_solution.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *labels])
        w.writerows(solution_rows)
    _unlabelled(data, out_dir, size, rng, site_pool, tick)
    return data


def _unlabelled(data: Path, out_dir: Path, size: DemoSize, rng: np.random.Generator,
                site_pool: dict[str, list[DemoClass]], tick: Callable[[int], object]) -> None:
    """Unlabelled train soundscapes (same sites and call mix as the labelled ones, numbered after them)
    written into ``train_soundscapes/`` with no row in the labels file; their true window labels go to
    ``out_dir/unlabelled_answers.csv`` (the labels file's columns, one row per window, empty labels for
    silent windows) so pseudo-label quality can be scored honestly. Generated after everything else,
    so the labelled and test files are the same bytes with or without them."""
    rows: list[list[str]] = []
    for j in range(size.unlabelled_soundscapes):
        i = size.train_soundscapes + j
        site = SITES[i % len(SITES)]
        day = 20240101 + int(rng.integers(0, 27))
        clock = f"{int(rng.integers(0, 24)):02d}{int(rng.choice([0, 15, 30, 45])):02d}00"
        name = f"BC2026_Train_{i + 1:04d}_{site}_{day}_{clock}.ogg"
        track, events = _soundscape(rng, site_pool[site])
        _write_ogg(data / SOUNDSCAPE / name, track)
        tick(1)
        for w_idx, present in enumerate(window_labels(events, SOUNDSCAPE_SECONDS)):
            start = w_idx * WINDOW_SECONDS
            rows.append([name, _clock(start), _clock(start + WINDOW_SECONDS), ";".join(present)])
    with open(out_dir / ANSWERS_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_COLUMNS)
        w.writerows(rows)


def held_back_calls(out_dir: str | Path) -> dict[str, set[str]]:
    """Window ids of each class's true calls among the demo's windows that have no label in a store: the test
    soundscapes (``test_solution.csv``) and the unlabelled train soundscapes (:data:`ANSWERS_FILE`), both beside
    the data folder ``out_dir/data``. What search and the labelling loop are measured against (recall@k, probe
    AUC); never trained on."""
    out_dir = Path(out_dir)
    pos: dict[str, set[str]] = {}
    with open(out_dir / ANSWERS_FILE, newline="") as fh:
        for r in csv.DictReader(fh):
            h, m, s = map(int, r["start"].split(":"))
            for label in filter(None, r["primary_label"].split(";")):
                pos.setdefault(label, set()).add(f"{SOUNDSCAPE}/{r['filename']}@{h * 3600 + m * 60 + s}")
    with open(out_dir / "test_solution.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            stem, _, end = r.pop("row_id").rpartition("_")
            for label, v in r.items():
                if v == "1":
                    pos.setdefault(label, set()).add(f"{TEST}/{stem}.ogg@{int(end) - WINDOW_SECONDS}")
    return pos


def default_out() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "birdclef-stack" / "demo"
