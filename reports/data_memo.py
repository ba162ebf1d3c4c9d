"""The data memo: one self-contained HTML page about a feature store (the library behind
``python -m pipelines.report``).

Sections: key numbers, inventory, class imbalance, classes with no training data, clip durations,
site x hour, label co-occurrence, metadata, audio QA outliers, leakage (exact and near duplicates,
sessions and soundscape files across folds), the fold audit and a short risk list. The memo builds at
any stage: sections whose input table is missing (no folds yet, no embeddings yet) say which command
makes it. Plots are PNGs embedded as base64 (matplotlib, Agg backend, imported only when a page is
rendered). Most numbers come from the SQL files in sql/eda and sql/leakage, so every table in the memo
can be re-run in the DuckDB CLI.

It lives in ``embed`` - the lowest layer holding all it reads - because the near-duplicate section
compares stored embeddings (:mod:`embed.near_duplicates`); everything else reads store tables.

Class status, used everywhere in the memo: a class has *no training data* when it is the primary label
of no focal clip and appears in no soundscape label; it is *rare* with 1 to ``RARE_EXAMPLES - 1``
training examples (focal clips + labelled 5-s soundscape windows).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from embed.near_duplicates import NEAR_DUPLICATE_COSINE, load_file_embeddings, near_duplicate_pairs
from embed.perch import CLASS_MAP_TABLE as PERCH_CLASS_MAP
from featurestore.folds import stored_version
from featurestore.ingest import latest_data_version
from featurestore.sqlfiles import run_sql_file
from featurestore.store import FeatureStore
from reports.htmlpage import check_out, html_table, img, png, pyplot, render_page, write_page

SECTIONS = (
    ("key-numbers", "Key numbers"), ("inventory", "Inventory"), ("class-imbalance", "Class imbalance"),
    ("no-training-data", "Classes with no training data"), ("perch-coverage", "Perch logits coverage"),
    ("durations", "Clip durations"),
    ("site-hour", "Labels by site and hour"), ("cooccurrence", "Label co-occurrence"),
    ("metadata", "Metadata missingness and ratings"), ("audio-qa", "Audio QA outliers"),
    ("leakage", "Leakage findings"), ("near-duplicates", "Near-duplicate recordings"),
    ("folds", "Fold audit"), ("risks", "Risks"),
)
QA_CLIPPED = 0.001      # share of samples at full scale
QA_SILENT = 0.5         # share of 50-ms frames below -60 dBFS
QA_LOW_SNR_DB = 6.0     # 95th - 10th percentile frame level
TOP_COOCCURRENCE_LABELS = 20
RARE_EXAMPLES = 10      # rare = 1 .. RARE_EXAMPLES - 1 training examples (focal clips + labelled windows)
IMBALANCE_LABELLED = 90     # up to this many classes with data: one labelled bar row per class
IMBALANCE_RAREST = 50       # above it: an overview by rank plus the rarest classes, labelled
SOUNDSCAPE_SOURCES = ("train_soundscapes", "test_soundscapes")

NO_DATA, RARE, MID, HEAD = "no training data", "rare", "mid", "head"

# key -> (SQL file, tables it reads); fold tables come from pipelines.folds, the rest from pipelines.ingest
SQL_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "long_tail": ("eda/long_tail", ("taxonomy", "recordings", "soundscape_labels")),
    "class_counts": ("eda/class_counts", ("taxonomy", "recordings", "soundscape_labels")),
    "durations_sql": ("eda/clip_durations", ("audio_inventory",)),
    "site_hour": ("eda/labels_per_site_hour", ("soundscape_labels",)),
    "pairs": ("eda/label_cooccurrence", ("soundscape_labels", "recordings")),
    "missing": ("eda/metadata_missingness", ("recordings",)),
    "ratings": ("eda/rating_distribution", ("recordings",)),
    "duplicates": ("leakage/duplicate_audio", ("audio_inventory", "recordings", "soundscape_labels")),
    "dup_folds": ("leakage/duplicate_audio_across_folds", ("audio_inventory", "folds")),
    "sessions": ("leakage/author_place_across_folds", ("recordings", "folds")),
    "scape_leaks": ("leakage/soundscape_file_leaks", ("audio_inventory", "soundscape_labels", "folds")),
    "fold_audit": ("leakage/fold_audit", ("soundscape_labels", "windows", "recordings", "folds")),
    "coverage": ("leakage/fold_class_coverage", ("taxonomy", "soundscape_labels", "windows", "recordings", "folds")),
}
FOLD_TABLES = frozenset({"folds", "shadow_folds", "replay_windows"})


@dataclass
class Cooccurrence:
    """Label co-occurrence over labelled soundscape windows, for the most frequent labels.

    ``matrix[i, j]`` (i != j) counts windows holding both labels; the diagonal is 0 (a label with
    itself is its frequency, kept apart in ``totals`` so it cannot dominate the colour scale).
    """

    labels: list[str]
    matrix: np.ndarray
    totals: np.ndarray
    n_windows: int


@dataclass
class Memo:
    """Facts gathered from the store (no plotting here)."""

    store: str
    data_version: str | None
    tables: dict[str, pa.Table] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    durations: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[dict] = field(default_factory=list)
    key_numbers: list[dict] = field(default_factory=list)
    cooc: Cooccurrence | None = None
    near_duplicates: list[tuple[str, str, float, str]] | None = None
    risks: list[str] = field(default_factory=list)

    @property
    def has_folds(self) -> bool:
        return self.versions.get("folds") is not None


def no_folds_hint(store: str) -> str:
    return f"no folds yet: run python -m pipelines.folds --store {store}"


# ---------------------------------------------------------------------------- gathering
def try_sql(store: FeatureStore, memo: Memo, key: str) -> pa.Table | None:
    """Run the SQL file of ``key`` into ``memo.tables[key]``.

    A missing input table becomes a note naming the command that writes it (never a raw DuckDB
    error); a failure with every input present becomes a note naming the SQL file and the error.
    """
    name, needs = SQL_SOURCES[key]
    missing = [t for t in needs if not store.has_table(t)]
    if missing:
        if FOLD_TABLES.intersection(missing):
            memo.notes[key] = no_folds_hint(memo.store)
        else:
            memo.notes[key] = (f"not available yet: table {', '.join(missing)} is missing; run "
                               f"python -m pipelines.ingest --data DIR --store {memo.store}")
        return None
    try:
        memo.tables[key] = run_sql_file(store, name)
        return memo.tables[key]
    except Exception as exc:  # a real failure with every input present: report it in the section
        memo.notes[key] = f"could not run sql/{name}.sql: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return None


def gather(store: FeatureStore) -> Memo:
    memo = Memo(store=str(store.root), data_version=latest_data_version(store))
    memo.counts = {name: store.count(name) for name in store.table_names()}
    memo.versions = {name: stored_version(store, name) for name in ("folds", "shadow_folds", "replay_windows")}
    if store.has_table("windows"):
        memo.tables["sources"] = store.sql(
            "SELECT source, count(DISTINCT filename) AS n_files, count(*) AS n_windows, "
            "round(sum(audio_end_s - start_s) / 3600, 2) AS hours FROM windows GROUP BY 1 ORDER BY 1")
    if store.has_table("soundscape_labels") and store.has_table("windows"):
        audio = "(SELECT DISTINCT filename FROM windows WHERE source = 'train_soundscapes')"
        memo.tables["labelled_audio"] = store.sql(
            f"SELECT count(DISTINCT filename) AS labelled_files, "
            f"count(DISTINCT filename) FILTER (WHERE filename IN {audio}) AS with_audio, "
            f"count(*) AS labelled_windows FROM soundscape_labels")
    for key in SQL_SOURCES:
        try_sql(store, memo, key)
    if store.has_table("audio_inventory"):
        for source, duration in store.rows("SELECT source, list(duration_s) FROM audio_inventory "
                                           "WHERE duration_s IS NOT NULL GROUP BY 1 ORDER BY 1"):
            memo.durations[source] = np.asarray(duration, dtype=np.float64)
        memo.tables["qa"] = store.sql(
            "SELECT path, round(duration_s, 2) AS duration_s, round(peak, 3) AS peak, round(rms_dbfs, 1) AS rms_dbfs, "
            "round(clipped_fraction, 4) AS clipped, round(silent_frame_fraction, 3) AS silent, "
            "round(snr_db, 1) AS snr_db, concat_ws('; ', "
            "  CASE WHEN error IS NOT NULL THEN 'decode error' END, "
            "  CASE WHEN clipped_fraction >= ? THEN 'clipping' END, "
            "  CASE WHEN silent_frame_fraction >= ? THEN 'mostly silent' END, "
            "  CASE WHEN snr_db < ? THEN 'low SNR' END) AS issues "
            "FROM audio_inventory WHERE error IS NOT NULL OR clipped_fraction >= ? OR silent_frame_fraction >= ? "
            "OR snr_db < ? ORDER BY error IS NULL, snr_db NULLS FIRST, path",
            [QA_CLIPPED, QA_SILENT, QA_LOW_SNR_DB, QA_CLIPPED, QA_SILENT, QA_LOW_SNR_DB])
        memo.tables["qa_all"] = store.sql("SELECT source, rms_dbfs, snr_db, clipped_fraction, silent_frame_fraction "
                                          "FROM audio_inventory WHERE error IS NULL")
    if store.has_table(PERCH_CLASS_MAP):   # written by pipelines.embed --extractor perch (embed.perch)
        memo.tables["perch_map"] = store.sql(
            f"SELECT primary_label, scientific_name, class_name, match, len(perch_indices) AS n_perch_classes, "
            f"perch_names FROM {PERCH_CLASS_MAP}")
    else:
        memo.notes["perch_map"] = ("no Perch features yet: run python -m pipelines.embed --store "
                                   f"{memo.store} --extractor perch --model PATH (the SavedModel folder, .onnx or .tflite)")
    memo.classes = class_table(_rows(memo, "long_tail"), taxonomy_names(store))
    memo.cooc = cooccurrence_matrix(store)
    gather_near_duplicates(store, memo)
    memo.key_numbers = key_numbers(store, memo)
    memo.risks = risk_list(memo)
    return memo


def taxonomy_names(store: FeatureStore) -> dict[str, dict]:
    """``primary_label -> {class_name, scientific_name, common_name}`` from the taxonomy table."""
    if not store.has_table("taxonomy"):
        return {}
    return {label: {"class_name": cls, "scientific_name": sci, "common_name": common}
            for label, cls, sci, common in store.rows(
                "SELECT primary_label, class_name, scientific_name, common_name FROM taxonomy")}


def class_status(n_examples: int) -> str:
    if n_examples <= 0:
        return NO_DATA
    if n_examples < RARE_EXAMPLES:
        return RARE
    return MID if n_examples < 10 * RARE_EXAMPLES else HEAD


def class_label(row: dict, width: int = 48) -> str:
    """``primary_label · common name (scientific name)`` (the scientific name only when it differs)."""
    common, sci = row.get("common_name") or "", row.get("scientific_name") or ""
    name = common if not sci or sci == common else f"{common} ({sci})" if common else sci
    text = f"{row['primary_label']} · {name}" if name else str(row["primary_label"])
    return text if len(text) <= width else text[: width - 1] + "…"


def class_table(long_tail: list[dict], names: dict[str, dict]) -> list[dict]:
    """One row per taxonomy class: names, focal clips, labelled soundscape windows, examples and status."""
    out = []
    for r in long_tail:
        n = names.get(r["primary_label"], {})
        n_clips, n_windows = int(r["n_clips"]), int(r["n_soundscape_segments"])
        out.append({
            "primary_label": r["primary_label"], "class_name": r["class_name"],
            "common_name": n.get("common_name"), "scientific_name": n.get("scientific_name") or r["scientific_name"],
            "n_clips": n_clips, "n_soundscape_windows": n_windows, "n_examples": n_clips + n_windows,
            "n_secondary": int(r["n_secondary"]), "n_sites": int(r["n_sites"]),
            "status": class_status(n_clips + n_windows)})
    return out


def imbalance_rows(classes: list[dict]) -> list[dict]:
    """Classes with training data only (no zero-count bars), most examples first, with a display label."""
    rows = [dict(r, label=class_label(r)) for r in classes if r["n_examples"] > 0]
    return sorted(rows, key=lambda r: (-r["n_examples"], -r["n_clips"], r["primary_label"]))


def no_training_data(classes: list[dict]) -> list[dict]:
    """Classes with no focal clip and no soundscape label, grouped by class_name."""
    rows = [{k: r[k] for k in ("primary_label", "class_name", "scientific_name", "common_name", "n_secondary")}
            for r in classes if r["status"] == NO_DATA]
    return sorted(rows, key=lambda r: (r["class_name"] or "", r["primary_label"]))


def cooccurrence_matrix(store: FeatureStore, top: int = TOP_COOCCURRENCE_LABELS) -> Cooccurrence | None:
    """Co-occurrence of the ``top`` most frequent soundscape labels (zero diagonal, totals apart)."""
    if not store.has_table("soundscape_labels"):
        return None
    windows = [set(r[0]) for r in store.rows("SELECT labels FROM soundscape_labels") if r[0]]
    freq: dict[str, int] = {}
    for labels in windows:
        for label in labels:
            freq[label] = freq.get(label, 0) + 1
    chosen = sorted(freq, key=lambda lab: (-freq[lab], lab))[:top]
    if len(chosen) < 2:
        return None
    index = {lab: i for i, lab in enumerate(chosen)}
    y = np.zeros((len(windows), len(chosen)), dtype=np.int64)
    for r, labels in enumerate(windows):
        for label in labels & index.keys():
            y[r, index[label]] = 1
    matrix = y.T @ y
    totals = np.diag(matrix).copy()
    np.fill_diagonal(matrix, 0)
    return Cooccurrence(chosen, matrix, totals, len(windows))


def cooccurrence_image(cooc: Cooccurrence) -> tuple[np.ma.MaskedArray, float, float]:
    """What the heatmap draws: the off-diagonal counts (diagonal masked) on a scale from 0."""
    data = np.ma.masked_array(cooc.matrix.astype(float), mask=np.eye(len(cooc.labels), dtype=bool))
    return data, 0.0, float(max(1, cooc.matrix.max()))


def gather_near_duplicates(store: FeatureStore, memo: Memo) -> None:
    if not store.has_table("birdnet_frames"):
        memo.notes["near_duplicates"] = ("near-duplicate check needs BirdNET embeddings, none yet: run "
                                         f"python -m pipelines.embed --store {memo.store} --extractor birdnet")
        return
    loaded = load_file_embeddings(store)
    if isinstance(loaded, str):
        memo.notes["near_duplicates"] = f"near-duplicate check skipped: {loaded}"
        return
    files, vectors = loaded
    fold_of = {}
    if store.has_table("folds"):
        fold_of = dict(store.rows("SELECT source || '/' || filename, min(fold) FROM folds GROUP BY 1"))
    pairs = near_duplicate_pairs(files, vectors, NEAR_DUPLICATE_COSINE)
    memo.near_duplicates = [(a, b, s, ("no folds yet" if not fold_of else
                                       "different folds" if fold_of.get(a) != fold_of.get(b) else "same fold"))
                            for a, b, s in pairs]
    memo.notes["near_duplicates"] = (f"{len(files)} files compared (mean BirdNET embedding per file, cosine >= "
                                     f"{NEAR_DUPLICATE_COSINE})")


def _rows(memo: Memo, key: str) -> list[dict]:
    table = memo.tables.get(key)
    return table.to_pylist() if table is not None else []


def _first(store: FeatureStore, query: str, *tables: str) -> tuple:
    """The first row of ``query``, or a row of zeros when one of ``tables`` is missing."""
    if not all(store.has_table(t) for t in tables):
        return (0, 0, 0, 0)
    return store.first(query) or (0, 0, 0, 0)


def key_numbers(store: FeatureStore, memo: Memo) -> list[dict]:
    """The box at the top of the memo: ``{key, label, value, detail}`` rows (value is an int or a word)."""
    out: list[dict] = []

    def add(key: str, label: str, value: int | str, detail: str = "") -> None:
        out.append({"key": key, "label": label, "value": value, "detail": detail})

    classes = memo.classes
    by_group: dict[str, int] = {}
    for r in classes:
        by_group[r["class_name"]] = by_group.get(r["class_name"], 0) + 1
    groups = ", ".join(f"{g} {n}" for g, n in sorted(by_group.items(), key=lambda kv: (-kv[1], kv[0])))
    n_data = sum(r["n_examples"] > 0 for r in classes)
    add("classes", "classes (taxonomy)", len(classes), groups)
    add("classes_with_data", "classes with training data", n_data,
        f"{sum(r['n_clips'] > 0 for r in classes)} with focal clips, "
        f"{sum(r['n_soundscape_windows'] > 0 for r in classes)} with soundscape labels")
    add("classes_no_data", "classes with no training data", len(classes) - n_data,
        "no focal clip and no soundscape label (listed below)")
    add("classes_rare", "rare classes", sum(r["status"] == RARE for r in classes),
        f"1-{RARE_EXAMPLES - 1} examples (focal clips + labelled soundscape windows)")
    clips, clip_audio = _first(store, "SELECT count(*), count(*) FILTER (WHERE filename IN (SELECT filename FROM "
                                      "audio_inventory WHERE source = 'train_audio' AND error IS NULL)) "
                                      "FROM recordings", "recordings", "audio_inventory")[:2]
    add("focal_clips", "focal clips (train.csv)", clips, f"{clip_audio} with decodable audio")
    files, windows, sites, events = _first(
        store, "SELECT count(DISTINCT filename), count(*), count(DISTINCT site), "
               "CAST(coalesce(sum(len(labels)), 0) AS BIGINT) FROM soundscape_labels", "soundscape_labels")
    with_audio = _rows(memo, "labelled_audio")[0]["with_audio"] if _rows(memo, "labelled_audio") else 0
    add("labelled_soundscapes", "labelled soundscapes", files, f"{with_audio} with audio in this store")
    add("labelled_windows", "labelled 5-s windows", windows, f"{events} labels")
    site_names = [r[0] for r in store.rows("SELECT DISTINCT site FROM soundscape_labels ORDER BY 1")] \
        if store.has_table("soundscape_labels") else []
    add("sites", "sites (labelled soundscapes)", sites, ", ".join(str(s) for s in site_names[:20])
        + (", ..." if len(site_names) > 20 else ""))
    unlabelled, test = _first(
        store, "SELECT count(*) FILTER (WHERE split = 'train' AND filename NOT IN "
               "(SELECT filename FROM soundscape_labels)), count(*) FILTER (WHERE split = 'test') FROM soundscapes",
        "soundscapes", "soundscape_labels")[:2]
    add("unlabelled_soundscapes", "unlabelled train soundscapes", unlabelled, "audio without expert labels")
    add("test_soundscapes", "test soundscapes", test,
        "" if test else "none in this store (the hidden test set is scored on Kaggle)")
    fold_version = memo.versions.get("folds")
    if fold_version is None:
        add("folds", "folds", "no folds yet", f"run python -m pipelines.folds --store {memo.store}")
    else:
        n_folds = _first(store, "SELECT count(DISTINCT fold) FILTER (WHERE fold >= 0) FROM folds", "folds")[0]
        add("folds", "folds", fold_version, f"{n_folds} folds")
    problems = _first(store, "SELECT count(*), count(*) FILTER (WHERE severity = 'error') FROM ingest_problems",
                      "ingest_problems")[:2]
    add("ingest_problems", "ingest problems", problems[0], f"{problems[1]} errors (see ingest_problems)")
    add("qa_outliers", "audio QA outliers", len(_rows(memo, "qa")), "clipping, silence, low SNR or decode errors")
    return out


def risk_list(memo: Memo) -> list[str]:
    """Short, data-driven risks to keep in mind before tuning."""
    risks = []
    per_site: dict[str, int] = {}
    for r in _rows(memo, "site_hour"):
        per_site[r["site"]] = per_site.get(r["site"], 0) + r["n_segments"]
    total = sum(per_site.values())
    if total:
        site, n = max(per_site.items(), key=lambda kv: kv[1])
        if n / total > 0.4:
            risks.append(f"Site {site} holds {n / total:.0%} of the labelled soundscape windows: the fold that holds "
                         f"it dominates the soundscape score; read per-site slices and fold mean +/- std, not one number.")
    if memo.classes:
        none = sum(r["status"] == NO_DATA for r in memo.classes)
        rare = sum(r["status"] == RARE for r in memo.classes)
        if none:
            risks.append(f"{none} of {len(memo.classes)} classes have no training data (no focal clip, no soundscape "
                         "label): the model can only score them from priors; they are dropped from the metric until "
                         "a positive appears.")
        if rare:
            risks.append(f"{rare} classes are rare (1-{RARE_EXAMPLES - 1} examples: focal clips + labelled soundscape "
                         "windows): their AUC is noisy; use the file bootstrap CI and padded cmAP before trusting a "
                         "rare-class gain.")
    single = [r for r in _rows(memo, "coverage") if r["cannot_validate"]]
    if single:
        risks.append(f"{len(single)} classes live in a single group (one site or one recordist+place): they can "
                     "never be trained and validated in different folds; their OOF AUC measures nothing.")
    la = _rows(memo, "labelled_audio")
    if la and la[0]["labelled_files"] and la[0]["with_audio"] < la[0]["labelled_files"]:
        risks.append(f"Only {la[0]['with_audio']} of {la[0]['labelled_files']} labelled soundscape files have audio "
                     "in this store; the folds still cover their windows, but no features exist for the rest.")
    dups = _rows(memo, "duplicates")
    if dups:
        conflicts = sum(r["label_conflict"] for r in dups)
        risks.append(f"{len(dups)} groups of byte-identical audio ({conflicts} filed under different labels); folds "
                     "merge them into one group, but label conflicts need a decision.")
    if _rows(memo, "dup_folds") or _rows(memo, "sessions") or _rows(memo, "scape_leaks"):
        risks.append("Leakage queries found rows (see Leakage findings): fix the grouping before trusting OOF scores.")
    if memo.near_duplicates:
        cross = sum(p[3] == "different folds" for p in memo.near_duplicates)
        risks.append(f"{len(memo.near_duplicates)} near-duplicate recording pairs (cosine >= {NEAR_DUPLICATE_COSINE}), "
                     f"{cross} across folds.")
    qa = _rows(memo, "qa")
    if qa:
        risks.append(f"{len(qa)} audio files are QA outliers (clipping, silence, low SNR or decode errors).")
    risks.append("train.csv has no recording date: same-session clips are approximated by author + lat/lon cell; "
                 "one recordist's trip across cell borders can still straddle folds.")
    if not memo.has_folds:
        risks.append(f"No folds yet: run python -m pipelines.folds --store {memo.store} before any training or tuning.")
    return risks


# ---------------------------------------------------------------------------- plots (matplotlib only here)
def _group_colors(rows: list[dict]) -> dict[str, tuple]:
    plt = pyplot()
    return {g: plt.cm.tab10(i % 10) for i, g in enumerate(sorted({str(r["class_name"]) for r in rows}))}


def _imbalance_bars(ax, rows: list[dict], colors: dict[str, tuple]) -> None:
    """One row per class: focal clips (solid) above labelled soundscape windows (light), class_name colours, log x."""
    y = np.arange(len(rows))
    for offset, key, alpha in ((-0.2, "n_clips", 1.0), (0.2, "n_soundscape_windows", 0.4)):
        values = np.array([r[key] for r in rows], dtype=float)
        keep = values > 0                       # a zero count draws no bar (the row label stays)
        bar_colors = [colors[str(r["class_name"])] for r, k in zip(rows, keep, strict=True) if k]
        ax.barh(y[keep] + offset, values[keep] - 0.5, left=0.5, height=0.4, color=bar_colors, alpha=alpha)
        for yi, v in zip(y[keep], values[keep], strict=True):
            ax.text(v * 1.08, yi + offset, f"{v:.0f}", va="center", fontsize=6)
    ax.set_xscale("log")
    top = max(max(r["n_clips"], r["n_soundscape_windows"]) for r in rows)
    ax.set_xlim(0.5, top * 3)
    ticks = [m * 10**e for e in range(7) for m in (1, 2, 5) if m * 10**e <= top * 3]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)


def _imbalance_legend(ax, colors: dict[str, tuple], loc: str = "lower right", dots: bool = False) -> None:
    plt = pyplot()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    if dots:
        handles.append(plt.Line2D([], [], ls="", marker=".", color="black"))
        names = ["bars: focal clips"] + ["dots: labelled soundscape windows"]
    else:
        handles += [plt.Rectangle((0, 0), 1, 1, color="0.3"), plt.Rectangle((0, 0), 1, 1, color="0.3", alpha=0.4)]
        names = ["solid: focal clips", "light: labelled soundscape windows"]
    if dots:
        handles.insert(len(colors), plt.Rectangle((0, 0), 1, 1, color="0.3"))
    ax.legend(handles, list(colors) + names, fontsize=7, loc=loc, framealpha=0.9)


def plot_class_imbalance(rows: list[dict]) -> str:
    """Training examples per class with data (rows from ``imbalance_rows``; no class without data)."""
    plt = pyplot()
    colors = _group_colors(rows)
    if len(rows) <= IMBALANCE_LABELLED:
        fig, ax = plt.subplots(figsize=(9, 0.2 * len(rows) + 1.2))
        _imbalance_bars(ax, rows, colors)
        _imbalance_legend(ax, colors)
        ax.set_xlabel("count (log scale)")
        ax.set_title(f"Training examples of the {len(rows)} classes with data, most first "
                     "(classes with no data are listed, not drawn)", fontsize=10)
        return png(fig)
    rarest = rows[-IMBALANCE_RAREST:]
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 3.2 + 0.2 * len(rarest) + 1.2),
                                   gridspec_kw={"height_ratios": [3.2, 0.2 * len(rarest) + 0.4]})
    x = np.arange(1, len(rows) + 1)
    clips = np.array([r["n_clips"] for r in rows], dtype=float)
    scape = np.array([r["n_soundscape_windows"] for r in rows], dtype=float)
    ax0.bar(x[clips > 0], clips[clips > 0], width=1.0, color=[colors[str(r["class_name"])]
                                                               for r, c in zip(rows, clips, strict=True) if c > 0])
    ax0.plot(x[scape > 0], scape[scape > 0], ".", color="black", ms=3)
    ax0.axvspan(len(rows) - len(rarest) + 0.5, len(rows) + 0.5, color="0.9", zorder=0)
    ax0.set_yscale("log")
    ax0.set_xlim(0.5, len(rows) + 0.5)
    ax0.set_xlabel("class rank by training examples (shaded: the rarest, listed below)")
    ax0.set_ylabel("count (log)")
    ax0.set_title(f"Focal clips (bars) and labelled soundscape windows (dots) of the {len(rows)} classes with data")
    _imbalance_legend(ax0, colors, loc="upper right", dots=True)
    _imbalance_bars(ax1, rarest, colors)
    ax1.set_xlabel("count (log scale)")
    ax1.set_title(f"The {len(rarest)} rarest classes with data")
    fig.tight_layout()
    return png(fig)


def soundscape_durations(durations: dict[str, np.ndarray]) -> list[tuple[str, float, int]]:
    """``(source, duration rounded to 0.1 s, files)`` of the soundscape audio, most common first per source."""
    out = []
    for source in SOUNDSCAPE_SOURCES:
        values = durations.get(source)
        if values is None or not values.size:
            continue
        rounded, counts = np.unique(np.round(values, 1), return_counts=True)
        out += [(source, float(d), int(n)) for d, n in sorted(zip(rounded, counts, strict=True), key=lambda t: -t[1])]
    return out


def plot_durations(durations: dict[str, np.ndarray]) -> str:
    """Focal clip durations (histogram) and soundscape durations (files per duration) side by side."""
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [2.2, 1]})
    focal = durations.get("train_audio", np.zeros(0))
    if focal.size:
        top = max(5.0, min(float(focal.max()), 180.0))
        ax0.hist(np.clip(focal, 0, top), bins=np.linspace(0, top, 37), color="tab:orange")
        ax0.axvline(5, color="black", lw=0.8, ls=":")
        ax0.text(5, ax0.get_ylim()[1] * 0.95, " 5-s window", fontsize=7, va="top")
        ax0.set_xlabel(f"duration (s){'; longer clips in the last bin' if focal.max() > top else ''}")
        ax0.set_ylabel("files")
        ax0.yaxis.get_major_locator().set_params(integer=True)
        ax0.set_title(f"Focal clips (train_audio, {focal.size} files, median {np.median(focal):.1f} s)")
    else:
        ax0.text(0.5, 0.5, "no focal clip audio in this store", ha="center", va="center", transform=ax0.transAxes)
        ax0.set_axis_off()
    scape = soundscape_durations(durations)
    if scape:
        names = [f"{s.split('_')[0]} {d:g} s" for s, d, _ in scape[:10]]
        counts = [n for _, _, n in scape[:10]]
        colors = ["tab:green" if s.startswith("train") else "tab:blue" for s, _, _ in scape[:10]]
        bars = ax1.barh(range(len(names)), counts, color=colors)
        ax1.bar_label(bars, [f"{n} files" for n in counts], fontsize=8, padding=2)
        ax1.set_yticks(range(len(names)), names, fontsize=8)
        ax1.set_ylim(len(names) - 0.5, -0.5)
        ax1.set_xlim(0, max(counts) * 1.45)
        ax1.set_xlabel("files")
        more = f" ({len(scape) - 10} more durations in the table)" if len(scape) > 10 else ""
        ax1.set_title(f"Soundscapes by duration{more}")
    else:
        ax1.text(0.5, 0.5, "no soundscape audio in this store\n(labels only)", ha="center", va="center",
                 transform=ax1.transAxes)
        ax1.set_title("Soundscapes")
        ax1.set_axis_off()
    fig.tight_layout()
    return png(fig)


def plot_site_hour(rows: list[dict]) -> str:
    plt = pyplot()
    sites = sorted({r["site"] for r in rows})
    grid = np.zeros((len(sites), 24))
    for r in rows:
        grid[sites.index(r["site"]), int(r["hour"])] += r["n_segments"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(sites) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("hour of day (UTC, from the file name)")
    fig.colorbar(im, ax=ax, label="labelled windows")
    ax.set_title("Labelled soundscape windows by site and hour")
    return png(fig)


def plot_cooccurrence(cooc: Cooccurrence, names: dict[str, dict] | None = None) -> str:
    """Heatmap of windows holding both labels (diagonal left out, scale from 0) + per-label totals."""
    plt = pyplot()
    names = names or {}
    n = len(cooc.labels)
    data, vmin, vmax = cooccurrence_image(cooc)
    fig = plt.figure(figsize=(11, 0.3 * n + 2.6))
    grid = fig.add_gridspec(1, 3, width_ratios=[n, 4, 0.4], wspace=0.06)
    ax = fig.add_subplot(grid[0])
    axt = fig.add_subplot(grid[1], sharey=ax)
    cax = fig.add_subplot(grid[2])
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.75", lw=0))
        for j in range(n):
            if i != j and cooc.matrix[i, j]:
                value = int(cooc.matrix[i, j])
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                        color="white" if value < 0.6 * vmax else "black")
    ax.set_xticks(range(n), cooc.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), [class_label({"primary_label": lab, **names.get(lab, {})}, 40) for lab in cooc.labels],
                  fontsize=7)
    ax.set_title(f"Co-occurrence of the {n} most frequent soundscape labels "
                 f"({cooc.n_windows} labelled windows; diagonal left out)", fontsize=10, loc="left")
    bars = axt.barh(range(n), cooc.totals, color="0.55", height=0.7)
    axt.bar_label(bars, [str(v) for v in cooc.totals], fontsize=6, padding=2)
    axt.set_xlim(0, max(1, cooc.totals.max()) * 1.35)
    axt.set_xlabel("windows with the label")
    axt.tick_params(axis="y", left=False, labelleft=False)
    axt.spines[["top", "right"]].set_visible(False)
    fig.colorbar(im, cax=cax, label="windows with both labels (scale from 0)")
    return png(fig)


def plot_audio_qa(rows: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for source in sorted({r["source"] for r in rows}):
        pts = [(r["rms_dbfs"], r["snr_db"]) for r in rows if r["source"] == source and r["snr_db"] is not None]
        if pts:
            a = np.array(pts, dtype=float)
            ax.scatter(a[:, 0], a[:, 1], s=8, alpha=0.6, label=source)
    ax.axhline(QA_LOW_SNR_DB, color="red", lw=0.8, ls="--", label=f"low SNR < {QA_LOW_SNR_DB:g} dB")
    ax.set_xlabel("RMS level (dBFS)")
    ax.set_ylabel("SNR proxy (dB)")
    ax.legend(fontsize=8)
    ax.set_title("Audio level vs SNR proxy per file")
    return png(fig)


def plot_folds(rows: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [str(r["fold"]) for r in rows]
    scape = np.array([r["n_soundscape_windows"] for r in rows], dtype=float)
    other = np.array([r["n_windows"] for r in rows], dtype=float) - scape
    ax.bar(labels, other, label="focal / test windows")
    ax.bar(labels, scape, bottom=other, label="soundscape windows")
    for i, r in enumerate(rows):
        ax.text(i, r["n_windows"], f"{r['n_classes']} cls", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max([r["n_windows"] for r in rows] + [1]) * 1.25)
    ax.set_xlabel("fold (-1 = test soundscapes)")
    ax.set_ylabel("windows")
    ax.legend(fontsize=8)
    ax.set_title("Windows and classes per fold")
    return png(fig)


# ---------------------------------------------------------------------------- HTML
def note(memo: Memo, key: str) -> str:
    return f"<p class='note'>{html.escape(memo.notes[key])}</p>" if key in memo.notes else ""


def key_numbers_html(rows: list[dict]) -> str:
    body = "".join(f"<tr data-key='{html.escape(r['key'])}'><th>{html.escape(r['label'])}</th>"
                   f"<td class='num'>{html.escape(str(r['value']))}</td><td>{html.escape(r['detail'])}</td></tr>"
                   for r in rows)
    return f"<table class='keys'><tbody>{body}</tbody></table>"


def _by_group(rows: list[dict]) -> str:
    groups: dict[str, int] = {}
    for r in rows:
        groups[r["class_name"]] = groups.get(r["class_name"], 0) + 1
    return ", ".join(f"{g} {n}" for g, n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])))


def perch_coverage_html(memo: Memo) -> str:
    """How Perch's logits reach the taxonomy (``perch_class_map``): counts by taxon group, then every class
    with no Perch logit (a zero-shot head gives them the prior; a trained head on the embedding can still learn
    them) and every genus proxy with the Perch classes it takes the maximum of."""
    rows = _rows(memo, "perch_map")
    if not rows:
        return note(memo, "perch_map") or "<p class='none'>the perch_class_map table is empty</p>"
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(r["class_name"], {"taxon group": r["class_name"], "classes": 0, "exact": 0,
                                                "genus proxy": 0, "none": 0})
        g["classes"] += 1
        g[{"exact": "exact", "genus": "genus proxy"}.get(r["match"], "none")] += 1
    table = sorted(groups.values(), key=lambda g: g["taxon group"])
    total = {k: sum(g[k] for g in table) for k in ("classes", "exact", "genus proxy", "none")}
    unmapped = [{k: r[k] for k in ("primary_label", "scientific_name", "class_name")} for r in rows
                if r["match"] == "none"]
    proxies = [{"primary_label": r["primary_label"], "scientific_name": r["scientific_name"],
                "class_name": r["class_name"], "perch_classes": "; ".join(r["perch_names"] or [])}
               for r in rows if r["match"] == "genus"]
    return (f"<p>{total['exact']} of {total['classes']} classes have their own Perch logit, {total['genus proxy']} "
            f"a genus proxy (the maximum over the genus's Perch species), {total['none']} none.</p>"
            + html_table([*table, {"taxon group": "all", **total}], None)
            + f"<h3>No Perch logit ({len(unmapped)})</h3>"
            + (f"<details><summary>the {len(unmapped)} classes</summary>" + html_table(unmapped, None) + "</details>"
               if unmapped else "<p>none</p>")
            + f"<h3>Genus proxies ({len(proxies)})</h3>"
            + (f"<details><summary>the {len(proxies)} classes</summary>" + html_table(proxies, None) + "</details>"
               if proxies else "<p>none</p>"))


def section_bodies(memo: Memo, names: dict[str, dict] | None = None) -> dict[str, str]:
    t = memo.tables
    out: dict[str, str] = {}
    out["key-numbers"] = key_numbers_html(memo.key_numbers)
    counts = [{"table": k, "rows": v} for k, v in sorted(memo.counts.items())]
    versions = ", ".join(f"{k} = {v or 'no folds yet'}" for k, v in memo.versions.items())
    out["inventory"] = (f"<p>Store <code>{html.escape(memo.store)}</code>, data version "
                        f"<code>{html.escape(str(memo.data_version))}</code>. Fold tables: {html.escape(versions)}.</p>"
                        + html_table(t.get("sources")) + html_table(t.get("labelled_audio")) + html_table(counts, 60))
    bars = imbalance_rows(memo.classes)
    status_counts = {s: sum(r["status"] == s for r in memo.classes) for s in (NO_DATA, RARE, MID, HEAD)}
    out["class-imbalance"] = (
        f"<p>{len(memo.classes)} classes: {status_counts[NO_DATA]} with no training data (listed in the next "
        f"section, not drawn), {status_counts[RARE]} rare (1-{RARE_EXAMPLES - 1} examples), {status_counts[MID]} with "
        f"{RARE_EXAMPLES}-{10 * RARE_EXAMPLES - 1}, {status_counts[HEAD]} with {10 * RARE_EXAMPLES} or more. An example "
        "is a focal clip (primary label) or a labelled 5-s soundscape window.</p>"
        + (img(plot_class_imbalance(bars), "class imbalance") if bars else "<p class='none'>no class has data</p>")
        + note(memo, "long_tail") + html_table(t.get("class_counts")) + note(memo, "class_counts")
        + "<h3>Rarest classes with data</h3>"
        + html_table([{k: r[k] for k in ("primary_label", "class_name", "common_name", "scientific_name", "n_clips",
                                         "n_soundscape_windows", "n_sites", "status")}
                      for r in reversed(bars)], 20))
    empty = no_training_data(memo.classes)
    out["no-training-data"] = (
        (f"<p><b>{len(empty)}</b> of {len(memo.classes)} classes have no training data: no focal clip with them as "
         f"primary label and no soundscape label ({html.escape(_by_group(empty))}). n_secondary counts focal clips "
         f"that list them as a secondary label only.</p><details open><summary>the {len(empty)} classes</summary>"
         + html_table(empty, None) + "</details>") if empty else
        ("<p>Every class has training data.</p>" if memo.classes else note(memo, "long_tail")))
    out["perch-coverage"] = perch_coverage_html(memo)
    out["durations"] = ((img(plot_durations(memo.durations), "durations") if memo.durations else "<p>no audio</p>")
                        + html_table(t.get("durations_sql"), 40) + note(memo, "durations_sql"))
    site_rows = _rows(memo, "site_hour")
    out["site-hour"] = ((img(plot_site_hour(site_rows), "site by hour") if site_rows else "")
                        + html_table(site_rows, 40) + note(memo, "site_hour"))
    out["cooccurrence"] = ((img(plot_cooccurrence(memo.cooc, names), "co-occurrence") if memo.cooc else
                            "<p class='none'>fewer than two soundscape labels</p>")
                           + "<h3>Top label pairs</h3>" + (note(memo, "pairs") or html_table(t.get("pairs"), 20)))
    out["metadata"] = ((note(memo, "missing") or html_table(t.get("missing"), 30)) + "<h3>Rating distribution</h3>"
                       + (note(memo, "ratings") or html_table(t.get("ratings"), 40)))
    qa_all = _rows(memo, "qa_all")
    out["audio-qa"] = ((img(plot_audio_qa(qa_all), "audio QA") if qa_all else "")
                       + f"<p>Outliers: clipping >= {QA_CLIPPED:g} of samples at full scale, >= {QA_SILENT:.0%} "
                         f"silent 50-ms frames, or SNR proxy < {QA_LOW_SNR_DB:g} dB.</p>" + html_table(t.get("qa"), 30))
    leak_parts = []
    for key, title in (("duplicates", "Identical audio (PCM sha256)"), ("dup_folds", "Identical audio across folds"),
                       ("sessions", "Same author + place across folds (no date in train.csv)"),
                       ("scape_leaks", "Soundscape files feeding several folds")):
        leak_parts.append(f"<h3>{html.escape(title)}</h3>" + (note(memo, key) or html_table(t.get(key), 20)))
    out["leakage"] = "".join(leak_parts)
    nd = memo.near_duplicates
    out["near-duplicates"] = note(memo, "near_duplicates") + (
        html_table([{"file_a": a, "file_b": b, "cosine": s, "folds": f} for a, b, s, f in nd], 30)
        if nd is not None else "")
    audit = _rows(memo, "fold_audit")
    coverage = _rows(memo, "coverage")
    out["folds"] = ((img(plot_folds(audit), "folds") if audit else "") + note(memo, "fold_audit")
                    + (html_table(audit, 20) if audit else "")
                    + "<h3>Class coverage (fewest folds first)</h3>"
                    + (note(memo, "coverage") or html_table([r for r in coverage if r["n_files"]], 25)))
    out["risks"] = "<ol>" + "".join(f"<li>{html.escape(r)}</li>" for r in memo.risks) + "</ol>"
    return out


def render_html(memo: Memo, names: dict[str, dict] | None = None) -> str:
    bodies = section_bodies(memo, names)
    return render_page("Data memo", "python -m pipelines.report",
                       [(sid, title, bodies[sid]) for sid, title in SECTIONS], toc_from=1)


def write_memo(store_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the data memo of the store at ``store_dir`` to ``out_path`` (atomically; its folder must exist,
    checked before any work); returns the path."""
    check_out(out_path)
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        memo = gather(store)
        names = taxonomy_names(store)
    return write_page(out_path, render_html(memo, names))
