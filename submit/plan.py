"""The runtime planner: per-stage costs of a bundle measured on this machine, projected to the Kaggle
notebook (``python -m pipelines.plan``; the export stores the same measurement in the manifest).

Measured here, in one run, on real audio (per 60-s file, one process, one BLAS thread):

* decode (soundfile), resample to each extractor's rate, each extractor on the file's frames;
* each time-guard level's heads given a 60-s soundscape's 12 windows of the file's features
  (:func:`soundscape_views`; a stacked head: every base head), and the level's
  ``finish`` per window (the stacker + post steps over all rows; the identity for a plain head);
* loading each level's predictor (once per worker process);
* **process scaling**: the same files through a pool of 1 and of ``min(cpus here, target cpus)``
  worker processes, already started, timed in turn twice - the speed-up ``S(w)`` of the faster of each.

Scaling model (printed with the projection): a doubling of the worker count multiplies the speed-up by
``2e``, where ``e = S(2) / 2`` is the measured two-worker efficiency, so ``S(n) = n * e**log2(n)``
(``e`` is taken as 1 when only one CPU is here to measure on, and said so). Projected seconds for a
level = load + files x per-file cost / S(cpus) + windows x finish per window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featurestore.windows import WINDOW_SECONDS

SOUNDSCAPE_S = 60.0
SCALING_REPEATS = 2         # alternated timings of the 1- and n-worker pools; the faster of each counts


@dataclass
class LevelCost:
    head_id: str
    load_s: float                          # loading the predictor (per worker)
    extractors: list[str]
    heads_s: float                         # per 60-s file, given the features
    finish_per_window_s: float
    per_file_s: float = 0.0                # decode + resample + its extractors + heads, per 60-s file


@dataclass
class Costs:
    files: int
    audio_s: float                         # mean duration of the measured files
    decode_s: float                        # per 60-s file
    resample_s: dict[str, float]           # rate (Hz) -> per 60-s file
    extractor_s: dict[str, float]          # extractor -> per 60-s file (excluding resampling)
    extractor_rate: dict[str, int]
    levels: list[LevelCost]
    workers_measured: int
    speedup_measured: float                # S(workers_measured)
    notes: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        if self.workers_measured < 2:
            return 1.0
        return min(1.0, (self.speedup_measured / self.workers_measured) ** (1 / math.log2(self.workers_measured)))

    def speedup(self, n: int) -> float:
        return n * self.efficiency ** math.log2(max(1, n))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Costs:
        levels = [LevelCost(**lv) for lv in data["levels"]]
        return cls(**{**data, "levels": levels})


def _rate(ex) -> int:
    return int(ex.sample_rate)


def measure_costs(bundle: Path, manifest: dict, files: Sequence[Path], *, target_cpus: int = 4,
                  scaling_files: int | None = None) -> Costs:
    """Measure every stage on ``files`` (see the module doc), with the bundle's own model files."""
    from submit.runtime import bundle_environment, bundle_runtime

    bundle = Path(bundle)
    with bundle_environment(bundle):
        return _measure(bundle, manifest, [Path(f) for f in files], bundle_runtime(bundle, manifest), target_cpus,
                        scaling_files)


def measure_heads(root: str | Path, head_ids: Sequence[str], files: Sequence[Path]) -> Costs:
    """Per-stage costs of heads in ``root/heads/`` (a store or a bundle) on ``files``, in one run: the
    same measurement as :func:`measure_costs`, one process, without process scaling (e.g. a teacher
    beside its distilled student)."""
    return _measure(Path(root), {"levels": list(head_ids)}, [Path(f) for f in files], {}, 1, None)


def _measure(bundle: Path, manifest: dict, files: list[Path], runtime: dict, target_cpus: int,
             scaling_files: int | None) -> Costs:
    import os

    from embed.audio import Audio
    from embed.features import build_views
    from featurestore.windows import window_starts
    from submit.predict import open_predictor
    from submit.submission import file_window_ids

    levels: list[LevelCost] = []
    predictors = {}
    for head in manifest["levels"]:
        t = time.perf_counter()
        predictors[head] = open_predictor(bundle / "heads" / head, **runtime)
        levels.append(LevelCost(head, time.perf_counter() - t, [], 0.0, 0.0))
    # one extractor per version (two levels may share one); labelled by name unless two versions share it
    extractors = {e.version: e for p in predictors.values() for e in p.extractors}
    names = [e.name for e in extractors.values()]
    label = {v: e.name if names.count(e.name) == 1 else v for v, e in extractors.items()}
    for lv in levels:
        lv.extractors = [label[e.version] for e in predictors[lv.head_id].extractors]
    decode, resample, extract = [], {}, {label[v]: [] for v in extractors}
    heads_s = {lv.head_id: [] for lv in levels}
    finish_rows = {lv.head_id: ([], []) for lv in levels}
    durations = []
    for ex in extractors.values():          # warm-up: the patched BirdNET model, interpreters
        ex.compute(Audio.load(files[0]), [0.0])
    for path in files:
        t = time.perf_counter()
        audio = Audio.load(path)
        decode.append(time.perf_counter() - t)
        durations.append(audio.duration_s)
        starts = window_starts(audio.duration_s, True)
        outputs = {}
        for version, ex in extractors.items():
            rate = _rate(ex)
            if rate != audio.rate and rate not in audio._cache:
                t = time.perf_counter()
                audio.at(rate)
                resample.setdefault(str(rate), []).append(time.perf_counter() - t)
            t = time.perf_counter()
            outputs[version] = ex.compute(audio, starts)
            extract[label[version]].append(time.perf_counter() - t)
        for lv in levels:                   # the views from the outputs above: no extractor runs twice
            pred = predictors[lv.head_id]
            feats = build_views(pred.extractors, {e.name: outputs[e.version] for e in pred.extractors}, starts,
                                pred.requests)
            ids, rows = pred.rows_from_features(path, feats)
            full = soundscape_views(feats)
            if full is not None:
                if not heads_s[lv.head_id]:     # warm-up: compiled tree walks, tree tables
                    pred.rows_from_features(path, full)
                t = time.perf_counter()
                pred.rows_from_features(path, full)
                heads_s[lv.head_id].append(time.perf_counter() - t)
            finish_rows[lv.head_id][0].extend(file_window_ids(path, np.arange(len(ids)) * WINDOW_SECONDS)[0])
            finish_rows[lv.head_id][1].append(rows)
    scale = [SOUNDSCAPE_S / max(d, WINDOW_SECONDS) for d in durations]

    def per_file(values: list[float]) -> float:
        return float(np.median([v * s for v, s in zip(values, scale, strict=True)])) if values else 0.0

    costs = Costs(len(files), float(np.mean(durations)), per_file(decode),
                  {r: per_file(v) for r, v in resample.items()}, {n: per_file(v) for n, v in extract.items()},
                  {label[v]: _rate(e) for v, e in extractors.items()}, levels, 1, 1.0)
    for lv in levels:
        # timed on a full soundscape's windows (soundscape_views): not scaled by duration
        lv.heads_s = float(np.median(heads_s[lv.head_id])) if heads_s[lv.head_id] else 0.0
        wids, rows = finish_rows[lv.head_id]
        block = np.vstack(rows)
        t = time.perf_counter()
        predictors[lv.head_id].finish(wids, block, np.ones(len(wids), bool))
        lv.finish_per_window_s = (time.perf_counter() - t) / max(1, len(wids))
        rates = {str(costs.extractor_rate[n]) for n in lv.extractors}
        lv.per_file_s = (costs.decode_s + sum(costs.resample_s.get(r, 0.0) for r in rates)
                         + sum(costs.extractor_s[n] for n in lv.extractors) + lv.heads_s)
    workers = min(os.cpu_count() or 1, target_cpus)
    if workers >= 2:
        costs.workers_measured, costs.speedup_measured = workers, _measure_scaling(
            bundle / "heads" / manifest["levels"][0], files, workers, runtime, scaling_files)
    else:
        costs.notes.append("one CPU here: process scaling not measured, efficiency taken as 1")
    return costs


def soundscape_views(feats: dict) -> dict | None:
    """A file's views grown (or cut) to a 60-s soundscape's windows: its real rows repeated in order.

    Why: a head's cost is far from proportional to its rows (a tree walk streams every tree once per
    call: 1 row and 12 rows of the rehearsal's 234-class LightGBM head cost 46 and 69 ms), so a short
X
    are timed on exactly the rows a test soundscape gives them instead."""
    n = int(SOUNDSCAPE_S / WINDOW_SECONDS)
    if any(len(X) == 0 for _, X, _ in feats.values()):
        return None                          # no window to repeat
    out = {}
    for key, (_, X, names) in feats.items():
        take = np.arange(n) % len(X)
        out[key] = (np.arange(n, dtype=np.float64) * WINDOW_SECONDS, X[take], names)
    return out


def _measure_scaling(head_dir: Path, files: list[Path], workers: int, runtime: dict, n: int | None,
                     repeats: int = SCALING_REPEATS) -> float:
    """Wall time of the same files through a started pool of 1 and of ``workers`` processes (both pools
    started and warmed on one file per worker first, then timed in turn ``repeats`` times): S = the fastest
    t(1) / the fastest t(workers). Why alternated and the fastest of each: on a shared machine one burst of other
    load during a single timing moved S(2) from 1.34 to 1.03 between two runs minutes apart, and the
    projection divides every per-file cost by S(cpus)."""
    import os
    from contextlib import ExitStack

    from embed.extractors import pool_env
    from featurestore.workers import worker_pool
    from submit.predict import init_worker, predict_one

    batch = [str(f) for f in (list(files) * (1 + (n or 2 * workers) // max(1, len(files))))[: n or 2 * workers]]
    times: dict[int, list[float]] = {1: [], workers: []}
    with ExitStack() as stack:
        # serial extractors, as in a pool that fills the cores
        pools = {w: stack.enter_context(worker_pool(w, init_worker, (str(head_dir), runtime),
                                                    env=pool_env(os.cpu_count() or 1))) for w in (1, workers)}
        for w, pool in pools.items():
            list(pool.imap(predict_one, batch[:w], chunksize=1))          # warm each worker
        for _ in range(repeats):
            for w, pool in pools.items():
                t = time.perf_counter()
                list(pool.imap(predict_one, batch, chunksize=1))
                times[w].append(time.perf_counter() - t)
    return min(times[1]) / min(times[workers])


def speedup_model(costs: Costs | None) -> tuple[Callable[[int], float], str]:
    """The planner's process-scaling model ``S(n)`` and how it was got: :meth:`Costs.speedup` of measured costs,
    else ``S(n) = n`` (every worker adds a full CPU: an optimistic bound, and said so). The one scaling model the
    planner and the dry run's projection (:func:`submit.dryrun.project_dry_run`) share."""
    if costs is None:
        return float, "S(n) = n (no measured scaling in the bundle: optimistic)"
    return costs.speedup, (f"S(n) = n * e^log2(n), e = {costs.efficiency:.3f} from S({costs.workers_measured}) = "
                           f"{costs.speedup_measured:.2f} measured at export")


@dataclass
class Projection:
    head_id: str
    seconds: dict[str, float]              # stage -> projected seconds

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def project(costs: Costs, n_files: int = 600, cpus: int = 4) -> list[Projection]:
    """Projected seconds per stage for every level (see the module doc for the model)."""
    s = costs.speedup(cpus)
    windows = n_files * int(SOUNDSCAPE_S / WINDOW_SECONDS)
    out = []
    for lv in costs.levels:
        rates = {str(costs.extractor_rate[n]) for n in lv.extractors}
        stages = {"load": lv.load_s, "decode": n_files * costs.decode_s / s}
        for r in sorted(rates):
            if r in costs.resample_s:
                stages[f"resample {int(r) // 1000} kHz"] = n_files * costs.resample_s[r] / s
        for n in lv.extractors:
            stages[n] = n_files * costs.extractor_s[n] / s
        stages["heads"] = n_files * lv.heads_s / s
        stages["stack/finish"] = windows * lv.finish_per_window_s
        out.append(Projection(lv.head_id, stages))
    return out


def render(costs: Costs, n_files: int = 600, cpus: int = 4, budget_min: float = 90.0) -> str:
    projections = project(costs, n_files, cpus)
    lines = [f"measured on {costs.files} file(s) of {costs.audio_s:.0f} s here; per 60-s file, one process:",
             f"  decode {costs.decode_s:.3f} s; " + "; ".join(f"resample to {int(r) // 1000} kHz {v:.3f} s"
                                                           for r, v in costs.resample_s.items()),
             "  " + "; ".join(f"{n} {v:.3f} s" for n, v in costs.extractor_s.items())]
    for lv in costs.levels:
        lines.append(f"  level {lv.head_id}: heads {lv.heads_s:.4f} s/file, finish {1e3 * lv.finish_per_window_s:.3f} "
                     f"ms/window, load {lv.load_s:.1f} s; {lv.per_file_s:.3f} s per file in all")
    lines.append(f"scaling model: S(n) = n * e^log2(n), e = {costs.efficiency:.3f} from S({costs.workers_measured}) = "
                 f"{costs.speedup_measured:.2f} measured here -> S({cpus}) = {costs.speedup(cpus):.2f}"
                 + (f" ({'; '.join(costs.notes)})" if costs.notes else ""))
    lines.append(f"projected for {n_files} files x 60 s on {cpus} CPUs (budget {budget_min:.0f} min):")
    for p in projections:
        parts = ", ".join(f"{k} {v / 60:.2f}" for k, v in p.seconds.items())
        lines.append(f"  {p.head_id}: {p.total_s / 60:.1f} min  ({parts} min)")
    lines.append("  class prior: 0.0 min (the time guard's last level)")
    return "\n".join(lines)


def plan_bundle(bundle: str | Path, audio: str | Path | None, *, n_files: int = 600, cpus: int = 4,
                budget_min: float = 90.0, measure_files: int = 3) -> tuple[Costs, str]:
    """Measure (on ``measure_files`` files of ``audio``, else the costs stored at export) and render."""
    from featurestore.errors import UserInputError
    from submit.runtime import verify_bundle
    from submit.submission import list_audio

    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    if audio is None:
        if "stage_costs" not in manifest:
            raise UserInputError(f"{bundle}: no costs stored at export; pass --audio DIR to measure them here")
        costs = Costs.from_json(manifest["stage_costs"])
        head = "costs measured at export time"
    else:
        skipped: list[str] = []
        files = list_audio(audio, on_skipped=skipped.append)[:measure_files]
        if not files:
            raise UserInputError(f"--audio {audio}: no audio files to measure on"
                                 + (f" ({skipped[0]})" if skipped else ""))
        costs = measure_costs(bundle, manifest, files, target_cpus=cpus)
        head = "\n".join(["costs measured now", *(f"note: {line}" for line in skipped)])
    return costs, f"{head}\n{render(costs, n_files, cpus, budget_min)}"
