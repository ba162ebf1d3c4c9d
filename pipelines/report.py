"""``python -m pipelines.report``: the data memo - one self-contained HTML page about a feature store.

Sections: inventory, class imbalance, clip durations, site x hour, label co-occurrence, metadata,
audio QA outliers, leakage (exact and near duplicates, sessions and soundscape files across folds),
the fold audit and a short risk list. Plots are PNGs embedded as base64 (matplotlib, Agg backend,
imported only when a page is rendered). Most numbers come from the SQL files in sql/eda and
sql/leakage, so every table in the memo can be re-run in the DuckDB CLI.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from featurestore.folds import stored_version
from featurestore.ingest import latest_data_version
from featurestore.near_duplicates import NEAR_DUPLICATE_COSINE, load_file_embeddings, near_duplicate_pairs
from featurestore.sqlfiles import run_sql_file
from featurestore.store import FeatureStore, StoreError
from pipelines._cli import parser, run_main

SECTIONS = (
    ("inventory", "Inventory"), ("class-imbalance", "Class imbalance"), ("durations", "Clip durations"),
    ("site-hour", "Labels by site and hour"), ("cooccurrence", "Label co-occurrence"),
    ("metadata", "Metadata missingness and ratings"), ("audio-qa", "Audio QA outliers"),
    ("leakage", "Leakage findings"), ("near-duplicates", "Near-duplicate recordings"),
    ("folds", "Fold audit"), ("risks", "Risks"),
)
QA_CLIPPED = 0.001      # share of samples at full scale
QA_SILENT = 0.5         # share of 50-ms frames below -60 dBFS
QA_LOW_SNR_DB = 6.0     # 95th - 10th percentile frame level
TOP_COOCCURRENCE_LABELS = 20


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
    cooc: tuple[list[str], np.ndarray] | None = None
    near_duplicates: list[tuple[str, str, float, str]] | None = None
    risks: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- gathering
def try_sql(store: FeatureStore, memo: Memo, key: str, name: str) -> pa.Table | None:
    """Run a named SQL file into ``memo.tables[key]``; a missing table becomes a note, not a crash."""
    try:
        memo.tables[key] = run_sql_file(store, name)
        return memo.tables[key]
    except Exception as exc:  # duckdb CatalogException & co: the stage that writes the table has not run
        memo.notes[key] = f"skipped {name}.sql: {str(exc).splitlines()[0]}"
        return None


def gather(store: FeatureStore) -> Memo:
    memo = Memo(store=str(store.root), data_version=latest_data_version(store))
    memo.counts = {name: store.count(name) for name in store.table_names()}
    memo.versions = {name: stored_version(store, name) for name in ("folds", "shadow_folds", "replay_windows")}
    if store.has_table("windows"):
        memo.tables["sources"] = store.sql(
            "SELECT source, count(DISTINCT filename) AS n_files, count(*) AS n_windows, "
            "round(sum(audio_end_s - start_s) / 3600, 2) AS hours FROM windows GROUP BY 1 ORDER BY 1")
    if store.has_table("soundscape_labels"):
        audio = "(SELECT DISTINCT filename FROM windows WHERE source = 'train_soundscapes')"
        memo.tables["labelled_audio"] = store.sql(
            f"SELECT count(DISTINCT filename) AS labelled_files, "
            f"count(DISTINCT filename) FILTER (WHERE filename IN {audio}) AS with_audio, "
            f"count(*) AS labelled_segments FROM soundscape_labels")
    for key, name in (("long_tail", "eda/long_tail"), ("class_counts", "eda/class_counts"),
                      ("durations_sql", "eda/clip_durations"), ("site_hour", "eda/labels_per_site_hour"),
                      ("pairs", "eda/label_cooccurrence"), ("missing", "eda/metadata_missingness"),
                      ("ratings", "eda/rating_distribution"), ("duplicates", "leakage/duplicate_audio"),
                      ("dup_folds", "leakage/duplicate_audio_across_folds"),
                      ("sessions", "leakage/author_place_across_folds"),
                      ("scape_leaks", "leakage/soundscape_file_leaks"), ("fold_audit", "leakage/fold_audit"),
                      ("coverage", "leakage/fold_class_coverage")):
        try_sql(store, memo, key, name)
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
    memo.cooc = cooccurrence_matrix(store)
    gather_near_duplicates(store, memo)
    memo.risks = risk_list(memo)
    return memo


def cooccurrence_matrix(store: FeatureStore) -> tuple[list[str], np.ndarray] | None:
    """Co-occurrence counts of the most frequent soundscape labels (diagonal = label frequency)."""
    if not store.has_table("soundscape_labels"):
        return None
    segments = [set(r[0]) for r in store.rows("SELECT labels FROM soundscape_labels") if r[0]]
    freq: dict[str, int] = {}
    for seg in segments:
        for label in seg:
            freq[label] = freq.get(label, 0) + 1
    top = sorted(freq, key=lambda lab: (-freq[lab], lab))[:TOP_COOCCURRENCE_LABELS]
    if len(top) < 2:
        return None
    index = {lab: i for i, lab in enumerate(top)}
    y = np.zeros((len(segments), len(top)))
    for r, seg in enumerate(segments):
        for label in seg & index.keys():
            y[r, index[label]] = 1
    return top, y.T @ y


def gather_near_duplicates(store: FeatureStore, memo: Memo) -> None:
    loaded = load_file_embeddings(store)
    if isinstance(loaded, str):
        memo.notes["near_duplicates"] = f"near-duplicate check skipped: {loaded}"
        return
    files, vectors = loaded
    fold_of = {}
    if store.has_table("folds"):
        fold_of = dict(store.rows("SELECT source || '/' || filename, min(fold) FROM folds GROUP BY 1"))
    pairs = near_duplicate_pairs(files, vectors, NEAR_DUPLICATE_COSINE)
    memo.near_duplicates = [(a, b, s, "different folds" if fold_of.get(a) != fold_of.get(b) else "same fold")
                            for a, b, s in pairs]
    memo.notes["near_duplicates"] = (f"{len(files)} files compared (mean BirdNET embedding per file, cosine >= "
                                     f"{NEAR_DUPLICATE_COSINE})")


def _rows(memo: Memo, key: str) -> list[dict]:
    table = memo.tables.get(key)
    return table.to_pylist() if table is not None else []


def risk_list(memo: Memo) -> list[str]:
    """Short, data-driven risks to keep in mind before tuning."""
    risks = []
    sites = {r["site"]: r["n_segments"] for r in _rows(memo, "site_hour")}
    per_site: dict[str, int] = {}
    for r in _rows(memo, "site_hour"):
        per_site[r["site"]] = per_site.get(r["site"], 0) + r["n_segments"]
    total = sum(per_site.values())
    if total and sites:
        site, n = max(per_site.items(), key=lambda kv: kv[1])
        if n / total > 0.4:
            risks.append(f"Site {site} holds {n / total:.0%} of the labelled soundscape segments: the fold that holds "
                         f"it dominates the soundscape score; read per-site slices and fold mean +/- std, not one number.")
    tail = _rows(memo, "long_tail")
    if tail:
        none = sum(r["no_training_data"] for r in tail)
        rare = sum(r["bucket"] == "rare" for r in tail)
        if none:
            risks.append(f"{none} of {len(tail)} classes have no focal clip and no soundscape label: the model can "
                         "only score them from priors; they are dropped from the metric until a positive appears.")
        risks.append(f"{rare} classes are rare (< 10 focal clips): their AUC is noisy; use the file bootstrap CI and "
                     "padded cmAP before trusting a rare-class gain.")
    single = [r for r in _rows(memo, "coverage") if r["cannot_validate"]]
    if single:
        risks.append(f"{len(single)} classes live in a single group (one site or one recordist+place): they can "
                     "never be trained and validated in different folds; their OOF AUC measures nothing.")
    la = _rows(memo, "labelled_audio")
    if la and la[0]["labelled_files"] and la[0]["with_audio"] < la[0]["labelled_files"]:
        risks.append(f"Only {la[0]['with_audio']} of {la[0]['labelled_files']} labelled soundscape files have audio "
                     "in this store; the folds still cover their segments, but no features exist for the rest.")
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
    if memo.versions.get("folds") is None:
        risks.append("No folds yet: run python -m pipelines.folds before any training or tuning.")
    return risks


# ---------------------------------------------------------------------------- plots (matplotlib only here)
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """Render a figure to a base64 PNG string and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_class_imbalance(tail: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    groups = sorted({r["class_name"] for r in tail})
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    x = np.arange(len(tail))
    ax.bar(x, [r["n_clips"] + 0.5 for r in tail], width=1.0, color=[colors[r["class_name"]] for r in tail])
    scape = np.array([r["n_soundscape_segments"] for r in tail], dtype=float)
    if scape.any():
        ax.plot(x[scape > 0], scape[scape > 0] + 0.5, ".", color="black", ms=3, label="soundscape segments")
    ax.set_yscale("log")
    ax.set_xlabel(f"class rank by focal clips ({len(tail)} classes)")
    ax.set_ylabel("count + 0.5 (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[g]) for g in groups]
    ax.legend(handles + ax.get_legend_handles_labels()[0], groups + ax.get_legend_handles_labels()[1],
              fontsize=8, ncol=4, loc="upper right")
    ax.set_title("Focal clips per class (bars) and labelled soundscape segments (dots)")
    return png(fig)


def plot_durations(durations: dict[str, np.ndarray]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3))
    top = max((float(v.max()) for v in durations.values() if v.size), default=60.0)
    bins = np.linspace(0, max(5.0, min(top, 180.0)), 37)
    for source, values in sorted(durations.items()):
        ax.hist(np.clip(values, 0, bins[-1]), bins=bins, alpha=0.6, label=f"{source} ({values.size})")
    ax.set_xlabel("duration (s); longer clips in the last bin")
    ax.set_ylabel("files")
    ax.legend(fontsize=8)
    ax.set_title("Decoded audio durations")
    return png(fig)


def plot_site_hour(rows: list[dict]) -> str:
    plt = _plt()
    sites = sorted({r["site"] for r in rows})
    grid = np.zeros((len(sites), 24))
    for r in rows:
        grid[sites.index(r["site"]), int(r["hour"])] += r["n_segments"]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(sites) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("hour of day (UTC, from the file name)")
    fig.colorbar(im, ax=ax, label="labelled segments")
    ax.set_title("Labelled soundscape segments by site and hour")
    return png(fig)


def plot_cooccurrence(labels: list[str], matrix: np.ndarray) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(np.log1p(matrix), cmap="magma")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="log(1 + segments together)")
    ax.set_title(f"Co-occurrence of the {len(labels)} most frequent soundscape labels")
    return png(fig)


def plot_audio_qa(rows: list[dict]) -> str:
    plt = _plt()
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
    plt = _plt()
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
def html_table(table: pa.Table | list[dict] | None, max_rows: int = 25) -> str:
    rows = table.to_pylist() if isinstance(table, pa.Table) else list(table or [])
    if not rows:
        return "<p class='none'>no rows</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
                   for r in rows[:max_rows])
    more = f"<p class='more'>... {len(rows) - max_rows} more rows</p>" if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        text = ", ".join(_fmt(v) for v in value[:8])
        return text + (f", ... ({len(value)})" if len(value) > 8 else "")
    return str(value)


def img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def note(memo: Memo, key: str) -> str:
    return f"<p class='note'>{html.escape(memo.notes[key])}</p>" if key in memo.notes else ""


def section_bodies(memo: Memo) -> dict[str, str]:
    t = memo.tables
    out: dict[str, str] = {}
    counts = [{"table": k, "rows": v} for k, v in sorted(memo.counts.items())]
    versions = ", ".join(f"{k} = {v or 'not made'}" for k, v in memo.versions.items())
    out["inventory"] = (f"<p>Store <code>{html.escape(memo.store)}</code>, data version "
                        f"<code>{html.escape(str(memo.data_version))}</code>. Fold tables: {html.escape(versions)}.</p>"
                        + html_table(t.get("sources")) + html_table(t.get("labelled_audio")) + html_table(counts, 60))
    tail = _rows(memo, "long_tail")
    out["class-imbalance"] = ((img(plot_class_imbalance(tail), "class imbalance") if tail else "")
                              + html_table(t.get("class_counts")) + note(memo, "long_tail")
                              + "<h3>Rarest classes with data</h3>"
                              + html_table([r for r in reversed(tail) if not r["no_training_data"]], 15))
    out["durations"] = ((img(plot_durations(memo.durations), "durations") if memo.durations else "<p>no audio</p>")
                        + html_table(t.get("durations_sql"), 40))
    site_rows = _rows(memo, "site_hour")
    out["site-hour"] = ((img(plot_site_hour(site_rows), "site by hour") if site_rows else "")
                        + html_table(site_rows, 40) + note(memo, "site_hour"))
    out["cooccurrence"] = ((img(plot_cooccurrence(*memo.cooc), "co-occurrence") if memo.cooc else "")
                           + "<h3>Top label pairs</h3>" + html_table(t.get("pairs"), 20))
    out["metadata"] = (html_table(t.get("missing"), 30) + "<h3>Rating distribution</h3>"
                       + html_table(t.get("ratings"), 40))
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
                    + html_table(audit, 20)
                    + "<h3>Class coverage (fewest folds first)</h3>"
                    + html_table([r for r in coverage if r["n_files"]], 25))
    out["risks"] = "<ol>" + "".join(f"<li>{html.escape(r)}</li>" for r in memo.risks) + "</ol>"
    return out


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}.note{color:#a55}.none,.more{color:#777;font-size:12px}
section{border-top:2px solid #ddd;margin-top:1.5em}"""


def render_html(memo: Memo) -> str:
    bodies = section_bodies(memo)
    toc = "".join(f"<li><a href='#{sid}'>{html.escape(title)}</a></li>" for sid, title in SECTIONS)
    sections = "".join(f"<section id='{sid}'><h2>{html.escape(title)}</h2>{bodies[sid]}</section>"
                       for sid, title in SECTIONS)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>birdclef-stack data memo</title>"
            f"<style>{CSS}</style></head><body><h1>Data memo</h1><p>Generated {stamp} by "
            f"<code>python -m pipelines.report</code>.</p><ol>{toc}</ol>{sections}</body></html>")


def write_report(store_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the data memo of the store at ``store_dir`` to ``out_path`` (atomically); returns the path."""
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        memo = gather(store)
    page = render_html(memo)
    out = Path(out_path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser("report", __doc__)
    ap.epilog = "Example:\n  python -m pipelines.folds --store work/store\n  python -m pipelines.report --store work/store --out memo.html"
    ap.add_argument("--store", required=True, help="feature store folder")
    ap.add_argument("--out", default="memo.html", help="HTML file to write (default memo.html)")
    args = ap.parse_args(argv)
    if not (Path(args.store) / "catalog.duckdb").exists():
        raise StoreError(f"no feature store at {args.store}; run pipelines.ingest first")
    path = write_report(args.store, args.out)
    print(f"data memo written to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    run_main(main)
