"""Write and validate competition submissions (row_id + one probability column per class)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from featurestore.errors import DataError, SubmissionError
from featurestore.windows import (
    NEEDS_FFMPEG,
    SOUNDFILE_SUFFIXES,
    SOUNDSCAPE_SECONDS,
    TEST,
    WINDOW_SECONDS,
    decodable_suffixes,
    parse_soundscape_name,
    row_id,
    row_ids,
    window_id,
)


def _not_utf8(path: Path) -> SubmissionError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
        where = ""
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = f" line {line}"
    return SubmissionError(f"{path}{where}: not UTF-8 text")


def read_header(path: Path) -> list[str]:
    if not Path(path).exists():
        raise SubmissionError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except csv.Error as exc:
        raise SubmissionError(f"{path} line 1: not a valid CSV line ({exc})") from None
    if not header:
        raise SubmissionError(f"{path}: empty file")
    return header


def write_submission(path: str | os.PathLike, row_ids: list[str], probs: np.ndarray, columns: list[str], *,
                     sample_submission: str | os.PathLike | list[str] | None = None,
                     expected_ids: list[str] | None = None) -> Path:
    """Write ``row_id`` + ``columns`` (the sample_submission order) atomically.

    The rows go to a temporary file beside ``path``, which is checked with
    :func:`validate_submission` (against ``sample_submission``, default ``["row_id", *columns]``,
    and ``expected_ids`` when given) and only then renamed to ``path``; on any failure ``path`` is
    left as it was and the temporary file is removed.
    """
    path = Path(path)
    if probs.shape != (len(row_ids), len(columns)):
        raise SubmissionError(f"predictions {probs.shape} do not match {len(row_ids)} rows x {len(columns)} classes")
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row_id", *columns])
            for rid, row in zip(row_ids, probs, strict=True):
                writer.writerow([rid, *(f"{v:.6g}" for v in row)])
        try:
            validate_submission(tmp, sample_submission if sample_submission is not None else ["row_id", *columns],
                                expected_ids)
        except SubmissionError as exc:
            raise SubmissionError(f"{str(exc).replace(str(tmp), str(path))} ({path} not written)") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def validate_submission(path: str | os.PathLike, sample_submission: str | os.PathLike | list[str],
                        expected_ids: list[str] | None = None) -> int:
    """Check columns and order, row ids (unique, complete), numbers, NaN and [0, 1]; returns the row count.

    ``sample_submission`` is the sample file or its header (``["row_id", *classes]``).
    """
    path = Path(path)
    header = read_header(path)
    wanted = list(sample_submission) if isinstance(sample_submission, list) else read_header(Path(sample_submission))
    if header != wanted:
        if sorted(header) == sorted(wanted):
            first = next(i for i, (a, b) in enumerate(zip(header, wanted, strict=True)) if a != b)
            raise SubmissionError(f"{path}: columns are in the wrong order: column {first + 1} is {header[first]!r}, "
                                  f"sample_submission has {wanted[first]!r}")
        missing = [c for c in wanted if c not in header]
        extra = [c for c in header if c not in wanted]
        raise SubmissionError(f"{path}: columns differ from sample_submission: missing {missing[:10]}, "
                              f"unexpected {extra[:10]}")
    seen: dict[str, int] = {}
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader)
            for line, row in enumerate(reader, start=2):
                _check_row(path, line, row, header, seen)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except csv.Error as exc:
        raise SubmissionError(f"{path} line {line + 1}: not a valid CSV line ({exc})") from None
    if not seen:
        raise SubmissionError(f"{path}: no rows")
    if expected_ids is not None:
        wanted_ids = set(expected_ids)
        missing = [r for r in expected_ids if r not in seen]
        extra = [r for r in seen if r not in wanted_ids]
        if missing:
            raise SubmissionError(f"{path}: {len(missing)} expected row_id(s) missing, e.g. {missing[:3]}")
        if extra:
            raise SubmissionError(f"{path}: {len(extra)} unexpected row_id(s), e.g. {extra[:3]}")
    return len(seen)


def _check_row(path: Path, line: int, row: list[str], header: list[str], seen: dict[str, int]) -> None:
    if len(row) != len(header):
        raise SubmissionError(f"{path} line {line}: {len(row)} fields, expected {len(header)}")
    rid = row[0]
    if rid in seen:
        raise SubmissionError(f"{path} line {line}: row_id {rid!r} repeats line {seen[rid]}")
    seen[rid] = line
    for col, text in zip(header[1:], row[1:], strict=True):
        try:
            value = float(text)
        except ValueError:
            raise SubmissionError(f"{path} line {line} ({rid}), column {col}: {text!r} is not a number") from None
        if math.isnan(value):
            raise SubmissionError(f"{path} line {line} ({rid}), column {col}: NaN")
        if not 0.0 <= value <= 1.0:
            raise SubmissionError(f"{path} line {line} ({rid}), column {col}: {value} is outside [0, 1]")


def file_window_ids(path: Path, starts: np.ndarray) -> tuple[list[str], list[str]]:
    """(window ids for context features, competition row ids) of a soundscape's windows."""
    return [window_id(TEST, path.name, s) for s in starts], row_ids(path.name, starts)



def header_seconds(path: Path) -> float | None:
    """Duration the file's header states, or None when the header cannot be read."""
    info = header_info(path)
    return info[0] if info else None


def header_info(path: Path) -> tuple[float, int] | None:
    """(seconds, sample rate) the file's header states, or None when the header cannot be read."""
    try:
        info = sf.info(str(path))
    except Exception:  # soundfile raises several types for unreadable input; a missing file too
        return None
    if info.samplerate <= 0 or info.frames < 0:
        return None
    return info.frames / float(info.samplerate), int(info.samplerate)



def expected_window_count(path: Path, min_seconds: float = SOUNDSCAPE_SECONDS) -> int:
    """Rows a soundscape must have in the submission: its 5-s windows over the expected duration.

    The expected duration is the competition's ``min_seconds`` (60 s) or the header's duration
    when the header is readable and says more; the count is ``round(seconds / 5)`` (a 59.99-s or
    60.02-s file gives 12), as the store's window grid counts soundscape windows. Never raises:
    predict and the validator both use it, so their row sets are the same by construction.
    """
    seconds = max(header_seconds(path) or 0.0, float(min_seconds))
    return max(1, int(round(seconds / WINDOW_SECONDS)))



def expected_row_ids(path: Path, min_seconds: float = SOUNDSCAPE_SECONDS) -> list[str]:
    """Competition row ids of every expected window of one soundscape (see :func:`expected_window_count`)."""
    return file_window_ids(path, np.arange(expected_window_count(path, min_seconds)) * WINDOW_SECONDS)[1]



MORE_THAN = 3               # names shown per reason before "and N more"


def _names(paths: list[Path], slash: str = "") -> str:
    shown = ", ".join(p.name + slash for p in paths[:MORE_THAN])
    return shown + (f" and {len(paths) - MORE_THAN} more" if len(paths) > MORE_THAN else "")


@dataclass(frozen=True)
class AudioListing:
    """What one folder holds for predict (:func:`scan_audio`): the files predicted and every entry skipped,
    by reason. Only the folder's own files count: sub-folders are not searched (Kaggle's test_soundscapes/ is
    flat, and a row id is ``<stem>_<end s>``, with no folder in it)."""

    folder: Path
    files: list[Path]                 # decodable here (:func:`decodable_suffixes`), sorted by name
    needs_ffmpeg: list[Path]          # m4a, aac, ... (:data:`NEEDS_FFMPEG`)
    not_here: list[Path]              # a soundfile format this libsndfile build lacks (mp3 below 1.1)
    not_audio: list[Path]             # any other suffix
    hidden: list[Path]                # names starting with "."
    other: list[Path]                 # neither a file nor a folder (a broken link, a socket)
    folders: list[Path]               # sub-folders, not searched
    nested_audio: int                 # decodable files anywhere below those sub-folders

    @property
    def n_skipped(self) -> int:
        """Entries of the folder not predicted (sub-folders count once each)."""
        return sum(map(len, (self.needs_ffmpeg, self.not_here, self.not_audio, self.hidden, self.other,
                             self.folders)))

    def note(self) -> str | None:
        """One line: how many entries were skipped and why, naming them (None when none was)."""
        if not self.n_skipped:
            return None
        parts = []
        if self.needs_ffmpeg:
            first = self.needs_ffmpeg[0]
            parts.append(f"{len(self.needs_ffmpeg)} audio file(s) soundfile cannot decode without ffmpeg "
                         f"({_names(self.needs_ffmpeg)}): convert them first, e.g. ffmpeg -i {first.name} "
                         f"{first.stem}.flac")
        if self.not_here:
            mp3 = " (mp3 needs libsndfile >= 1.1)" if any(p.suffix.lower() == ".mp3" for p in self.not_here) else ""
            parts.append(f"{len(self.not_here)} file(s) in a format this libsndfile {sf.__libsndfile_version__} "
                         f"does not decode ({_names(self.not_here)}){mp3}")
        if self.not_audio:
            parts.append(f"{len(self.not_audio)} file(s) not audio by their suffix ({_names(self.not_audio)}; "
                         f"predicted: {' '.join(decodable_suffixes())})")
        if self.hidden:
            parts.append(f"{len(self.hidden)} hidden file(s) ({_names(self.hidden)})")
        if self.other:
            parts.append(f"{len(self.other)} entr(y/ies) that are not regular files, e.g. broken links "
                         f"({_names(self.other)})")
        if self.folders:
            parts.append(f"{len(self.folders)} sub-folder(s) not searched ({_names(self.folders, '/')}, holding "
                         f"{self.nested_audio} audio file(s)): only the folder's own files are predicted, as in "
                         "Kaggle's flat test_soundscapes/ - move them up, or predict them with --format windows")
        return (f"{self.folder}: skipped {self.n_skipped} of its {self.n_skipped + len(self.files)} entries - "
                + "; ".join(parts))


def scan_audio(audio_dir: str | os.PathLike) -> AudioListing:
    """Sort the entries of one folder (not its sub-folders) into the files predict reads and the skipped
    ones (:class:`AudioListing`); DataError when ``audio_dir`` is not a folder. Never opens a file."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise DataError(f"audio folder {folder} not found")
    decodable = decodable_suffixes()
    kinds: dict[str, list[Path]] = {k: [] for k in ("files", "needs_ffmpeg", "not_here", "not_audio", "hidden",
                                                     "other", "folders")}
    for entry in sorted(folder.iterdir()):
        suffix = entry.suffix.lower()
        if entry.name.startswith("."):
            kind = "hidden"
        elif entry.is_dir():
            kind = "folders"
        elif not entry.is_file():
            kind = "other"
        elif suffix in decodable:
            kind = "files"
        elif suffix in NEEDS_FFMPEG:
            kind = "needs_ffmpeg"
        elif suffix in SOUNDFILE_SUFFIXES:
            kind = "not_here"
        else:
            kind = "not_audio"
        kinds[kind].append(entry)
    nested = sum(1 for sub in kinds["folders"] for _, _, names in os.walk(sub)
                 for name in names if Path(name).suffix.lower() in decodable and not name.startswith("."))
    return AudioListing(folder, nested_audio=nested, **kinds)


def list_audio(audio_dir: str | os.PathLike, *,
               on_duplicate: Callable[[str], object] | None = None,
               on_skipped: Callable[[str], object] | None = None) -> list[Path]:
    """The audio files of a folder, sorted by name: the one list predict, the Kaggle runtime, the dry run
    and the validator's expected rows are made from (so the rows expected are the rows predicted).

    The rule (:func:`scan_audio`): the folder's own files whose suffix names a format this machine's
    soundfile decodes (:func:`decodable_suffixes`: ogg, flac, wav, mp3, aiff, ...); sub-folders are not
    searched, hidden files, m4a/aac (ffmpeg only) and other suffixes are skipped. ``on_skipped`` gets one
    line naming what was skipped and why (:meth:`AudioListing.note`) when anything was.

    Two files with the same stem (``x.ogg``, ``x.flac``) would write the same row ids (``x_5``, ...), so
    the submission could not be valid: they are refused at once with a :class:`DataError` naming both
    (the competition never has two), before anything is predicted. With ``on_duplicate`` the first file
    of each stem (in name order) is kept instead and ``on_duplicate`` gets one warning naming the others.
    """
    listing = scan_audio(audio_dir)
    audio_dir = listing.folder
    if on_skipped is not None and (note := listing.note()):
        on_skipped(note)
    files = listing.files
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    shared = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if not shared:
        return files
    stem, paths = next(iter(shared.items()))
    names = " and ".join([", ".join(p.name for p in paths[:-1]), paths[-1].name])
    more = f" ({len(shared) - 1} more stem(s) shared: {', '.join(list(shared)[1:4])})" if len(shared) > 1 else ""
    said = f"{audio_dir}: {names} have the same stem {stem!r}{more}, so they would write the same row ids " \
           f"({row_id(stem, WINDOW_SECONDS)}, ...)"
    if on_duplicate is None:
        raise DataError(f"{said}; the competition never has two files with one stem: remove or rename one "
                        "and re-run")
    dropped = [p for group in shared.values() for p in group[1:]]
    skipped = ", ".join(p.name for p in dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
    on_duplicate(f"{said}: kept the first file of each stem ({paths[0].name}) and skipped {skipped}")
    return [p for p in files if p not in dropped]


def name_warning(files: list[Path], examples: int = 3) -> str | None:
    """One line when some files are not named as competition soundscapes (``<id>_<Train|Test>_<n>_<site>_<date>_
    <time>``, :func:`featurestore.windows.parse_soundscape_name`), or None: their rows are written all the same,
    with row ids from their stems, but no site or hour can be read from the name (a stacked head's site and hour
    priors see them as unknown)."""
    odd = []
    for path in files:
        try:
            parse_soundscape_name(path.name)
        except DataError:
            odd.append(path)
    if not odd:
        return None
    shown = ", ".join(p.name for p in odd[:examples]) + (f" and {len(odd) - examples} more" if len(odd) > examples
                                                         else "")
    return (f"{len(odd)} of {len(files)} audio file(s) in {odd[0].parent} are not named as competition soundscapes "
            f"(<id>_<Train|Test>_<n>_<site>_<YYYYMMDD>_<HHMMSS>): {shown}; predicted all the same (row ids from "
            "their names), with no site or hour for a stacked head's priors")



def expected_ids_for_audio(audio_dir: str | os.PathLike) -> list[str]:
    """row_ids of every expected 5-s window of every audio file in a folder (never raises for a bad file).

    Each file is a competition soundscape: 60 s, or what its header says when it is readable and
    says more (:func:`expected_row_ids`, the rows predict writes for it).
    """
    return [rid for path in list_audio(audio_dir) for rid in expected_row_ids(path)]
