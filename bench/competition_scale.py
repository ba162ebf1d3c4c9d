"""The dress rehearsal: every stage of the README run on a store the size of BirdCLEF+ 2026.

``python bench/competition_scale.py [--scale 1.0] [--out DIR] [--stages …]`` builds, through the store's own
writers, a store of the competition's shape and runs every stage on it as a user would (each stage is the
``python -m pipelines.<job>`` command of the README, in its own process), then prints one table: stage,
seconds, peak RSS, disk written and the goal. ``--scale 0.05`` runs the same in a few minutes.

The store (stage ``store``):

* **real competition files** from ``../shared/data/bc2026``: the full taxonomy (234 classes), the real
  soundscape label file (its 66 files, their sites and dates, the 739 labelled windows with their real
  multi-labels) and the sample submission;
* **synthetic focal clips**: ``35,549 x scale`` rows of ``train.csv`` with a long-tailed count per class
  (falling geometrically with rank: the commonest ~1,000 clips, the rarest 1), 1-24 windows each (mean ~5.6, so
  ~200k windows at scale 1), 10% with a secondary label;
* **synthetic unlabelled soundscapes**: ``10,658 x scale`` files in all (the 66 labelled ones included),
  named like the real ones at the real sites, 12 windows each; each site hears a few classes;
* ``audio_inventory`` rows for those files stand for the audio pass (``run_ingest(inventory_rows=…)``:
  every table ingest writes is written by ingest itself, no audio is decoded);
* features with class signal (a class's random direction plus unit noise; weaker in soundscapes, the
  domain shift) stored as the embed job stores them (:func:`embed.job.frame_rows` /
  :func:`embed.job.window_rows`, one part per 200 files) under the **real** BirdNET V2.4 (3 frames x 1,024
  float16 + matched logits) and classical extractor versions, so the exported bundle runs the real
  extractors on real audio.

Then: folds, the data memo, linear and LightGBM heads (234 classes, ``birdnet,classical``), a ridge stack,
pseudo-labels with each teacher, one self-training round, distillation, the error page, the leaderboard,
export of the 234-class stack, ``pipelines.plan`` on real audio (the shared focal clips and field
recording) and ``pipelines.dryrun`` of the bundle offline on the same audio.

Measured per stage: wall seconds; peak RSS (the largest of the stage process's own high-water mark and
the summed RSS of its process tree sampled every 0.5 s); disk written (allocated bytes under ``--out``,
after minus before). Progress every 30 s. Each stage's output is in ``<out>/logs/<stage>.log``; results
and head ids in ``<out>/rehearsal.json``, so ``--stages`` re-runs some stages on the same store (a stage
whose inputs are missing says which stage to run first). Goals are the issue's, at scale 1.0 on 2 cores /
24 GB; at other scales they are printed but not judged.

Usage:
  python bench/competition_scale.py --scale 0.05 --out /tmp/rehearsal
  python bench/competition_scale.py --scale 1.0 --out /data/rehearsal --stages store,folds,memo,linear
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
BC2026 = SHARED / "bc2026"
FIELD = SHARED / "field"

FOCAL_CLIPS = 35_549
SOUNDSCAPE_FILES = 10_658
SOUNDSCAPE_WINDOWS = 12
FILES_PER_PART = 200
GB = 1024 ** 3

# stage -> (goal in seconds or None, goal text); the goals at scale 1.0 on 2 cores / 24 GB
RSS_GOAL_GB = 8.0
GOALS: dict[str, tuple[float | None, str]] = {
    "store": (180, "<= 3 min"),
    "folds": (None, "folds + memo <= 2 min"),
    "memo": (None, "folds + memo <= 2 min"),
    "linear": (120, "<= 2 min"),
    "lgbm": (1200, "<= 20 min"),
    "stack": (60, "<= 1 min"),
    "pseudo-linear": (120, "<= 2 min"),
    "pseudo-lgbm": (120, "<= 2 min"),
    "export": (120, "<= 2 min"),
}
PREREQUISITES = ("store", "linear", "lgbm", "stack", "export")   # a failure of these stops the run
GROUP_GOALS = {("folds", "memo"): 120}
KAGGLE_GOAL_MIN = 10.0

STAGES = ("store", "folds", "memo", "linear", "lgbm", "stack", "pseudo-linear", "pseudo-lgbm", "selftrain",
          "distill", "errors", "leaderboard", "export", "plan", "dryrun")


# ---------------------------------------------------------------------------- the synthetic competition
def long_tail_counts(total: int, n: int) -> np.ndarray:
    """``n`` counts summing to ``total``, falling geometrically with rank from the commonest class (~1,000
    clips at the full 35,549, like the head of the real train.csv) to exactly 1 for the rarest."""
    if total < n:
        raise SystemExit(f"--scale too small: {total} focal clips for {n} classes (each class needs one)")
    x = np.arange(n) / max(n - 1, 1)

    def counts(top: float) -> np.ndarray:
        return np.floor(top ** (1 - x)).astype(np.int64)

    lo, hi = 1.0, float(total)
    for _ in range(100):                       # the largest top whose curve fits in total
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() <= total else (lo, mid)
    out = counts(lo)
    out[0] += total - out.sum()                # what the floors left over goes to the commonest class
    return out


@dataclass
class Competition:
    """What the synthetic data is: per file its windows' true classes (the features' signal)."""

    classes: list[str]
    inventory: list[dict] = field(default_factory=list)
    focal_labels: dict[str, list[str]] = field(default_factory=dict)   # filename -> primary + secondary
    site_classes: dict[str, list[str]] = field(default_factory=dict)


def _inventory_row(source: str, filename: str, duration: float, i: int) -> dict:
    return {"path": f"{source}/{filename}", "source": source, "filename": filename,
            "size_bytes": int(duration * 16_000), "mtime_ns": 1_700_000_000_000_000_000 + i,
            "sha256_bytes": f"{i:064x}", "sha256_pcm": f"{i:064x}", "format": "OGG", "subtype": "VORBIS",
            "sample_rate": 32_000, "channels": 1, "frames": int(duration * 32_000), "duration_s": duration,
            "peak": 0.5, "rms_dbfs": -30.0, "clipped_fraction": 0.0, "silent_frame_fraction": 0.0,
            "snr_db": 20.0, "error": None, "warning": None}


def write_data(data: Path, scale: float, seed: int) -> Competition:
    """The competition folder's CSVs (real taxonomy, labels, sample submission; synthetic train.csv) and
    the inventory rows of the synthetic audio."""
    rng = np.random.default_rng(seed)
    data.mkdir(parents=True, exist_ok=True)
    for name in ("taxonomy.csv", "train_soundscapes_labels.csv", "sample_submission.csv"):
        shutil.copyfile(BC2026 / name, data / name)
    with open(BC2026 / "taxonomy.csv", newline="") as fh:
        taxonomy = list(csv.DictReader(fh))
    classes = [r["primary_label"] for r in taxonomy]
    comp = Competition(classes)
    order = rng.permutation(len(classes))                       # which classes are common: random
    counts = long_tail_counts(round(FOCAL_CLIPS * scale), len(classes))
    fields = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
              "common_name", "class_name", "inat_taxon_id", "author", "license", "rating", "url", "filename",
              "collection"]
    i = 0
    with open(data / "train.csv", "w", newline="") as fh:
        out = csv.DictWriter(fh, fields)
        out.writeheader()
        for rank, c in enumerate(order):
            row = taxonomy[c]
            for _ in range(int(counts[rank])):
                label = row["primary_label"]
                secondary = [classes[int(rng.integers(len(classes)))]] if rng.random() < 0.1 else []
                secondary = [s for s in secondary if s != label]
                filename = f"{label}/synth{i:06d}.ogg"
                windows = int(min(24, 1 + rng.geometric(1 / 4.6)))
                duration = round(windows * 5.0 - float(rng.uniform(0, 3.5)), 3)
                out.writerow({"primary_label": label, "secondary_labels": str(secondary), "type": "['song']",
                              "latitude": f"{-16 - rng.random() * 4:.4f}", "longitude": f"{-56 - rng.random() * 2:.4f}",
                              "scientific_name": row["scientific_name"], "common_name": row["common_name"],
                              "class_name": row["class_name"], "inat_taxon_id": row["inat_taxon_id"],
                              "author": "rehearsal", "license": "cc0", "rating": "4.0", "url": "",
                              "filename": filename, "collection": "XC"})
                comp.inventory.append(_inventory_row("train_audio", filename, duration, i))
                comp.focal_labels[filename] = [label, *secondary]
                i += 1
    with open(BC2026 / "train_soundscapes_labels.csv", newline="") as fh:
        labelled = sorted({r["filename"] for r in csv.DictReader(fh)})
    sites = sorted({f.split("_")[3] for f in labelled} | {f"S{k:02d}" for k in range(1, 26)})
    for site in sites:                                      # what each site hears (the unlabelled windows' truth)
        comp.site_classes[site] = [classes[int(c)] for c in rng.choice(len(classes), 12, replace=False)]
    for f in labelled:
        comp.inventory.append(_inventory_row("train_soundscapes", f, 60.0, i))
        i += 1
    numbers = {int(f.split("_")[2]) for f in labelled}
    n_new, number = max(0, round(SOUNDSCAPE_FILES * scale) - len(labelled)), 0
    for _ in range(n_new):
        number += 1
        while number in numbers:
            number += 1
        site = sites[int(rng.integers(len(sites)))]
        day = 20240101 + int(rng.integers(0, 28)) + 100 * int(rng.integers(0, 12))
        hhmmss = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 6)) * 10:02d}00"
        f = f"BC2026_Train_{number:04d}_{site}_{day}_{hhmmss}.ogg"
        comp.inventory.append(_inventory_row("train_soundscapes", f, 60.0, i))
        i += 1
    return comp


def window_truth(comp: Competition, windows: pa.Table, stored_labels: dict[str, list[str]],
                 rng: np.random.Generator) -> list[list[str]]:
    """Each window's true classes: stored labels where there are any (focal primary + secondary; the real
    soundscape labels), else 0-3 of its site's classes."""
    truth = []
    for wid, source, filename in zip(windows.column("window_id").to_pylist(), windows.column("source").to_pylist(),
                                     windows.column("filename").to_pylist(), strict=True):
        if wid in stored_labels:
            truth.append(stored_labels[wid])
        elif source == "train_audio":
            truth.append(comp.focal_labels.get(filename, []))
        else:
            heard = comp.site_classes[filename.split("_")[3]]
            k = int(rng.integers(0, 4))
            truth.append([heard[int(j)] for j in rng.choice(len(heard), k, replace=False)])
    return truth


def write_store(out: Path, scale: float, seed: int, say) -> dict:
    """The ``store`` stage: ingest (CSV + inventory rows) and the BirdNET + classical features."""
    from embed.job import recreate_command, version_row
    from embed.registry import PART_TABLES, VERSIONS_TABLE, build
    from featurestore.ingest import run_ingest
    from featurestore.store import FeatureStore, utc_now
    from featurestore.windows import WINDOW_LABEL_PARTS, window_labels_sql
    from featurestore.workers import worker_pool

    data, store_dir = out / "data", out / "store"
    t0 = time.perf_counter()
    comp = write_data(data, scale, seed)
    summary = run_ingest(data, store_dir, inventory_rows=comp.inventory, batch_size=10_000)
    say(f"ingested {len(comp.inventory):,} files ({time.perf_counter() - t0:.0f} s): "
        + ", ".join(f"{k} {v:,}" for k, v in summary.counts.items()))
    rng = np.random.default_rng([seed, 7])
    with FeatureStore.open(store_dir, create=False) as store:
        taxonomy = store.sql("SELECT * FROM taxonomy ORDER BY class_index")
        classes = taxonomy.column("primary_label").to_pylist()
        windows = store.sql("SELECT window_id, source, filename, start_s FROM windows ORDER BY window_id")
        query = window_labels_sql([t for t in WINDOW_LABEL_PARTS if store.has_table(t)])
        stored = {w: list(ls) for w, _, ls in store.rows(query)}
        birdnet, classical = build("birdnet", taxonomy), build("classical", taxonomy)
        for name, keys in PART_TABLES.items():
            store.register_part_table(name, keys, recreate=recreate_command(name))
        for ex in (birdnet, classical):
            store.append_part(VERSIONS_TABLE, version_row(ex))
            for name, (table, params) in ex.side_tables().items():
                store.write_table(name, table, params=params)
        truth = window_truth(comp, windows, stored, rng)
        index = {c: k for k, c in enumerate(classes)}
        ids = windows.column("window_id").to_pylist()
        files = windows.column("filename").to_pylist()
        sources = windows.column("source").to_pylist()
        starts = windows.column("start_s").to_pylist()
        bounds = [0] + [k for k in range(1, len(ids)) if files[k] != files[k - 1]] + [len(ids)]
        tasks = []
        for t, b in enumerate(range(0, len(bounds) - 1, FILES_PER_PART)):
            lo, hi = bounds[b], bounds[min(b + FILES_PER_PART, len(bounds) - 1)]
            tasks.append((t, ids[lo:hi], [s == "train_audio" for s in sources[lo:hi]], starts[lo:hi],
                          [[index[c] for c in labels if c in index] for labels in truth[lo:hi]]))
        spec = (str(store.root / "parts"), [taxonomy_file(out)], len(classes), seed, str(utc_now()))
    # the features are written as the embed job's workers write them: parts straight to parts/<table>/,
    # no catalog, the parent registers them once (two processes: Parquet encoding of 1,024 float16 per frame
    # is ~0.3 ms a frame, the stage's largest cost)
    n_done, last = 0, time.perf_counter()
    with worker_pool(WORKERS, _init_features, spec) as pool:
        for n in pool.imap_unordered(_feature_task, tasks):
            n_done += n
            if time.perf_counter() - last > 30:
                say(f"features: {n_done:,} / {len(ids):,} windows ({time.perf_counter() - t0:.0f} s)")
                last = time.perf_counter()
    with FeatureStore.open(store_dir, create=False) as store:
        store.refresh_part_views()
    return {"windows": len(ids), "frame_rows": len(ids) * FRAMES, "files": len(comp.inventory),
            "focal_clips": len(comp.focal_labels), "classes": len(classes)}


_FEATURES: dict = {}
FRAMES, DIM = 3, 1024
WORKERS = 2


def taxonomy_file(out: Path) -> str:
    return str(out / "data" / "taxonomy.csv")


def _init_features(parts_root: str, taxonomy_csv: list[str], n_classes: int, seed: int, written_at: str) -> None:
    """Worker set-up: the real extractors (their versions, logit labels, feature names) and the class directions."""
    from datetime import datetime

    from embed.registry import build
    from featurestore.competition import read_taxonomy

    taxonomy = read_taxonomy(Path(taxonomy_csv[0]))
    birdnet, classical = build("birdnet", taxonomy), build("classical", taxonomy)
    classes = taxonomy.column("primary_label").to_pylist()
    index = {c: k for k, c in enumerate(classes)}
    rng = np.random.default_rng([seed, 11])
    emb_dirs = rng.standard_normal((n_classes, DIM)).astype(np.float32)
    emb_dirs *= 1.5 / np.linalg.norm(emb_dirs, axis=1, keepdims=True)
    n_features = len(classical.feature_names())
    cls_dirs = rng.standard_normal((n_classes, n_features)).astype(np.float32)
    cls_dirs *= 2.0 / np.linalg.norm(cls_dirs, axis=1, keepdims=True)
    _FEATURES.update(parts_root=Path(parts_root), birdnet=birdnet, classical=classical, seed=seed,
                     emb_dirs=emb_dirs, cls_dirs=cls_dirs, written_at=datetime.fromisoformat(written_at),
                     logit_cols=[index.get(label) for label in birdnet.logit_labels()])


def _feature_task(task: tuple) -> int:
    """One part of each table: ``task`` = (number, window ids, focal?, starts, true class indices)."""
    from embed.audio import FrameGrid
    from embed.extractors import FrameOutput, WindowOutput
    from embed.job import frame_rows, part_path, window_rows
    from featurestore.store import write_parquet_atomic

    number, ids, focal, starts, labels = task
    f = _FEATURES
    rng = np.random.default_rng([f["seed"], 13, number])
    n = len(ids)
    Y = np.zeros((n, len(f["emb_dirs"])), np.float32)
    for k, cols in enumerate(labels):
        Y[k, cols] = 1.0
    gain = np.where(np.asarray(focal), 1.0, 0.6).astype(np.float32)[:, None]   # soundscapes: the domain shift
    emb = np.repeat((Y @ f["emb_dirs"]) * gain, FRAMES, axis=0) + rng.standard_normal((n * FRAMES, DIM),
                                                                                        dtype=np.float32)
    logits = np.full((n * FRAMES, len(f["logit_cols"])), -6.0, np.float32)
    for j, c in enumerate(f["logit_cols"]):
        if c is not None:
            logits[:, j] += np.repeat(6.0 * Y[:, c] * gain[:, 0], FRAMES)
    logits += rng.standard_normal(logits.shape, dtype=np.float32)
    grid = FrameGrid(np.repeat(np.arange(n, dtype=np.int32), FRAMES), np.tile(np.arange(FRAMES, dtype=np.int16), n),
                     (np.asarray(starts, np.float64)[:, None] + np.arange(FRAMES)[None, :] * 1.5).ravel(),
                     np.zeros(n * FRAMES, np.int64), np.ones(n * FRAMES, np.float32))
    birdnet, classical = f["birdnet"], f["classical"]
    write_parquet_atomic(frame_rows(birdnet, FrameOutput(grid, emb, logits), ids, f["written_at"]),
                         part_path(f["parts_root"], birdnet.table))
    feats = (Y @ f["cls_dirs"]) * gain + rng.standard_normal((n, len(f["cls_dirs"][0])), dtype=np.float32)
    write_parquet_atomic(window_rows(classical, WindowOutput(feats, np.ones(n, np.float32)), ids, f["written_at"]),
                         part_path(f["parts_root"], classical.table))
    return n


# ---------------------------------------------------------------------------- running stages
@dataclass
class Result:
    stage: str
    seconds: float
    peak_rss: int
    disk: int
    rc: int
    note: str = ""


def allocated_bytes(path: Path) -> int:
    total = 0
    for base, _dirs, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):     # removed while walking
                total += os.lstat(os.path.join(base, n)).st_blocks * 512
    return total


def _tree_rss(pid: int) -> int:
    """Summed RSS of ``pid`` and its descendants (from /proc; shared pages counted once per process)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_stage(name: str, command: list[str], out: Path, say) -> Result:
    """Run one stage's command in its own process; measure wall time, peak RSS and disk written."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    before = allocated_bytes(out)
    say(f"[{name}] {' '.join(command)}  (log: {log})")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    peak_tree, last = 0, t0
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            if time.perf_counter() - last >= 30:
                tail = _last_line(log)
                say(f"[{name}] running {time.perf_counter() - t0:.0f} s, RSS {peak_tree / GB:.2f} GB"
                    + (f": {tail}" if tail else ""))
                last = time.perf_counter()
            time.sleep(0.5)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(peak_tree, usage.ru_maxrss * 1024)
    result = Result(name, seconds, peak, allocated_bytes(out) - before, proc.returncode)
    if proc.returncode == -9:
        result.note = "FAILED: killed by SIGKILL (the OS's out-of-memory killer, see dmesg)"
    elif proc.returncode != 0:
        result.note = f"FAILED (exit {proc.returncode}): {_last_line(log)}"
    say(f"[{name}] {'done' if proc.returncode == 0 else 'FAILED'} in {seconds:.1f} s, peak RSS {peak / GB:.2f} GB")
    return result


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


def newest_head(store: Path, kind: str, tag: str | None = None) -> str:
    from featurestore.store import FeatureStore

    with FeatureStore.open(store, read_only=True, create=False) as fs:
        query = "SELECT head_id FROM experiments WHERE head = ?" + (" AND tag = ?" if tag else "")
        row = fs.first(query + " ORDER BY created_at DESC LIMIT 1", [kind, tag] if tag else [kind])
    if row is None:
        raise SystemExit(f"no {kind} head in {store}: run its stage first")
    return row[0]


def real_audio(out: Path) -> Path:
    """The shared real clips (4 focal clips, one 0.29 s long, and the field recording) in one folder, and
    a test soundscape's 60 s of 32-kHz audio made of them back to back (listed first, so the planner
    measures a file of the test's length, not only clips it must scale up)."""
    import soundfile as sf

    from embed.audio import Audio

    folder = out / "real_audio"
    folder.mkdir(parents=True, exist_ok=True)
    clips = [*sorted((BC2026 / "train_audio").rglob("*.ogg")), *sorted(FIELD.glob("*.wav"))]
    for path in clips:
        target = folder / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    joined = folder / "BC2026_Test_0000_S00_20260101_000000.ogg"
    if not joined.exists():
        rate, n = 32_000, 60 * 32_000
        parts = [np.asarray(Audio.load(p).at(rate), np.float32) for p in clips]
        signal = np.concatenate(parts * (1 + n // sum(len(x) for x in parts)))[:n]
        tmp = joined.with_suffix(".tmp.ogg")
        sf.write(tmp, signal, rate, format="OGG", subtype="VORBIS")
        tmp.replace(joined)
    return folder


def commands(stage: str, out: Path, state: dict, scale: float, seed: int) -> list[str]:
    """The command a user types for ``stage`` (head ids from the stages before it)."""
    py, store = sys.executable, str(out / "store")
    heads = state.setdefault("heads", {})

    def need(key: str, stage_name: str) -> str:
        if key not in heads:
            raise SystemExit(f"stage {stage} needs the {key} head: run --stages {stage_name} first")
        return heads[key]

    if stage == "store":
        return [py, str(Path(__file__).resolve()), "--build", "--out", str(out), "--scale", str(scale),
                "--seed", str(seed)]
    m = [py, "-m"]
    if stage == "folds":
        return [*m, "pipelines.folds", "--store", store]
    if stage == "memo":
        return [*m, "pipelines.report", "--store", store, "--out", str(out / "memo.html")]
    if stage in ("linear", "lgbm"):
        return [*m, "pipelines.train", "--store", store, "--head-kind", stage, "--features", "birdnet,classical"]
    if stage == "stack":
        return [*m, "pipelines.stack", "--store", store, "--heads",
                f"{need('linear', 'linear')},{need('lgbm', 'lgbm')}", "--method", "ridge"]
    if stage.startswith("pseudo-"):
        kind = stage.split("-", 1)[1]
        return [*m, "pipelines.pseudo", "--store", store, "--teacher", need(kind, kind)]
    if stage == "selftrain":
        return [*m, "pipelines.selftrain", "--store", store, "--teacher", need("linear", "linear"), "--rounds", "1"]
    if stage == "distill":
        return [*m, "pipelines.distill", "--store", store, "--teacher", need("stack", "stack"), "--head-kind",
                "linear", "--features", "classical"]
    if stage == "errors":
        return [*m, "pipelines.errors", "--store", store, "--head-id", need("stack", "stack"), "--out",
                str(out / "errors.html")]
    if stage == "leaderboard":
        return [*m, "pipelines.leaderboard", "--store", store]
    if stage == "export":
        shutil.rmtree(out / "bundle", ignore_errors=True)
        return [*m, "pipelines.export", "--store", store, "--head-id", need("stack", "stack"), "--out",
                str(out / "bundle")]
    if stage == "plan":
        return [*m, "pipelines.plan", "--bundle", str(out / "bundle"), "--audio", str(real_audio(out))]
    if stage == "dryrun":
        shutil.rmtree(out / "dryrun", ignore_errors=True)
        return [*m, "pipelines.dryrun", "--bundle", str(out / "bundle"), "--audio", str(real_audio(out)),
                "--work", str(out / "dryrun")]
    raise SystemExit(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")


def after(stage: str, out: Path, state: dict, result: Result) -> None:
    """Record what later stages need (head ids) and what the table shows (Kaggle minutes)."""
    store = out / "store"
    if stage in ("linear", "lgbm", "stack"):
        state["heads"][stage] = newest_head(store, stage)
    if stage in ("plan", "dryrun"):
        text = (out / "logs" / f"{stage}.log").read_text(errors="replace")
        if stage == "plan":
            block = text.split("projected for", 1)[-1]
            match = re.search(r"^\s+\S+: ([\d.]+) min", block, re.M)
        else:
            match = re.search(r"projected Kaggle minutes: ([\d.]+)", text)
        if match:
            state["kaggle_min"] = state.get("kaggle_min", {})
            state["kaggle_min"][stage] = float(match.group(1))
            result.note = f"projected Kaggle minutes {float(match.group(1)):.1f} (goal <= {KAGGLE_GOAL_MIN:.0f})"


def table(results: list[Result], scale: float, state: dict) -> str:
    judge = abs(scale - 1.0) < 1e-9
    lines = [f"rehearsal at scale {scale} ({state.get('store', {}).get('windows', '?'):,} windows; goals at scale "
             f"1.0 on 2 cores / 24 GB{'' if judge else ', not judged at this scale'})" if isinstance(
                 state.get('store', {}).get('windows'), int) else f"rehearsal at scale {scale}",
             f"{'stage':<14} {'seconds':>8} {'peak RSS':>9} {'disk':>9}  {'goal':<24} {'':<5} note",
             "-" * 100]
    by_stage = {r.stage: r for r in results}
    for r in results:
        goal_s, goal_text = GOALS.get(r.stage, (None, ""))
        verdict = ""
        if judge and r.rc == 0:
            over = (goal_s is not None and r.seconds > goal_s) or r.peak_rss > RSS_GOAL_GB * GB
            for group, limit in GROUP_GOALS.items():
                if r.stage == group[-1] and all(g in by_stage for g in group):
                    over = over or sum(by_stage[g].seconds for g in group) > limit
            kaggle = state.get("kaggle_min", {}).get(r.stage)
            over = over or (kaggle is not None and kaggle > KAGGLE_GOAL_MIN)
            verdict = "OVER" if over else "ok"
        lines.append(f"{r.stage:<14} {r.seconds:>8.1f} {r.peak_rss / GB:>7.2f}GB {r.disk / GB:>7.2f}GB  "
                     f"{goal_text:<24} {verdict:<5} {r.note}")
    total = sum(r.seconds for r in results)
    lines.append("-" * 100)
    lines.append(f"{'all':<14} {total:>8.1f} {max((r.peak_rss for r in results), default=0) / GB:>7.2f}GB "
                 f"{sum(r.disk for r in results) / GB:>7.2f}GB  every stage peak RSS <= {RSS_GOAL_GB:.0f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python bench/competition_scale.py --scale 0.05 --out /tmp/rehearsal")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the competition's size (default 1.0)")
    ap.add_argument("--out", type=Path, default=Path("work/rehearsal"), help="work folder (default work/rehearsal)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-joined subset of: {','.join(STAGES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)   # the store stage's own process
    args = ap.parse_args(argv)
    out = args.out.expanduser().resolve()

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(out / "rehearsal.log", "a") as fh:
            fh.write(line + "\n")

    out.mkdir(parents=True, exist_ok=True)
    if args.build:
        shutil.rmtree(out / "store", ignore_errors=True)
        shutil.rmtree(out / "data", ignore_errors=True)
        info = write_store(out, args.scale, args.seed, say)
        (out / "store.json").write_text(json.dumps({"scale": args.scale, "seed": args.seed, **info}))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    state_file = out / "rehearsal.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("scale") not in (None, args.scale) and "store" not in stages:
        raise SystemExit(f"{out} holds a scale-{state['scale']} store; run --stages store first or pick --out")
    state["scale"] = args.scale
    state.setdefault("heads", {})
    results: list[Result] = [Result(**r) for r in state.get("results", []) if r["stage"] not in stages]
    for stage in stages:            # in the order given (the default: the README's order)
        if stage == "store":
            state = {"scale": args.scale, "heads": {}}
            results = []
        result = run_stage(stage, commands(stage, out, state, args.scale, args.seed), out, say)
        if result.rc == 0:
            if stage == "store":
                state["store"] = json.loads((out / "store.json").read_text())
            after(stage, out, state, result)
        results = [r for r in results if r.stage != stage] + [result]
        results.sort(key=lambda r: STAGES.index(r.stage))
        state["results"] = [r.__dict__ for r in results]
        state_file.write_text(json.dumps(state, indent=1))
        if result.rc != 0:
            needed = stage in PREREQUISITES
            say(f"[{stage}] failed ({'later stages need it, stopping' if needed else 'going on'}): see "
                f"{out / 'logs' / (stage + '.log')}")
            if needed:
                break
    text = table(results, args.scale, state)
    print(text, flush=True)
    (out / "table.txt").write_text(text + "\n")
    peak = max((r.peak_rss for r in results), default=0)
    print(f"largest peak RSS {peak / GB:.2f} GB; memory limit of this machine "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GB:.0f} GB; "
          f"ru_maxrss of all stages {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2:.2f} GB")
    failed = [r.stage for r in results if r.rc != 0]
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {out / 'logs'})")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
