"""Readers for the BirdCLEF competition files: CSVs and soundscape names into Arrow tables.

All readers are strict: a missing column, a label absent from the taxonomy or a name that does
not parse raises :class:`DataError` naming the file and the row (1-based line number in the CSV).
A label time past :data:`~featurestore.windows.MAX_AUDIO_SECONDS` (24 h, longer than any recording)
is refused the same way, so a typo such as ``99999999:00:00`` can never expand into billions of
windows. Label windows past the end of a file whose duration is known are dropped by
:func:`drop_labels_past_end` with one warning (count and first line), not refused: the label file
is the organisers', the windows hold no audio to train on, and the rest of the file is good.
"""

from __future__ import annotations

import ast
import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from featurestore.errors import DataError
from featurestore.windows import (  # noqa: F401  (the soundscape-name parser lives with the ids)
    MAX_AUDIO_SECONDS,
    SOUNDSCAPE_NAME_RE,
    WINDOW_SECONDS,
    SoundscapeName,
    parse_soundscape_name,
    row_id,
    window_starts,
)

TAXONOMY_COLUMNS = ("primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name")
TRAIN_COLUMNS = ("primary_label", "secondary_labels", "filename")
LABEL_COLUMNS = ("filename", "start", "end", "primary_label")

def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a BOM is dropped); DataError naming the file and line if it is not UTF-8."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the file as UTF-8") from None


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, dict); a missing file or column, a row with more or fewer
    fields than the header, text that is not UTF-8 or a broken CSV line raises DataError naming the
    file and line."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing required column(s) {missing}; found {header}")
        rows = []
        for row in reader:
            if None in row:  # more fields than the header
                raise DataError(f"{path} line {reader.line_num}: {len(header) + len(row[None])} fields, "
                                f"the header has {len(header)}")
            if any(v is None for v in row.values()):  # fewer fields than the header
                n = sum(v is not None for v in row.values())
                raise DataError(f"{path} line {reader.line_num}: {n} field(s), the header has {len(header)}")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num + 1}: not a valid CSV line ({exc})") from None
    return rows


def require_unique(value: str, column: str, seen: dict[str, int], line: int, where: str) -> str:
    """``value`` if it is non-empty and not seen before in ``column`` (then remembered), else DataError."""
    if not value:
        raise DataError(f"{where}: empty {column}")
    if value in seen:
        raise DataError(f"{where}: {column} {value!r} already on line {seen[value]}")
    seen[value] = line
    return value


# ---------------------------------------------------------------------------- taxonomy
def read_taxonomy(path: Path) -> pa.Table:
    rows = read_csv_rows(path, TAXONOMY_COLUMNS)
    seen: dict[str, int] = {}
    for line, row in rows:
        require_unique(row["primary_label"].strip(), "primary_label", seen, line, f"{path} line {line}")
    return pa.table(
        {
            "primary_label": [r["primary_label"].strip() for _, r in rows],
            "inat_taxon_id": [r["inat_taxon_id"].strip() or None for _, r in rows],
            "scientific_name": [r["scientific_name"].strip() for _, r in rows],
            "common_name": [r["common_name"].strip() for _, r in rows],
            "class_name": [r["class_name"].strip() for _, r in rows],
            "class_index": pa.array(range(len(rows)), pa.int32()),
            "source_file": [path.name] * len(rows),
        }
    )


# ---------------------------------------------------------------------------- train.csv
def parse_label_list(text: str, where: str) -> list[str]:
    """Parse ``"['a', 'b']"`` (train.csv secondary_labels) into a list of strings."""
    text = (text or "").strip()
    if not text or text == "[]":
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot parse label list {text!r}") from exc
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | int) for v in value):
        raise DataError(f"{where}: label list {text!r} is not a list of labels")
    return [str(v).strip() for v in value if str(v).strip()]


def _float_or_none(text: str | None, where: str) -> float | None:
    """A number, or None for an empty cell or ``nan`` (how pandas writes a missing value); inf is a DataError."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise DataError(f"{where}: {text!r} is not a number") from exc
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise DataError(f"{where}: {text!r} is not a finite number")
    return value


def read_train_csv(path: Path, known_labels: set[str]) -> pa.Table:
    """train.csv → ``recordings``; secondary labels parsed; unknown labels are a DataError."""
    rows = read_csv_rows(path, TRAIN_COLUMNS)
    out: dict[str, list] = {k: [] for k in (
        "recording_id", "primary_label", "secondary_labels", "filename", "collection", "author", "rating",
        "latitude", "longitude", "type", "license", "url", "scientific_name", "common_name", "class_name",
        "source_row")}
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{path} line {line}"
        label = row["primary_label"].strip()
        if label not in known_labels:
            raise DataError(f"{where}: primary_label {label!r} is not in the taxonomy")
        secondary = parse_label_list(row["secondary_labels"], where)
        unknown = [s for s in secondary if s not in known_labels]
        if unknown:
            raise DataError(f"{where}: secondary label(s) {unknown} not in the taxonomy")
        filename = require_unique(row["filename"].strip(), "filename", seen, line, where)
        out["recording_id"].append(Path(filename).with_suffix("").as_posix())
        out["primary_label"].append(label)
        out["secondary_labels"].append(secondary)
        out["filename"].append(filename)
        out["source_row"].append(line)
        for col in ("collection", "author", "type", "license", "url", "scientific_name", "common_name", "class_name"):
            out[col].append((row.get(col) or "").strip() or None)
        for col in ("rating", "latitude", "longitude"):
            out[col].append(_float_or_none(row.get(col), f"{where} column {col}"))
    schema = {"secondary_labels": pa.list_(pa.string()), "source_row": pa.int32(),
              "rating": pa.float64(), "latitude": pa.float64(), "longitude": pa.float64()}
    return pa.table({k: pa.array(v, schema.get(k, pa.string())) for k, v in out.items()})


# ---------------------------------------------------------------------------- soundscapes
def parse_clock(text: str, where: str) -> float:
    """``00:00:05`` (or plain seconds) → seconds; a non-finite or negative time is a DataError."""
    text = text.strip()
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError as exc:
        raise DataError(f"{where}: cannot parse time {text!r}") from exc
    if not all(math.isfinite(p) for p in parts):
        raise DataError(f"{where}: time {text!r} is not a finite number of seconds")
    if any(math.copysign(1.0, p) < 0 for p in parts):   # "-00:00:05" would otherwise read as 5 s
        raise DataError(f"{where}: time {text!r} is negative")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def format_clock(seconds: float) -> str:
    """Whole seconds → ``HH:MM:SS``, as the label file writes times."""
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def snap_to_windows(start: float, end: float, window_s: int = WINDOW_SECONDS) -> list[float]:
    """Start seconds of the grid windows a label segment ``start``–``end`` belongs to.

    A window counts when the segment covers more than half of it; when none does (a segment
    shorter than half a window, or one straddling two windows evenly), the window holding the
    segment's midpoint (the later one on an exact boundary). An on-grid segment gives itself.
    """
    first = math.floor(start / window_s)
    last = math.ceil(end / window_s)
    chosen = [float(k * window_s) for k in range(first, last)
              if min(end, (k + 1) * window_s) - max(start, k * window_s) > window_s / 2 + 1e-9]
    return chosen or [float(math.floor((start + end) / 2 / window_s) * window_s)]


def _describe_windows(filename: str, windows: list[float]) -> str:
    """``00:00:15-00:00:20 (row_id x_20), ...``; a long list shows its count, first two and last (one short line)."""
    def span(w: float) -> str:
        return f"{format_clock(w)}-{format_clock(w + WINDOW_SECONDS)} (row_id {row_id(filename, w + WINDOW_SECONDS)})"
    if len(windows) <= 3:
        return ", ".join(map(span, windows))
    return f"{len(windows)} windows {span(windows[0])}, {span(windows[1])}, ... {span(windows[-1])}"


@dataclass(frozen=True)
class RowWarning:
    """A row that was read but changed or is suspicious; ``file`` and ``row`` (1-based line) locate it."""

    file: str
    row: int
    kind: str
    message: str


@dataclass
class LabelReport:
    raw_rows: int
    duplicate_rows: int
    conflicts: list[str]
    warnings: list[RowWarning] = field(default_factory=list)   # off-grid segments snapped to the 5-s grid


def read_soundscape_labels(path: Path, known_labels: set[str]) -> tuple[pa.Table, LabelReport]:
    """train_soundscapes_labels.csv → one row per (filename, start_s, end_s) with its label list.

    The real file lists every window twice; identical repeats are dropped. Repeats with a
    different label set are reported in ``LabelReport.conflicts`` and kept as the union with
    ``conflict = true`` so nothing is silently merged. A time past 24 h is a DataError naming the
    line (before the segment is expanded); windows past a file's end are left to
    :func:`drop_labels_past_end`, which needs the audio's durations.
    """
    rows = read_csv_rows(path, LABEL_COLUMNS)
    segments: dict[tuple[str, float, float], dict] = {}
    conflicts: list[str] = []
    warnings: list[RowWarning] = []
    duplicates = 0
    for line, row in rows:
        where = f"{path} line {line}"
        filename = row["filename"].strip()
        try:
            name = parse_soundscape_name(filename)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        start = parse_clock(row["start"], where)
        end = parse_clock(row["end"], where)
        if end <= start:
            raise DataError(f"{where}: end {row['end']!r} is not after start {row['start']!r}")
        if end > MAX_AUDIO_SECONDS:  # checked before the segment is expanded into its windows
            raise DataError(f"{where}: end {row['end'].strip()!r} is past 24 h, longer than any recording; "
                            "correct the time in that row and re-run")
        labels = [t.strip() for t in row["primary_label"].split(";") if t.strip()]
        unknown = [t for t in labels if t not in known_labels]
        if unknown:
            raise DataError(f"{where}: label(s) {unknown} not in the taxonomy")
        windows = snap_to_windows(start, end)
        if windows != [start] or end != start + WINDOW_SECONDS:
            snapped = _describe_windows(filename, windows)
            warnings.append(RowWarning(str(path), line, "label_off_grid",
                                       f"{where}: segment {row['start'].strip()}-{row['end'].strip()} of {filename} "
                                       f"is not a {WINDOW_SECONDS}-s window of the grid; snapped to {snapped}"))
        for w in windows:
            key = (filename, w, w + WINDOW_SECONDS)
            if key in segments:
                duplicates += 1
                seg = segments[key]
                if set(labels) != set(seg["labels"]):
                    conflicts.append(f"{filename} {key[1]:g}-{key[2]:g}s: line {seg['source_row']} "
                                     f"{sorted(seg['labels'])} vs line {line} {sorted(labels)}")
                    seg["labels"] = sorted(set(seg["labels"]) | set(labels))
                    seg["conflict"] = True
                continue
            segments[key] = {"filename": filename, "name": name, "start_s": key[1], "end_s": key[2],
                             "labels": sorted(set(labels)), "conflict": False, "source_row": line}
    ordered = sorted(segments.values(), key=lambda s: (s["filename"], s["start_s"]))
    table = pa.table(
        {
            "filename": [s["filename"] for s in ordered],
            "soundscape_id": [s["name"].soundscape_id for s in ordered],
            "site": [s["name"].site for s in ordered],
            "hour": pa.array([s["name"].hour for s in ordered], pa.int8()),
            "start_s": pa.array([s["start_s"] for s in ordered], pa.float64()),
            "end_s": pa.array([s["end_s"] for s in ordered], pa.float64()),
            "row_id": [row_id(s["filename"], s["end_s"]) for s in ordered],
            "labels": pa.array([s["labels"] for s in ordered], pa.list_(pa.string())),
            "conflict": [s["conflict"] for s in ordered],
            "source_row": pa.array([s["source_row"] for s in ordered], pa.int32()),
        }
    )
    return table, LabelReport(len(rows), duplicates, conflicts, warnings)


def drop_labels_past_end(labels: pa.Table, durations: Mapping[str, float],
                         path: Path | str) -> tuple[pa.Table, RowWarning | None]:
    """``labels`` (from :func:`read_soundscape_labels`) without the windows past the end of their file.

    ``durations`` maps a soundscape filename to its decoded length in seconds; a file has the windows
    :func:`~featurestore.windows.window_starts` gives it (12 for 59.98-60.02 s), and a label window
    that is not one of them is dropped. Files not in ``durations`` (audio missing or undecodable,
    reported elsewhere) keep their rows. Returns the kept rows and one warning naming ``path``, the
    count and the first dropped window with its line, or None when nothing was dropped.
    """
    if labels.num_rows == 0:
        return labels, None
    grid = {name: len(window_starts(d, soundscape=True)) * WINDOW_SECONDS for name, d in durations.items()}
    rows = labels.select(["filename", "start_s", "end_s", "source_row"]).to_pylist()
    keep = [r["filename"] not in grid or r["start_s"] < grid[r["filename"]] - 1e-9 for r in rows]
    dropped = [r for r, k in zip(rows, keep, strict=True) if not k]
    if not dropped:
        return labels, None
    first = min(dropped, key=lambda r: (r["source_row"], r["filename"], r["start_s"]))
    name = first["filename"]
    message = (f"{path}: {len(dropped)} label window(s) of {len({r['filename'] for r in dropped})} file(s) lie past "
               f"the end of the audio and were dropped; first: line {first['source_row']}, {name} "
               f"{format_clock(first['start_s'])}-{format_clock(first['end_s'])} but the file is "
               f"{durations[name]:.2f} s long (its last window ends at {format_clock(grid[name])})")
    return (labels.filter(pa.array(keep, pa.bool_())),
            RowWarning(str(path), first["source_row"], "label_past_end", message))


def read_submission_columns(path: Path) -> list[str]:
    """Header of sample_submission.csv (row_id followed by the class columns)."""
    try:
        header = next(csv.reader(io.StringIO(read_text(path), newline="")), None)
    except csv.Error as exc:
        raise DataError(f"{path} line 1: not a valid CSV line ({exc})") from None
    if not header or header[0] != "row_id":
        raise DataError(f"{path}: first column must be 'row_id', found {header[:1] if header else 'nothing'}")
    return header
