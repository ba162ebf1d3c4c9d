"""Frozen, versioned cross-validation folds, a leave-one-site-out shadow split and a replay subset.

Every window is folded with its whole *group* so that nothing near-identical straddles folds:

* train soundscapes: by default (``soundscape_group="site_split"``) by site, except that a site
  holding more than ``split_fraction`` x 1/k of the labelled windows is cut into
  ``date_block_days``-day blocks of recording days (a day runs from ``day_start_hour`` to the next,
  so a night recorded across midnight stays whole); or by site alone (``"site"``) or by site + date
  block for every site (``"site_date"``). On the real labels, ``site`` makes S22 (40 of 66 files)
  one fold of 477 windows against 36-94; ``site_split`` gives 139-156 windows and >= 26 scorable
  classes per fold with only S22 split and no site-day straddling (``bench/fold_design.py``).
  Labelled soundscape segments are taken from ``soundscape_labels`` too, so their folds exist even
  when the soundscape audio (and hence the ``windows`` rows) is absent.
* focal clips (train_audio): by recordist (``author``) + a coarse lat/lon cell (``cell_deg``
  degrees). train.csv has no recording date, so author + place is the best session proxy.
  A clip with no author falls back to its cell, one with neither to its own file.
* groups holding byte-identical decoded audio (same ``sha256_pcm``) are merged, so an exact copy
  under another label or author lands in the same fold.
* test soundscape windows get ``fold = -1`` (never part of cross-validation).

Within each family (focal / soundscape) groups are dealt to ``k`` folds by a greedy group-level
version of iterative stratification (Sechidis et al. 2011; see :func:`assign_group_folds`):
repeatedly take the class with the fewest unassigned groups and give each of its groups (largest
first) to a fold that lacks that class, preferring folds that gain other new classes and still
want most of that class and of windows. A class held by ``g`` groups thus reaches
``min(g, k)`` folds in the usual case; the job lists the classes that do not. ``iterstrat`` is not group-aware, hence this small hand-written loop;
iterstrat's ``MultilabelStratifiedShuffleSplit`` is used for the replay subset (unit = file).

Each table row carries its version id (hash of the input tables' content hashes, the audio PCM
hashes and the parameters). :func:`make_folds` refuses to replace an existing different version
unless ``new_version=True``; an unchanged version is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np
import pyarrow as pa

from featurestore.competition import parse_soundscape_name
from featurestore.errors import DataError, StoreError, UserInputError
from featurestore.store import FeatureStore, utc_now
from featurestore.windows import window_id

ALGORITHM = "greedy-group-multilabel-3"
FOLD_KINDS = ("folds", "shadow_folds")
REPLAY_TABLE = "replay_windows"
INPUT_TABLES = ("windows", "recordings", "soundscape_labels", "soundscapes")
SOUNDSCAPE_GROUPINGS = ("site", "site_date", "site_split")
SPLIT_PARAMS = ("split_fraction", "day_start_hour")   # only part of the version under site_split
TEST_FOLD = -1


@dataclass(frozen=True)
class FoldParams:
    """Everything that shapes the folds (part of the version id)."""

    k: int = 5
    seed: int = 0                  # breaks ties between equal groups and seeds the replay subset
    soundscape_group: str = "site_split"   # see bench/fold_design.py for the measurement behind it
    date_block_days: int = 7
    cell_deg: float = 1.0
    replay_fraction: float = 0.15
    merge_duplicates: bool = True
    split_fraction: float = 1.0    # site_split: cut sites holding > split_fraction x (labelled windows / k)
    day_start_hour: int = 12       # site_split: a recording day runs from this hour (as named) to the next

    def check(self) -> FoldParams:
        if self.k < 2:
            raise StoreError(f"k must be >= 2 folds, got {self.k}")
        if self.soundscape_group not in SOUNDSCAPE_GROUPINGS:
            raise StoreError(f"soundscape_group must be one of {SOUNDSCAPE_GROUPINGS}, got {self.soundscape_group!r}")
        if self.date_block_days < 1 or self.cell_deg <= 0:
            raise StoreError("date_block_days must be >= 1 and cell_deg > 0")
        if not 0 < self.replay_fraction < 1:
            raise StoreError(f"replay_fraction must be in (0, 1), got {self.replay_fraction}")
        if self.split_fraction <= 0 or not 0 <= self.day_start_hour <= 23:
            raise StoreError(f"split_fraction must be > 0 and day_start_hour in 0..23, got {self.split_fraction} "
                             f"and {self.day_start_hour}")
        return self

    def version_params(self) -> dict:
        """The parameters hashed into the fold version: the site_split ones only under site_split,
        so folds made with ``site`` / ``site_date`` keep the version ids they had before it existed."""
        p = asdict(self)
        if self.soundscape_group != "site_split":
            for name in SPLIT_PARAMS:
                p.pop(name)
        return p


@dataclass
class Unit:
    """One audio file (or labelled soundscape file) and its windows: the atom of fold assignment."""

    source: str
    filename: str
    family: str                         # focal | soundscape | test
    group_key: str
    labels: dict[str, int] = field(default_factory=dict)   # class -> positive count (segments or 1 per clip)
    windows: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # window_id -> (in_windows, has_labels)
    site: str | None = None

    @property
    def key(self) -> str:
        return f"{self.source}/{self.filename}"


# ---------------------------------------------------------------------------- group keys
def focal_group_key(author: str | None, lat: float | None, lon: float | None, cell_deg: float, filename: str) -> str:
    """``author:<name>|cell:<lat>,<lon>`` (cell = south-west corner of a ``cell_deg`` grid square)."""
    cell = None
    if lat is not None and lon is not None and math.isfinite(lat) and math.isfinite(lon):
        cell = f"{math.floor(lat / cell_deg) * cell_deg:.2f},{math.floor(lon / cell_deg) * cell_deg:.2f}"
    author = (author or "").strip() or None
    if author is None and cell is None:
        return f"file:{filename}"
    return f"author:{author or '?'}|cell:{cell or '?'}"


def soundscape_group_key(filename: str, site: str | None, mode: str, block_days: int) -> str:
    """``site:S22`` or ``site:S22|block:<n>`` (n = days since 1970 // block_days); unparsable → ``file:``."""
    try:
        name = parse_soundscape_name(filename)
    except DataError:
        return f"site:{site}" if site and mode in ("site", "site_split") else f"file:{filename}"
    site = site or name.site
    if mode in ("site", "site_split"):   # site_split: split_large_sites() refines large sites later
        return f"site:{site}"
    block = (name.date.toordinal() - 719163) // block_days  # 719163 = date(1970, 1, 1).toordinal()
    return f"site:{site}|block:{block}"


def soundscape_time(filename: str) -> datetime | None:
    """Recording start (as named: date + UTC clock) of a soundscape file; None if the name does not parse."""
    try:
        name = parse_soundscape_name(filename)
    except DataError:
        return None
    return datetime.combine(name.date, time.fromisoformat(name.time_utc))


def recording_day(filename: str, day_start_hour: int) -> date | None:
    """The day a soundscape belongs to when a day runs from ``day_start_hour`` to ``day_start_hour``
    (clock as named): with 12, a night recorded across midnight is one day. None if unparsable."""
    t = soundscape_time(filename)
    return None if t is None else (t - timedelta(hours=day_start_hour)).date()


def split_large_sites(units: list[Unit], params: FoldParams) -> dict[str, int]:
    """``site_split``: cut every over-large site into date blocks (in place); returns site -> blocks.

    Windows counted are the labelled soundscape windows (all soundscape windows when none is
    labelled). A site holding more than ``split_fraction x (windows / k)`` of them is cut into
    ``date_block_days``-day blocks of recording days (see :func:`recording_day`; the ``site_date``
    calendar, shifted by ``day_start_hour``), keyed ``site:S22|days:20211028-20211103`` (the block's
    first and last day). Every other site stays one ``site:<site>`` group. So no fold is one giant
    site, while small sites and every recording day stay in one fold (a calendar day only straddles
    if a block starts at ``day_start_hour`` between two of its files). Unparsable names keep their key.
    """
    members = [u for u in units if u.family == "soundscape" and u.group_key.startswith("site:")]
    any_labelled = any(has for u in members for _, has in u.windows.values())

    def weight(u: Unit) -> int:
        return sum(1 for _, has in u.windows.values() if has or not any_labelled)

    limit = params.split_fraction * sum(weight(u) for u in members) / params.k
    by_site: dict[str, list[tuple[date, Unit]]] = defaultdict(list)
    for u in members:
        day = recording_day(u.filename, params.day_start_hour)
        if day is not None:
            by_site[u.group_key].append((day, u))
    epoch, n = date(1970, 1, 1), params.date_block_days
    split: dict[str, int] = {}
    for key, files in sorted(by_site.items()):
        if sum(weight(u) for _, u in files) <= limit:
            continue
        blocks = set()
        for day, u in files:
            start = epoch + timedelta(days=(day - epoch).days // n * n)
            blocks.add(start)
            u.group_key = f"{key}|days:{start:%Y%m%d}-{start + timedelta(days=n - 1):%Y%m%d}"
        split[key.removeprefix("site:")] = len(blocks)
    return split


# ---------------------------------------------------------------------------- reading the store
def collect_units(store: FeatureStore, params: FoldParams) -> list[Unit]:
    """Every file with windows or labelled segments, with its group key, labels and window ids."""
    if not store.has_table("windows"):
        raise StoreError(f"store {store.root} has no windows table; run pipelines.ingest first")
    units: dict[str, Unit] = {}
    recordings = {}
    if store.has_table("recordings"):
        for r in store.sql("SELECT filename, primary_label, secondary_labels, author, latitude, longitude "
                           "FROM recordings").to_pylist():
            recordings[r["filename"]] = r
    sites = {}
    if store.has_table("soundscapes"):
        sites = {r["filename"]: r["site"] for r in store.sql("SELECT filename, site FROM soundscapes").to_pylist()}

    def unit_for(source: str, filename: str, site: str | None = None) -> Unit:
        key = f"{source}/{filename}"
        if key in units:
            return units[key]
        if source == "train_audio":
            rec = recordings.get(filename) or {}
            unit = Unit(source, filename, "focal", focal_group_key(
                rec.get("author"), rec.get("latitude"), rec.get("longitude"), params.cell_deg, filename))
            for label in [rec.get("primary_label"), *(rec.get("secondary_labels") or [])]:
                if label:
                    unit.labels[label] = 1
        else:
            site = site or sites.get(filename)
            if site is None:
                try:
                    site = parse_soundscape_name(filename).site
                except DataError:
                    site = None
            family = "soundscape" if source == "train_soundscapes" else "test"
            group = soundscape_group_key(filename, site, params.soundscape_group, params.date_block_days)
            unit = Unit(source, filename, family, group if family == "soundscape" else f"test:{group}", site=site)
        units[key] = unit
        return unit

    for w in store.sql("SELECT window_id, source, filename FROM windows ORDER BY window_id").to_pylist():
        labelled = w["source"] == "train_audio" and bool(unit_for(w["source"], w["filename"]).labels)
        unit_for(w["source"], w["filename"]).windows[w["window_id"]] = (True, labelled)
    if store.has_table("soundscape_labels"):
        for r in store.sql("SELECT filename, site, start_s, labels FROM soundscape_labels "
                           "ORDER BY filename, start_s").to_pylist():
            unit = unit_for("train_soundscapes", r["filename"], r["site"])
            wid = window_id("train_soundscapes", r["filename"], r["start_s"])
            unit.windows[wid] = (wid in unit.windows and unit.windows[wid][0], True)
            for label in r["labels"] or []:
                unit.labels[label] = unit.labels.get(label, 0) + 1
    out = [units[k] for k in sorted(units)]
    if params.soundscape_group == "site_split":
        split_large_sites(out, params)
    return out


def pcm_hashes(store: FeatureStore) -> dict[str, str]:
    """``<source>/<filename>`` → sha256 of the decoded 16-bit PCM (files that decoded)."""
    if not store.has_table("audio_inventory"):
        return {}
    rows = store.rows("SELECT path, sha256_pcm FROM audio_inventory WHERE sha256_pcm IS NOT NULL")
    return dict(rows)


def merge_duplicate_groups(units: list[Unit], hashes: dict[str, str]) -> int:
    """Give every unit of a family that shares decoded audio with another group the same group key.

    Union-find over (group, pcm hash); the merged key is the smallest member key. Returns how many
    groups were merged away.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_hash: dict[tuple[str, str], str] = {}
    for u in units:
        h = hashes.get(u.key)
        node = f"{u.family}\0{u.group_key}"
        find(node)
        if h is None:
            continue
        first = by_hash.setdefault((u.family, h), node)
        a, b = find(first), find(node)
        if a != b:
            parent[max(a, b)] = min(a, b)
    before = len({(u.family, u.group_key) for u in units})
    for u in units:
        u.group_key = find(f"{u.family}\0{u.group_key}").split("\0", 1)[1]
    return before - len({(u.family, u.group_key) for u in units})


# ---------------------------------------------------------------------------- the assignment
def stable_tiebreak(keys: list[str], seed: int) -> np.ndarray:
    """A seeded pseudo-random number per key that does not depend on the other keys."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest(), "big")
                     for k in keys], dtype=np.uint64)


def assign_group_folds(label_counts: np.ndarray, sizes: np.ndarray, k: int, tiebreak: np.ndarray,
                       present: np.ndarray | None = None) -> np.ndarray:
    """Fold (0..k-1) of each group: greedy group-level iterative stratification.

    ``label_counts`` is (groups x classes) positive counts, ``sizes`` the windows per group,
    ``tiebreak`` a per-group order for equal candidates (seeded, so a new seed reshuffles), and
    ``present`` (k x classes, optional) the classes folds already hold from another family.
    Classes are visited rarest first (fewest unassigned groups); each of the class's groups goes to
    the fold that (1) lacks that class, then (2) would gain the most new classes, each weighted
    1 / its group count, then (3) has the largest relative demand left for that class plus for
    windows (``want_class / desired_class + want_windows / desired_windows``), (4) has fewest groups.
    Sechidis et al. rank by the class demand alone; groups hold many classes and differ in size,
    and on 40 random group structures these criteria cut the classes reaching fewer folds than
    their group count allows ~7x and the fold-size spread ~2x at equal per-class balance.
    """
    label_counts = np.asarray(label_counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    n_groups, n_classes = label_counts.shape
    fold = np.full(n_groups, -1, dtype=np.int64)
    desired_label = np.maximum(label_counts.sum(axis=0) / k, 1e-12)
    desired_size = max(sizes.sum() / k, 1e-12)
    want_label = np.repeat(desired_label[None, :], k, axis=0)
    want_size = np.full(k, desired_size)
    n_in_fold = np.zeros(k, dtype=np.int64)
    has = label_counts > 0
    present = np.zeros((k, n_classes), dtype=bool) if present is None else np.array(present, dtype=bool)
    rarity = 1.0 / np.maximum(has.sum(axis=0), 1)
    open_count = has.sum(axis=0).astype(np.int64)   # unassigned groups holding each class
    totals = label_counts.sum(axis=0)
    folds = np.arange(k)

    def place(g: int, f: int) -> None:
        fold[g] = f
        want_label[f] -= label_counts[g]
        want_size[f] -= sizes[g]
        n_in_fold[f] += 1
        present[f] |= has[g]
        open_count[has[g]] -= 1

    while (open_count > 0).any():
        candidates = np.flatnonzero(open_count > 0)
        c = candidates[np.lexsort((candidates, totals[candidates], open_count[candidates]))[0]]
        members = np.flatnonzero(has[:, c] & (fold < 0))
        for g in members[np.lexsort((tiebreak[members], -sizes[members], -label_counts[members, c]))]:
            gain = (~present & has[g]) @ rarity
            demand = want_label[:, c] / desired_label[c] + want_size / desired_size
            place(int(g), int(np.lexsort((folds, n_in_fold, -demand, -gain, present[:, c]))[0]))
    rest = np.flatnonzero(fold < 0)
    for g in rest[np.lexsort((tiebreak[rest], -sizes[rest]))]:
        place(int(g), int(np.lexsort((folds, n_in_fold, -want_size))[0]))
    return fold


def assign_units(units: list[Unit], params: FoldParams) -> dict[str, int]:
    """Fold of every unit (by ``unit.key``): per family, groups stratified over ``k`` folds.

    Soundscapes go first (few, large groups); the focal clips then also favour folds that still
    lack their classes, so a class's focal and soundscape groups spread over different folds.
    """
    out: dict[str, int] = {}
    classes = sorted({c for u in units for c in u.labels})
    cindex = {c: i for i, c in enumerate(classes)}
    present = np.zeros((params.k, max(1, len(classes))), dtype=bool)
    for family in ("soundscape", "focal"):
        members = [u for u in units if u.family == family]
        if not members:
            continue
        groups = sorted({u.group_key for u in members})
        index = {g: i for i, g in enumerate(groups)}
        counts = np.zeros((len(groups), present.shape[1]))
        sizes = np.zeros(len(groups))
        for u in members:
            gi = index[u.group_key]
            sizes[gi] += len(u.windows)
            for c, n in u.labels.items():
                counts[gi, cindex[c]] += n
        used = counts.sum(axis=0) > 0   # classes of this family only (others would skew the demand)
        fold = assign_group_folds(counts[:, used], sizes, params.k, stable_tiebreak(groups, params.seed),
                                  present[:, used])
        for gi, f in enumerate(fold):
            present[f] |= counts[gi] > 0
        out.update({u.key: int(fold[index[u.group_key]]) for u in members})
    out.update({u.key: TEST_FOLD for u in units if u.family == "test"})
    return out


# ---------------------------------------------------------------------------- versions and tables
def input_fingerprint(store: FeatureStore, hashes: dict[str, str]) -> dict[str, str]:
    """Content hashes of the input tables (absent ones → ``None``) and of the PCM hashes."""
    out = {}
    for name in INPUT_TABLES:
        out[name] = store.version_info(name, store.current_version(name)).content_hash if store.has_table(name) else None
    out["audio_pcm"] = hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()
    return out


def version_id(kind: str, fingerprint: dict, params: dict) -> str:
    text = json.dumps({"kind": kind, "algorithm": ALGORITHM, "inputs": fingerprint, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


FOLD_SCHEMA = pa.schema([
    ("window_id", pa.string()), ("source", pa.string()), ("filename", pa.string()), ("family", pa.string()),
    ("group_key", pa.string()), ("fold", pa.int32()), ("has_labels", pa.bool_()), ("in_windows", pa.bool_()),
    ("fold_version", pa.string()), ("written_at", pa.timestamp("us")),
])


def fold_table(units: list[Unit], fold_of: dict[str, int], group_of: dict[str, str], version: str) -> pa.Table:
    """Rows for every window of the units in ``fold_of``, sorted by window_id."""
    rows = []
    now = utc_now()
    for u in units:
        if u.key not in fold_of:
            continue
        for wid, (in_windows, has_labels) in u.windows.items():
            rows.append({"window_id": wid, "source": u.source, "filename": u.filename, "family": u.family,
                         "group_key": group_of.get(u.key, u.group_key), "fold": fold_of[u.key],
                         "has_labels": has_labels, "in_windows": in_windows, "fold_version": version,
                         "written_at": now})
    rows.sort(key=lambda r: r["window_id"])
    return pa.Table.from_pylist(rows, schema=FOLD_SCHEMA)


def shadow_assignment(units: list[Unit]) -> tuple[dict[str, int], dict[str, str]]:
    """Leave-one-site-out over the labelled soundscape files: fold = index of the site in sorted order."""
    labelled = [u for u in units if u.family == "soundscape" and u.labels]
    sites = sorted({u.site or "?" for u in labelled})
    return ({u.key: sites.index(u.site or "?") for u in labelled}, {u.key: f"site:{u.site or '?'}" for u in labelled})


def replay_files(units: list[Unit], fold_of: dict[str, int], params: FoldParams) -> list[str]:
    """A seeded multilabel-stratified ``replay_fraction`` of the cross-validated files (unit keys)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    pool = [u for u in units if fold_of.get(u.key, TEST_FOLD) >= 0]
    if len(pool) < 2:
        return [u.key for u in pool]
    classes = sorted({c for u in pool for c in u.labels})
    cindex = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(pool), max(1, len(classes))), dtype=np.int64)
    for i, u in enumerate(pool):
        for c in u.labels:
            y[i, cindex[c]] = 1
    n_test = min(len(pool) - 1, max(1, round(params.replay_fraction * len(pool))))
    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=params.seed)
    _, test_idx = next(split.split(np.zeros(len(pool)), y))
    return sorted(pool[i].key for i in test_idx)


def replay_table(units: list[Unit], chosen: list[str], fold_of: dict[str, int], version: str) -> pa.Table:
    keep = set(chosen)
    now = utc_now()
    rows = [{"window_id": wid, "source": u.source, "filename": u.filename, "fold": fold_of[u.key],
             "replay_version": version, "written_at": now}
            for u in units if u.key in keep for wid in u.windows]
    rows.sort(key=lambda r: r["window_id"])
    schema = pa.schema([("window_id", pa.string()), ("source", pa.string()), ("filename", pa.string()),
                        ("fold", pa.int32()), ("replay_version", pa.string()), ("written_at", pa.timestamp("us"))])
    return pa.Table.from_pylist(rows, schema=schema)


# ---------------------------------------------------------------------------- summary
@dataclass
class FoldSummary:
    """What :func:`make_folds` did; ``render()`` is the job's printout."""

    status: str                                   # created | unchanged
    versions: dict[str, str]
    params: dict
    per_fold: list[dict]
    single_group_classes: list[str]               # cannot appear in >= 2 folds
    under_covered: list[tuple[str, int, int]]     # (class, folds reached, folds possible)
    merged_duplicate_groups: int
    n_windows: int
    warnings: list[str] = field(default_factory=list)
    split_sites: dict[str, int] = field(default_factory=dict)   # site_split: site -> date blocks

    def render(self) -> str:
        v = self.versions
        lines = [f"folds {self.status}: folds={v['folds']} shadow_folds={v['shadow_folds']} "
                 f"replay_windows={v['replay_windows']} ({self.n_windows} windows)",
                 "params: " + ", ".join(f"{k}={val}" for k, val in self.params.items()),
                 f"{'fold':>4} {'groups':>7} {'windows':>8} {'labelled':>8} {'classes':>7}  families"]
        for r in self.per_fold:
            lines.append(f"{r['fold']:>4} {r['n_groups']:>7} {r['n_windows']:>8} {r['n_labelled']:>8} "
                         f"{r['n_classes']:>7}  {r['families']}")
        if self.split_sites:
            lines.append("sites split into date blocks (site_split): "
                         + ", ".join(f"{s} -> {n}" for s, n in sorted(self.split_sites.items())))
        if self.merged_duplicate_groups:
            lines.append(f"merged {self.merged_duplicate_groups} group(s) that share identical audio")
        if self.single_group_classes:
            shown = ", ".join(self.single_group_classes[:20])
            more = " ..." if len(self.single_group_classes) > 20 else ""
            lines.append(f"{len(self.single_group_classes)} class(es) live in one group only and cannot appear in "
                         f">= 2 folds: {shown}{more}")
        if self.under_covered:
            lines.append("classes in fewer folds than their group count allows: "
                         + ", ".join(f"{c} ({a}/{b})" for c, a, b in self.under_covered[:20]))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def split_site_blocks(units: list[Unit]) -> dict[str, int]:
    """Site -> number of date blocks, for the soundscape sites that ``site_split`` cut into >= 2."""
    blocks: dict[str, set] = defaultdict(set)
    for u in units:
        if u.family == "soundscape" and u.group_key.startswith("site:") and "|days:" in u.group_key:
            site, days = u.group_key.removeprefix("site:").split("|days:", 1)
            blocks[site].add(days)
    return {site: len(days) for site, days in sorted(blocks.items()) if len(days) > 1}


def summarize(units: list[Unit], fold_of: dict[str, int], k: int) -> tuple[list[dict], list[str], list]:
    per_fold = []
    for f in [*range(k), TEST_FOLD]:
        members = [u for u in units if fold_of.get(u.key) == f]
        if f == TEST_FOLD and not members:
            continue
        fams: dict[str, int] = defaultdict(int)
        for u in members:
            fams[u.family] += len(u.windows)
        per_fold.append({
            "fold": f, "n_groups": len({(u.family, u.group_key) for u in members}),
            "n_windows": sum(len(u.windows) for u in members),
            "n_labelled": sum(v[1] for u in members for v in u.windows.values()),
            "n_classes": len({c for u in members for c in u.labels}),
            "families": ", ".join(f"{a}={b}" for a, b in sorted(fams.items())),
        })
    groups_of: dict[str, set] = defaultdict(set)
    folds_of: dict[str, set] = defaultdict(set)
    for u in units:
        if fold_of.get(u.key, TEST_FOLD) < 0:
            continue
        for c in u.labels:
            groups_of[c].add((u.family, u.group_key))
            folds_of[c].add(fold_of[u.key])
    single = sorted(c for c, g in groups_of.items() if len(g) < 2)
    under = sorted((c, len(folds_of[c]), min(len(g), k)) for c, g in groups_of.items()
                   if len(folds_of[c]) < min(len(g), k))
    return per_fold, single, under


# ---------------------------------------------------------------------------- the job
def make_folds(store_dir: str | os.PathLike, *, k: int = FoldParams.k, seed: int = FoldParams.seed,
               soundscape_group: str = FoldParams.soundscape_group,
               date_block_days: int = FoldParams.date_block_days, cell_deg: float = FoldParams.cell_deg,
               replay_fraction: float = FoldParams.replay_fraction,
               merge_duplicates: bool = FoldParams.merge_duplicates, split_fraction: float = FoldParams.split_fraction,
               day_start_hour: int = FoldParams.day_start_hour, new_version: bool = False) -> FoldSummary:
    """Make (once) the ``folds``, ``shadow_folds`` and ``replay_windows`` tables of a store.

    Re-running with the same inputs and parameters changes nothing. Different inputs or parameters
    give a different version id; then ``new_version=True`` is required to store it (old versions
    stay in the store and can be restored with ``FeatureStore.set_current``).
    """
    params = FoldParams(k, seed, soundscape_group, date_block_days, cell_deg, replay_fraction,
                        merge_duplicates, split_fraction, day_start_hour).check()
    with FeatureStore.open(store_dir, create=False) as store:
        units = collect_units(store, params)
        hashes = pcm_hashes(store)
        merged = merge_duplicate_groups(units, hashes) if merge_duplicates else 0
        fingerprint = input_fingerprint(store, hashes if merge_duplicates else {})
        p = params.version_params()
        versions = {
            "folds": version_id("folds", fingerprint, p),
            "shadow_folds": version_id("shadow_folds", fingerprint, {}),
        }
        versions["replay_windows"] = version_id("replay_windows", {"folds": versions["folds"]},
                                                {"seed": seed, "replay_fraction": replay_fraction})
        existing = {name: stored_version(store, name) for name in versions}
        stale = {n: old for n, old in existing.items() if old is not None and old != versions[n]}
        if stale and not new_version:
            raise StoreError(
                "folds are frozen: " + "; ".join(f"{n} is version {old}, these inputs/parameters give "
                                                 f"{versions[n]}" for n, old in stale.items())
                + ". Re-run with --new-version (new_version=True) to store the new version deliberately; "
                  "old versions stay available")
        fold_of = assign_units(units, params)
        per_fold, single, under = summarize(units, fold_of, k)
        warnings = [f"fold {r['fold']} is empty" for r in per_fold if r["n_windows"] == 0]
        status = "unchanged"
        if any(existing[n] != versions[n] for n in versions):
            shadow_of, shadow_groups = shadow_assignment(units)
            tables = {
                "folds": fold_table(units, fold_of, {}, versions["folds"]),
                "shadow_folds": fold_table(units, shadow_of, shadow_groups, versions["shadow_folds"]),
                REPLAY_TABLE: replay_table(units, replay_files(units, fold_of, params), fold_of,
                                           versions["replay_windows"]),
            }
            for name, table in tables.items():
                store.write_table(name, table, params={"version": versions[name], "algorithm": ALGORITHM,
                                                       "fold_params": p, "inputs": fingerprint})
            status = "created"
        n_windows = store.count("folds")
    return FoldSummary(status, versions, p, per_fold, single, under, merged, n_windows, warnings,
                       split_site_blocks(units))


def stored_version(store: FeatureStore, name: str) -> str | None:
    """The fold/replay version id of the current ``name`` table, or None if it does not exist."""
    if not store.has_table(name):
        return None
    return store.version_info(name, store.current_version(name)).params.get("version")


def _physical_version(store: FeatureStore, name: str, version: str | None) -> str | None:
    """Map a fold version id (or a store table version) to the store's table version."""
    if version is None:
        return None
    for info in store.versions(name):
        if version in (info.params.get("version"), info.version, info.content_hash):
            return info.version
    raise StoreError(f"no {name} version {version!r} in {store.root}; stored: "
                     + ", ".join(str(i.params.get("version")) for i in store.versions(name)))


def load_folds(store: FeatureStore, version: str | None = None, kind: str = "folds") -> tuple[dict[str, int], str]:
    """``(window_id -> fold, fold version id)`` of the current (or a given) ``folds`` / ``shadow_folds``.

    ``version`` may be the fold version id (the ``fold_version`` column) or the store table version.
    Test-soundscape windows map to fold -1.
    """
    if kind not in FOLD_KINDS:
        raise StoreError(f"kind must be one of {FOLD_KINDS}, got {kind!r}")
    if not store.has_table(kind):
        raise StoreError(f"store {store.root} has no {kind} table; run python -m pipelines.folds --store {store.root}")
    physical = _physical_version(store, kind, version) or store.current_version(kind)
    table = store.read_table(kind, physical).select(["window_id", "fold"])
    mapping = dict(zip(table.column("window_id").to_pylist(), table.column("fold").to_pylist(), strict=True))
    return mapping, store.version_info(kind, physical).params.get("version", physical)


def fold_version(store: FeatureStore, kind: str = "folds") -> str:
    """The version id of the current ``folds`` / ``shadow_folds`` / ``replay_windows`` table."""
    version = stored_version(store, kind)
    if version is None:
        raise StoreError(f"store {store.root} has no {kind} table; run python -m pipelines.folds --store {store.root}")
    return version


def load_replay(store: FeatureStore, version: str | None = None) -> set[str]:
    """Window ids of the current (or a given) replay subset."""
    if not store.has_table(REPLAY_TABLE):
        raise StoreError(f"store {store.root} has no {REPLAY_TABLE} table; run python -m pipelines.folds")
    table = store.read_table(REPLAY_TABLE, _physical_version(store, REPLAY_TABLE, version))
    return set(table.column("window_id").to_pylist())


def fold_assignment(store: FeatureStore, window_ids: np.ndarray, version: str | None,
                    kind: str = "folds") -> tuple[np.ndarray, str]:
    """Fold of each window (-1 where the fold table has none) and the fold version used."""
    mapping, fold_version = load_folds(store, version=version, kind=kind)
    return np.array([mapping.get(w, -1) for w in window_ids], dtype=np.int64), fold_version


def folds_to_run(folds: np.ndarray, run_folds: Sequence[int] | None = None) -> list[int]:
    """The held-out folds a cross-validation runs, ascending: every fold in ``folds`` (one per row; -1 is
    no fold), or only ``run_folds`` when given (the tuner's fast mode); StoreError naming a fold in
    ``run_folds`` that ``folds`` lacks. Training, the stackers and the CNN all run these."""
    fold_ids = sorted(set(np.asarray(folds).tolist()) - {TEST_FOLD})
    if not run_folds:
        return fold_ids
    unknown = sorted(set(run_folds) - set(fold_ids))
    if unknown:
        raise StoreError(f"fold(s) {unknown} do not exist; the fold table has {fold_ids}")
    return sorted(set(run_folds))


def require_same_fold_version(what: str, got: str, expected: str, fix: str) -> None:
    """UserInputError unless ``what`` (a teacher's labels, a base head) was trained on fold version
    ``expected``, the one this run uses: fold k must be held out by every model whose output it is
    scored or trained on. ``fix`` says what to re-run."""
    if got != expected:
        raise UserInputError(f"{what} trained on fold version {got}, but this run uses {expected}: {fix}")
