"""User labels: every click of a labelling session, kept as a log in the part table ``user_labels``.

A click says that class ``primary_label`` is ``positive``, ``negative`` or ``uncertain`` in one 5-s window
(or ``cleared``: no label), by one ``annotator``, with the ``session``, the search ``query`` and the
``probe_round`` that surfaced the window. Guarantees:

* **Durable per click.** :func:`append_labels` writes one small Parquet part (tmp file, fsync, rename, fsync of
  the folder) before it returns: a crash, a killed server or a closed tab loses no returned click. Parts are
  named ``labels-<nanoseconds>-...`` so their names sort in write order.
* **A log, never rewritten.** The table's key is ``event_id`` (unique per click), so every click stays - also
  through ``python -m pipelines.compact`` (which merges the many small parts into few and drops only
  superseded rows of a key; no click supersedes another). The log is the undo stack and the audit trail.
* **Latest wins.** The current label of ``(window_id, primary_label, annotator)`` is its row with the
  latest ``labelled_at`` (ties: the larger ``event_id``, which starts with the write time in ns). A new click
  of a key gets a ``labelled_at`` strictly after the key's previous one, even if the clock stepped back.
  :func:`current_labels` (and the catalog view ``user_labels_current``) give it; ``cleared`` means none.
* **Undo** (:func:`undo`) appends a row (``action = 'undo'``, ``undoes`` = the event it reverts) whose label
  is the state before that click: the label of the annotator's earlier click on the key still in effect, or
  ``cleared``. Undo after undo goes further back; undoing a click that a later click of the same key
  superseded is refused (undo the later one first).
* **Validated.** An unknown window id (not in ``windows``), class (not in ``taxonomy``) or label value is
  refused naming them, before anything is written.
* **What training uses** (:func:`training_labels`): per (window, class) the current labels of all
  annotators; ``positive`` / ``negative`` decide, ``uncertain`` alone is not used, positive against negative
  (two annotators disagreeing) is a conflict, not used; both counted. :mod:`models.frame` states how these
  enter the label matrix. Exports: :func:`export_labels` (plain CSV, the competition's
  ``train_soundscapes_labels.csv`` columns, a Raven Pro selection table).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import DiskFullError, StoreError, UserInputError
from featurestore.files import fsync_dir
from featurestore.windows import FOCAL, WINDOW_SECONDS, file_of, start_of

if TYPE_CHECKING:   # models.frame imports this module on the inference path: no pyarrow, no duckdb there
    import pyarrow as pa

    from featurestore.store import FeatureStore

TABLE = "user_labels"
CURRENT_VIEW = "user_labels_current"
USER = "user_labels"            # the frame source of a window labelled by users only (models.frame)
LABELS = ("positive", "negative", "uncertain", "cleared")
DECISIVE = ("positive", "negative")
ACTIONS = ("set", "undo")
KEY = ("window_id", "primary_label", "annotator")
EXPORT_FORMATS = ("csv", "soundscape-labels", "raven")



def schema() -> pa.Schema:
    """The columns of a ``user_labels`` part."""
    import pyarrow as pa

    return pa.schema([
        ("event_id", pa.string()), ("window_id", pa.string()), ("primary_label", pa.string()),
        ("label", pa.string()), ("action", pa.string()), ("undoes", pa.string()), ("annotator", pa.string()),
        ("session", pa.string()), ("query", pa.string()), ("probe_round", pa.int32()),
        ("labelled_at", pa.timestamp("us")),
    ])

CURRENT_SQL = (f"SELECT * FROM {TABLE} QUALIFY row_number() OVER (PARTITION BY {', '.join(KEY)} "
               "ORDER BY labelled_at DESC, event_id DESC) = 1")


@dataclass(frozen=True)
class LabelClick:
    """One label a user gave: class ``primary_label`` is ``label`` in window ``window_id``."""

    window_id: str
    primary_label: str
    label: str
    annotator: str
    session: str | None = None
    query: str | None = None
    probe_round: int | None = None


# ---------------------------------------------------------------------------- writing
def _registered(store: FeatureStore) -> bool:
    from featurestore.store import read_table_file

    spec = read_table_file(store.root, TABLE)
    return bool(spec) and spec.get("key_columns") == ["event_id"]


def ensure_table(store: FeatureStore) -> None:
    """Register the part table (key ``event_id``, order ``labelled_at``) and the view of current labels.

    Needs a read-write store the first time; afterwards a read-only store may append (the parts are written
    without the catalog, as embed workers do)."""
    if _registered(store) and (store.read_only or store.has_table(CURRENT_VIEW)):
        return
    if store.read_only:
        raise StoreError(f"store {store.root} has no {TABLE} table yet and is open read-only; open it read-write "
                         "for the first label")
    store.register_part_table(TABLE, ["event_id"], "labelled_at")


def _create_current_view(store: FeatureStore) -> None:
    if not store.read_only and store.has_table(TABLE) and not store.has_table(CURRENT_VIEW):
        with store.writing("catalog.duckdb"):
            store.con.execute(f"CREATE OR REPLACE VIEW {CURRENT_VIEW} AS {CURRENT_SQL}")


def _check_clicks(store: FeatureStore, clicks: Sequence[LabelClick]) -> None:
    bad_values = sorted({c.label for c in clicks if c.label not in LABELS})
    if bad_values:
        raise UserInputError(f"unknown label value(s) {bad_values}; use one of {', '.join(LABELS)}")
    if any(not (c.annotator or "").strip() for c in clicks):
        raise UserInputError("every label needs an annotator name")
    ids = sorted({c.window_id for c in clicks})
    classes = sorted({c.primary_label for c in clicks})
    known_ids = set()
    if store.has_table("windows"):
        known_ids = {r[0] for r in store.rows("SELECT window_id FROM windows WHERE list_contains(?, window_id)",
                                              [ids])}
    unknown = [w for w in ids if w not in known_ids]
    if unknown:
        raise UserInputError(f"{len(unknown)} unknown window id(s) {unknown[:5]}: not in the windows table of store "
                             f"{store.root} (window ids look like train_soundscapes/<file>.ogg@<start second>)")
    known_classes = set()
    if store.has_table("taxonomy"):
        known_classes = {r[0] for r in store.rows("SELECT primary_label FROM taxonomy")}
    unknown = [c for c in classes if c not in known_classes]
    if unknown:
        raise UserInputError(f"unknown class(es) {unknown[:5]}: not in the taxonomy of store {store.root}")


def _log(store: FeatureStore, where: str = "", params: list | None = None) -> list[dict]:
    """Rows of the click log (every click, oldest first), optionally filtered by an SQL condition."""
    if not store.part_files(TABLE) or not store.has_table(TABLE):
        return []
    table = store.sql(f"SELECT * FROM {TABLE} {f'WHERE {where}' if where else ''} "
                      "ORDER BY labelled_at, event_id", params)
    return table.to_pylist()


def _write(store: FeatureStore, rows: list[dict]) -> Path:
    import pyarrow as pa

    from featurestore.store import DiskFullGuard, is_disk_full

    stamp = time.time_ns()
    for i, row in enumerate(rows):
        row["event_id"] = f"{stamp:020d}-{i:04d}-{uuid.uuid4().hex[:8]}"
    table = pa.Table.from_pylist(rows, schema=schema())
    path = store.append_part(TABLE, table, prefix=f"labels-{stamp:020d}")
    try:
        with DiskFullGuard(path, path.parent):
            fsync_dir(path.parent)
    except DiskFullError:
        raise
    except OSError as exc:   # a folder that cannot be fsynced (some network filesystems): the rename stands
        if is_disk_full(exc):
            raise
    if not store.has_table(TABLE):   # the table's first part: its view (a TEMP one when read-only) from now on;
        store.refresh_part_views()   # later parts are in the view's glob at once
    _create_current_view(store)
    return path


def _stamps(store: FeatureStore, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], datetime]:
    """The latest ``labelled_at`` of each key already in the log."""
    keys = list(dict.fromkeys(keys))
    if not keys or not store.part_files(TABLE) or not store.has_table(TABLE):
        return {}
    rows = store.rows(f"SELECT {', '.join(KEY)}, max(labelled_at) FROM {TABLE} WHERE list_contains(?, window_id) "
                      f"GROUP BY ALL", [sorted({k[0] for k in keys})])
    return {(w, c, a): t for w, c, a, t in rows}


def _after(latest: datetime | None, now: datetime) -> datetime:
    return now if latest is None or now > latest else latest + timedelta(microseconds=1)


def append_labels(store: FeatureStore, clicks: Sequence[LabelClick]) -> list[str]:
    """Validate and write ``clicks`` as one part (durable when this returns); their event ids, in order.

    Refused (nothing written): an unknown window id, class, label value, or an empty annotator."""
    clicks = list(clicks)
    if not clicks:
        return []
    from featurestore.store import utc_now

    _check_clicks(store, clicks)
    ensure_table(store)
    latest = _stamps(store, ((c.window_id, c.primary_label, c.annotator) for c in clicks))
    now = utc_now()
    rows = []
    for c in clicks:
        key = (c.window_id, c.primary_label, c.annotator)
        at = _after(latest.get(key), now)
        latest[key] = at
        rows.append({"window_id": c.window_id, "primary_label": c.primary_label, "label": c.label, "action": "set",
                     "undoes": None, "annotator": c.annotator, "session": c.session, "query": c.query,
                     "probe_round": c.probe_round, "labelled_at": at})
    _write(store, rows)
    return [r["event_id"] for r in rows]


@dataclass(frozen=True)
class UndoResult:
    """What :func:`undo` did: the click it reverted and the key's label now."""

    undone_event: str
    window_id: str
    primary_label: str
    annotator: str
    was: str
    now: str
    event_id: str


def _stacks(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Per key, the ``set`` clicks still in effect, oldest first (an undo removes the click it names)."""
    stacks: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        stack = stacks.setdefault((row["window_id"], row["primary_label"], row["annotator"]), [])
        if row["action"] == "undo":
            stack[:] = [r for r in stack if r["event_id"] != row["undoes"]]
        else:
            stack.append(row)
    return stacks


def undo(store: FeatureStore, annotator: str, *, session: str | None = None, window_id: str | None = None,
         primary_label: str | None = None) -> UndoResult:
    """Revert ``annotator``'s latest click still in effect (in ``session`` / on ``window_id`` and
    ``primary_label`` when given) by appending an undo row: the key's label becomes what it was before that
    click. UserInputError when there is nothing to undo."""
    from featurestore.store import utc_now

    rows = _log(store, "annotator = ?", [annotator])
    tops = [stack[-1] for stack in _stacks(rows).values() if stack]
    candidates = [r for r in tops if (session is None or r["session"] == session)
                  and (window_id is None or r["window_id"] == window_id)
                  and (primary_label is None or r["primary_label"] == primary_label)]
    if not candidates:
        scope = ", ".join(f"{k} {v}" for k, v in (("session", session), ("window", window_id),
                                                  ("class", primary_label)) if v is not None)
        raise UserInputError(f"nothing to undo for annotator {annotator!r}{f' ({scope})' if scope else ''}")
    target = max(candidates, key=lambda r: (r["labelled_at"], r["event_id"]))
    key = (target["window_id"], target["primary_label"], annotator)
    stack = _stacks(rows)[key]
    before = stack[-2]["label"] if len(stack) > 1 else "cleared"
    latest = max(r["labelled_at"] for r in rows if (r["window_id"], r["primary_label"], r["annotator"]) == key)
    row = {"window_id": key[0], "primary_label": key[1], "label": before, "action": "undo",
           "undoes": target["event_id"], "annotator": annotator, "session": target["session"],
           "query": target["query"], "probe_round": target["probe_round"], "labelled_at": _after(latest, utc_now())}
    _write(store, [row])
    return UndoResult(target["event_id"], key[0], key[1], annotator, target["label"], before, row["event_id"])


# ---------------------------------------------------------------------------- reading
def current_labels(store: FeatureStore, *, include_cleared: bool = False) -> pa.Table:
    """The current label of every ``(window_id, primary_label, annotator)`` (latest click wins), sorted by
    those; ``cleared`` ones only with ``include_cleared``. An empty table (same columns) without labels."""
    if not store.part_files(TABLE) or not store.has_table(TABLE):
        return schema().empty_table()
    where = "" if include_cleared else "WHERE label <> 'cleared'"
    return store.sql(f"SELECT * FROM ({CURRENT_SQL}) {where} ORDER BY {', '.join(KEY)}")


@dataclass
class TrainingLabels:
    """The user labels training uses: per window the classes said present and absent (:func:`training_labels`)."""

    windows: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)  # id -> (pos, neg)
    n_uncertain: int = 0        # (window, class) pairs with only 'uncertain': not used
    n_conflicts: int = 0        # (window, class) pairs one annotator says positive, another negative: not used

    @property
    def n_positive(self) -> int:
        return sum(len(p) for p, _ in self.windows.values())

    @property
    def n_negative(self) -> int:
        return sum(len(n) for _, n in self.windows.values())

    @property
    def digest(self) -> str:
        """sha256 (16 hex) of the (window, class, value) triples used: the same labels, the same digest,
        whoever clicked them and however often (an undo back to a state gives that state's digest)."""
        triples = sorted((w, c, v) for w, (pos, neg) in self.windows.items()
                         for v, classes in (("1", pos), ("0", neg)) for c in classes)
        return hashlib.sha256(json.dumps(triples).encode()).hexdigest()[:16]

    def __bool__(self) -> bool:
        return bool(self.windows)


def resolve(values: set[str]) -> str:
    """What the current labels of all annotators of one (window, class) say together: ``positive`` or
    ``negative`` when the decisive ones agree, ``uncertain`` when none is decisive, ``conflict`` when they disagree
    (training and the labelling loop's probe use only the first two)."""
    decisive = values & set(DECISIVE)
    if not decisive:
        return "uncertain"
    return "conflict" if len(decisive) > 1 else next(iter(decisive))


def training_labels(store: FeatureStore) -> TrainingLabels:
    """The current labels of every annotator resolved per (window, class): positive / negative decide;
    only-uncertain and positive-vs-negative conflicts are left out and counted."""
    table = current_labels(store)
    votes: dict[tuple[str, str], set[str]] = {}
    for w, c, v in zip(*(table.column(k).to_pylist() for k in ("window_id", "primary_label", "label")), strict=True):
        votes.setdefault((w, c), set()).add(v)
    out = TrainingLabels()
    pos: dict[str, set[str]] = {}
    neg: dict[str, set[str]] = {}
    for (w, c), values in sorted(votes.items()):
        said = resolve(values)
        if said == "uncertain":
            out.n_uncertain += 1
        elif said == "conflict":
            out.n_conflicts += 1
        else:
            (pos if said == "positive" else neg).setdefault(w, set()).add(c)
    for w in sorted(set(pos) | set(neg)):
        out.windows[w] = (frozenset(pos.get(w, ())), frozenset(neg.get(w, ())))
    return out


# ---------------------------------------------------------------------------- export
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Begin File", "File Offset (s)", "Species", "Label", "Annotator")
CSV_COLUMNS = ("window_id", "source", "filename", "start_s", "end_s", "primary_label", "label", "annotator",
               "session", "query", "probe_round", "labelled_at")


def _split(wid: str) -> tuple[str, str, int]:
    key = file_of(wid)
    source, _, filename = key.partition("/")
    return source, filename, start_of(wid)


def export_rows(store: FeatureStore, fmt: str) -> tuple[list[str], list[list]]:
    """``(header, rows)`` of an export (see :func:`export_labels`)."""
    from featurestore.competition import format_clock

    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "soundscape-labels":
        rows = []
        for wid, (pos, _neg) in sorted(training_labels(store).windows.items()):
            source, filename, start = _split(wid)
            if pos and source != FOCAL:   # soundscape windows only: the file's own layout
                rows.append([filename, format_clock(start), format_clock(start + WINDOW_SECONDS), ";".join(sorted(pos))])
        return ["filename", "start", "end", "primary_label"], sorted(rows)
    table = current_labels(store).to_pylist()
    if fmt == "csv":
        out = []
        for r in table:
            source, filename, start = _split(r["window_id"])
            out.append([r["window_id"], source, filename, start, start + WINDOW_SECONDS, r["primary_label"], r["label"],
                        r["annotator"], r["session"], r["query"], r["probe_round"],
                        r["labelled_at"].isoformat(timespec="microseconds")])
        return list(CSV_COLUMNS), out
    rates = {}
    if store.has_table("audio_inventory"):
        rates = {f"{s}/{f}": r for s, f, r in store.rows("SELECT source, filename, sample_rate FROM audio_inventory")}
    out = []
    for i, r in enumerate(sorted(table, key=lambda r: (file_of(r["window_id"]), start_of(r["window_id"]),
                                                       r["primary_label"], r["annotator"])), start=1):
        _source, filename, start = _split(r["window_id"])
        rate = rates.get(file_of(r["window_id"]))
        out.append([i, "Spectrogram 1", 1, f"{start:.3f}", f"{start + WINDOW_SECONDS:.3f}", "0.0",
                    f"{(rate or 32000) / 2:.1f}", filename, f"{start:.3f}", r["primary_label"], r["label"],
                    r["annotator"]])
    return list(RAVEN_COLUMNS), out


def render_export(header: list[str], rows: list[list], fmt: str) -> str:
    sink = io.StringIO()
    writer = csv.writer(sink, delimiter="\t" if fmt == "raven" else ",", lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return sink.getvalue()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    fmt: str
    n_rows: int

    def render(self) -> str:
        return f"wrote {self.n_rows} {self.fmt} row(s) to {self.path}"


def export_labels(store_dir: str | os.PathLike, fmt: str, out: str | os.PathLike) -> ExportResult:
    """Write the current user labels of the store to ``out`` (replaced atomically; its folder must exist).

    * ``csv``: one row per current (window, class, annotator) label, ``cleared`` left out (:data:`CSV_COLUMNS`);
    * ``soundscape-labels``: the competition's ``train_soundscapes_labels.csv`` columns ``filename, start, end,
      primary_label`` (times ``HH:MM:SS``, classes ';'-joined): one row per soundscape window with a positive
      used for training (:func:`training_labels`: conflicts and uncertain left out), readable by
      :func:`featurestore.competition.read_soundscape_labels`;
    * ``raven``: one Raven Pro selection table (tab-separated) for all files: a ``Begin File`` column names each
      selection's audio file and ``Begin Time (s)`` = ``File Offset (s)`` is its start within that file (open
      the file on its own in Raven); Low/High Freq span 0 to Nyquist; ``Species``, ``Label`` (positive /
      negative / uncertain) and ``Annotator`` per current label.
    """
    from featurestore.store import DiskFullGuard, FeatureStore

    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if not out.parent.is_dir():
        raise UserInputError(f"--out {out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise UserInputError(f"--out {out} is a folder; give a file name")
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        header, rows = export_rows(store, fmt)
    text = render_export(header, rows, fmt)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with DiskFullGuard(out, out.parent):
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, fmt, len(rows))


LABEL_WORDS = {"positive": "positive", "pos": "positive", "p": "positive", "y": "positive", "yes": "positive",
               "1": "positive", "negative": "negative", "neg": "negative", "n": "negative", "no": "negative",
               "0": "negative", "uncertain": "uncertain", "u": "uncertain", "?": "uncertain"}


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_labels` wrote: labels by value, rows left blank, the CSV."""

    path: Path
    counts: dict[str, int]
    blank: int

    def render(self) -> str:
        given = ", ".join(f"{n} {label}" for label, n in self.counts.items() if n) or "no label"
        return (f"imported {sum(self.counts.values())} label(s) from {self.path} ({given}); "
                f"{self.blank} row(s) left blank were skipped")


def import_labels(store_dir: str | os.PathLike, path: str | os.PathLike, primary_label: str, annotator: str, *,
                  session: str | None = None) -> ImportResult:
    """Label a search result in a spreadsheet, then store it: ``path`` is a CSV with a ``window_id`` column
    (``pipelines.search --out hits.csv``) and a ``label`` column the user filled in per row with positive /
    negative / uncertain (or p/n/u, y/n, 1/0, ?); a blank label is skipped. Every label is for class
    ``primary_label``; its ``query`` is the row's ``best_query`` when the CSV has one. All rows are checked
    first (an unknown word names its line; unknown window ids and classes are refused by
    :func:`append_labels`) and written as one durable part: all or nothing."""
    from featurestore.store import FeatureStore

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--import {path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "window_id" not in columns or "label" not in columns:
            raise UserInputError(f"{path}: needs the columns window_id and label (found {', '.join(columns) or 'none'}); "
                                 "add a label column to a pipelines.search CSV and fill it in")
        clicks, blank = [], 0
        for line, row in enumerate(reader, start=2):
            word = (row.get("label") or "").strip().lower()
            if not word:
                blank += 1
                continue
            if word not in LABEL_WORDS:
                raise UserInputError(f"{path}:{line}: label {row['label']!r} is not one of positive, negative, "
                                     "uncertain (or p/n/u, y/n, 1/0, ?)")
            clicks.append(LabelClick((row.get("window_id") or "").strip(), primary_label, LABEL_WORDS[word], annotator,
                                     session=session or f"import:{path.name}", query=row.get("best_query") or None))
    with FeatureStore.open(store_dir, create=False) as store:
        append_labels(store, clicks)
    counts = {label: sum(c.label == label for c in clicks) for label in LABELS[:3]}
    return ImportResult(path, counts, blank)


def has_labels(store: FeatureStore) -> bool:
    """Whether the store has any user-label part (current labels may still all be cleared)."""
    return bool(store.part_files(TABLE))
