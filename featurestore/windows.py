"""The 5-s window grid and every id built on it: the one home of the competition's time constants.

* ``window_id`` — the store's sample id of one window, ``<source>/<filename>@<start second>`` (e.g.
  ``train_audio/1161364/iNat1264238.ogg@0``); :func:`parse_window_id` splits it back;
* ``row_id`` — the competition's submission id, ``<file stem>_<end second>``;
* :func:`window_starts` — the windows of a file (12 for a 60-s soundscape).

This module imports no third-party package at import time: the inference path uses it without a store.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from featurestore.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

WINDOW_SECONDS = 5
SOUNDSCAPE_SECONDS = 60            # every competition soundscape covers at least this long
MIN_TAIL_SECONDS = 1.0
MAX_AUDIO_SECONDS = 24 * 3600     # no recording lasts longer: a label time past it is a typo, refused
FOCAL = "train_audio"              # source folders of the competition layout
SOUNDSCAPE = "train_soundscapes"
TEST = "test_soundscapes"
AUDIO_SOURCES = (FOCAL, SOUNDSCAPE, TEST)
SOUNDSCAPE_SOURCES = (SOUNDSCAPE, TEST)


def window_id(source: str, filename: str, start_s: float) -> str:
    """Stable sample id of one window, e.g. ``train_audio/1161364/iNat1264238.ogg@0``."""
    return f"{source}/{filename}@{int(round(start_s))}"


def parse_window_id(wid: str) -> tuple[str, int]:
    """``(file key "<source>/<filename>", start second)`` of a window id."""
    key, _, start = wid.rpartition("@")
    return key, int(start)


def file_of(wid: str) -> str:
    """The file key (``<source>/<filename>``) of a window id: windows of one file share it."""
    return wid.rpartition("@")[0]


def start_of(wid: str) -> int:
    """The start second of a window id."""
    return int(wid.rpartition("@")[2])


def row_id(filename: str, end_s: float) -> str:
    """The competition's row id of the window ending at ``end_s`` of a file: ``<stem>_<end second>``."""
    return f"{PurePosixPath(filename).stem}_{int(round(end_s))}"


def row_ids(filename: str, starts) -> list[str]:
    """Row ids of the windows of one file starting at ``starts`` (seconds)."""
    return [row_id(filename, float(s) + WINDOW_SECONDS) for s in starts]


def is_audio(path: Path) -> bool:
    """An audio file the toolkit reads: by suffix (:func:`decodable_suffixes`), hidden files excluded."""
    return path.suffix.lower() in decodable_suffixes() and not path.name.startswith(".")


# suffix -> (libsndfile major format, the subtype it needs or None): what soundfile decodes without ffmpeg.
# A suffix counts where this machine's libsndfile has the format (:func:`decodable_suffixes`; mp3 needs
# libsndfile >= 1.1, opus 1.0.29); libsndfile reads by content, the suffix only picks the files.
SOUNDFILE_SUFFIXES: dict[str, tuple[str, str | None]] = {
    ".ogg": ("OGG", None), ".oga": ("OGG", None), ".opus": ("OGG", "OPUS"), ".flac": ("FLAC", None),
    ".wav": ("WAV", None), ".wave": ("WAV", None), ".mp3": ("MP3", None), ".aif": ("AIFF", None),
    ".aiff": ("AIFF", None), ".aifc": ("AIFF", None), ".au": ("AU", None), ".snd": ("AU", None),
    ".caf": ("CAF", None), ".w64": ("W64", None), ".rf64": ("RF64", None), ".voc": ("VOC", None),
    ".sph": ("NIST", None), ".nist": ("NIST", None), ".sd2": ("SD2", None), ".paf": ("PAF", None),
    ".svx": ("SVX", None), ".avr": ("AVR", None), ".htk": ("HTK", None), ".pvf": ("PVF", None),
    ".sds": ("SDS", None), ".wve": ("WVE", None), ".xi": ("XI", None), ".sf": ("IRCAM", None),
}
# audio containers/codecs libsndfile does not read (ffmpeg territory): skipped, by name, with what to do
NEEDS_FFMPEG = (".m4a", ".m4b", ".aac", ".mp4", ".wma", ".webm", ".amr", ".3gp", ".ac3", ".mka", ".ape", ".wv",
                ".mp2", ".mpga")


@functools.cache
def decodable_suffixes() -> tuple[str, ...]:
    """The suffixes of :data:`SOUNDFILE_SUFFIXES` whose format (and subtype) this machine's libsndfile decodes
    (``soundfile.available_formats()``): the one rule for what is audio, for ingest, the embed job, predict
    (:func:`submit.submission.list_audio`) and the Kaggle runtime."""
    import soundfile as sf  # here, not at import: the inference path imports this module bare

    formats = sf.available_formats()
    ok = []
    for suffix, (fmt, subtype) in SOUNDFILE_SUFFIXES.items():
        try:
            if fmt in formats and (subtype is None or subtype in sf.available_subtypes(fmt)):
                ok.append(suffix)
        except Exception:  # noqa: BLE001 - an odd libsndfile build: the format counts as absent
            continue
    return tuple(ok)


# The labels of every trainable window: a focal clip's primary + secondary labels on each of its
# windows, a labelled soundscape window's expert labels. One definition: ingest creates the store view
# ``window_labels`` from it (for SQL users) and training reads the same query (models.frame).
WINDOW_LABEL_PARTS = {
    "recordings": f"""SELECT w.window_id, '{FOCAL}' AS source,
        list_sort(list_distinct(list_prepend(r.primary_label, coalesce(r.secondary_labels, [])))) AS labels
        FROM windows w JOIN recordings r ON w.source = '{FOCAL}' AND w.filename = r.filename""",
    "soundscape_labels": f"""SELECT w.window_id, '{SOUNDSCAPE}' AS source, list_sort(l.labels) AS labels
        FROM windows w JOIN soundscape_labels l
        ON w.source = '{SOUNDSCAPE}' AND w.filename = l.filename AND w.start_s = l.start_s""",
}


def window_labels_sql(tables: set[str] | list[str]) -> str | None:
    """The ``window_labels`` query over the label tables present (None when there is none)."""
    parts = [sql for name, sql in WINDOW_LABEL_PARTS.items() if name in tables]
    return " UNION ALL ".join(parts) if parts else None


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
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in ("window_id", "source", "filename", "start_s", "end_s",
                                             "audio_end_s", "is_partial", "row_id")}
    rows = sorted(inventory.select(["source", "filename", "duration_s", "error"]).to_pylist(),
                  key=lambda r: (r["source"], r["filename"]))
    for r in rows:
        if r["error"] is not None or r["duration_s"] is None:
            continue
        soundscape = r["source"] in SOUNDSCAPE_SOURCES
        for start in window_starts(r["duration_s"], soundscape, window_s, min_tail_s):
            end = start + window_s
            cols["window_id"].append(window_id(r["source"], r["filename"], start))
            cols["source"].append(r["source"])
            cols["filename"].append(r["filename"])
            cols["start_s"].append(start)
            cols["end_s"].append(end)
            cols["audio_end_s"].append(min(float(end), r["duration_s"]))
            cols["is_partial"].append(r["duration_s"] < end - 1e-6)
            cols["row_id"].append(row_id(r["filename"], end) if soundscape else None)
    types = {"start_s": pa.int32(), "end_s": pa.int32(), "audio_end_s": pa.float64(), "is_partial": pa.bool_()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in cols.items()})


# ---------------------------------------------------------------------------- soundscape names
SOUNDSCAPE_NAME_RE = re.compile(
    r"^(?P<soundscape_id>[A-Za-z0-9]+_(?P<split>Train|Test)_(?P<number>\d+))_(?P<site>S\d+)_"
    r"(?P<date>\d{8})_(?P<time>\d{6})$"
)


@dataclass(frozen=True)
class SoundscapeName:
    soundscape_id: str
    split: str
    site: str
    date: date
    time_utc: str
    hour: int


def parse_soundscape_name(filename: str) -> SoundscapeName:
    """``BC2026_Train_0039_S22_20211231_201500.ogg`` → id, site, date, UTC time, hour."""
    stem = Path(filename).stem
    match = SOUNDSCAPE_NAME_RE.match(stem)
    if not match:
        raise DataError(f"{filename}: soundscape name does not parse as <id>_<Train|Test>_<n>_<site>_<YYYYMMDD>_<HHMMSS>")
    try:
        day = datetime.strptime(match["date"], "%Y%m%d").date()
        clock = datetime.strptime(match["time"], "%H%M%S").time()
    except ValueError as exc:
        raise DataError(f"{filename}: invalid date or time in soundscape name ({exc})") from exc
    return SoundscapeName(match["soundscape_id"], match["split"].lower(), match["site"], day,
                          clock.strftime("%H:%M:%S"), clock.hour)
