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


# ---------------------------------------------------------------------------- the stored predict cost (issue 29)
@dataclass
class RecordedCosts:
    """What :func:`record_predict_costs` did: head id -> the ``predict_cost`` JSON it stored (``measured``), head id
    -> why it was not measured (``skipped``: it already had a cost, or has no head folder to predict with)."""
    measured: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def predict_cost_entry(costs: Costs, head_id: str, *, n_files: int, cpus: int, audio: str | Path,
                       measured: Sequence[Path], measured_at: str) -> dict:
    """The ``predict_cost`` JSON of one measured level of ``costs`` (see :func:`record_predict_costs`): its seconds
    per 60-s file, its projected Kaggle minutes (:func:`project`, the planner's own projection, stage by stage), the
    speed-up used and how it was got."""
    level = next(lv for lv in costs.levels if lv.head_id == head_id)
    projection = next(p for p in project(costs, n_files, cpus) if p.head_id == head_id)
    scaling = (f"S(n) = n * e^log2(n), e = {costs.efficiency:.3f} from S({costs.workers_measured}) = "
               f"{costs.speedup_measured:.2f} measured with the cost" if costs.workers_measured >= 2
               else "S(n) = n (process scaling not measured: optimistic)")
    return {"per_file_s": level.per_file_s, "kaggle_minutes": projection.total_s / 60.0, "n_files": n_files,
            "cpus": cpus, "measured_at": measured_at, "audio": str(audio),
            "measured_files": [Path(f).name for f in measured], "heads_s": level.heads_s,
            "load_s": level.load_s, "finish_per_window_s": level.finish_per_window_s,
            "speedup": costs.speedup(cpus), "scaling": scaling,
            "stages_min": {k: v / 60.0 for k, v in projection.seconds.items()}}


def record_predict_costs(store_dir: str | Path, head_ids: Sequence[str], audio_dir: str | Path, *,
                         n_files: int = 600, cpus: int = 4, measure_files: int = 3, scaling: bool = True,
                         force: bool = False) -> RecordedCosts:
    """Measure each head's predict cost on real audio with the planner's own code and store it on the head's
    experiments row (``models.experiments.annotate(predict_cost=...)``), so a page needs no audio afterwards.

    Measured on the first ``measure_files`` files of ``audio_dir`` (:func:`submit.submission.list_audio`), all heads
    in one run as :func:`measure_heads` does (each extractor runs once per file; a head's ``per_file_s`` is decode +
    resample + its extractors + its heads, per 60-s file); ``scaling`` also times the process pools of the
    planner (:func:`_measure_scaling`, on the first head measured) for the speed-up ``S(cpus)``, else ``S(n) = n``
    (optimistic, said so in ``scaling``). ``kaggle_minutes`` = :func:`project` of ``n_files`` 60-s test files on
    ``cpus`` CPUs, for that head alone.

    Stored JSON: ``per_file_s``, ``kaggle_minutes``, ``n_files`` (test files projected for), ``cpus`` (Kaggle CPUs
    projected for), ``measured_at`` (UTC ISO), ``audio`` (the folder), ``measured_files`` (their names), and the parts
    of the projection (``heads_s``, ``load_s``, ``finish_per_window_s``, ``speedup``, ``scaling``, ``stages_min``).

    A head that already has a cost is skipped unless ``force``; a head with a row but no head folder (a CNN student)
    is skipped, said why. A head with no experiments row, or an audio folder with no audio file: StoreError /
    UserInputError naming it, before anything is measured.
    """
    from featurestore.errors import StoreError, UserInputError
    from featurestore.store import FeatureStore, utc_now
    from models.bundle import HEADS_DIR
    from models.experiments import annotate, latest_row
    from submit.submission import list_audio

    store_dir = Path(store_dir)
    out = RecordedCosts()
    todo: list[str] = []
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        for head in dict.fromkeys(head_ids):
            row = latest_row(store, head)
            if not row:
                raise StoreError(f"no experiment {head!r} in {store_dir}; list them with python -m "
                                 f"pipelines.leaderboard --store {store_dir}")
            if row.get("predict_cost") is not None and not force:
                out.skipped[head] = "already measured (force to measure again)"
            elif not (store_dir / HEADS_DIR / head).is_dir():
                out.skipped[head] = f"no head folder {store_dir / HEADS_DIR / head} to predict with"
            else:
                todo.append(head)
    if not todo:
        return out
    skipped_audio: list[str] = []
    files = list_audio(audio_dir, on_skipped=skipped_audio.append)[:measure_files]
    if not files:
        raise UserInputError(f"{audio_dir}: no audio files to measure predict costs on"
                             + (f" ({skipped_audio[0]})" if skipped_audio else ""))
    if scaling:
        costs = _measure(store_dir, {"levels": todo}, files, {}, cpus, None)
    else:
        costs = measure_heads(store_dir, todo, files)
    when = utc_now().isoformat(timespec="seconds")
    entries = {h: predict_cost_entry(costs, h, n_files=n_files, cpus=cpus, audio=audio_dir, measured=files,
                                     measured_at=when) for h in todo}
    with FeatureStore.open(store_dir, create=False) as store:
        for head, entry in entries.items():
            annotate(store, head, predict_cost=entry)
    out.measured.update(entries)
    return out


# ---------------------------------------------------------------------------- two tracks side by side (issue 29)
@dataclass
class TrackPlan:
    """One bundle's plan: its folder, track (the manifest's ``track``, None: exported without one), head, the head
    level's projected minutes, the budget and the headroom it leaves (minutes and % of the budget; negative: over)."""
    bundle: Path
    track: str | None
    head_id: str
    projected_min: float
    budget_min: float
    text: str                              # plan_bundle's full rendering

    @property
    def headroom_min(self) -> float:
        return self.budget_min - self.projected_min

    @property
    def headroom_pct(self) -> float:
        return 100.0 * self.headroom_min / self.budget_min


def plan_tracks(bundles: Sequence[str | Path], audio: str | Path | None, *, n_files: int = 600, cpus: int = 4,
                budget_min: float = 90.0, measure_files: int = 3) -> list[TrackPlan]:
    """:func:`plan_bundle` of each bundle (the same audio, files, CPUs and budget for all), with the head level's
    projection (what runs while the time guard keeps it) and the headroom it leaves in the budget."""
    from submit.runtime import verify_bundle

    out = []
    for bundle in bundles:
        costs, text = plan_bundle(bundle, audio, n_files=n_files, cpus=cpus, budget_min=budget_min,
                                  measure_files=measure_files)
        head = project(costs, n_files, cpus)[0]
        manifest = verify_bundle(Path(bundle))
        out.append(TrackPlan(Path(bundle), manifest.get("track"), head.head_id, head.total_s / 60.0, budget_min,
                             text))
    return out


def render_tracks(plans: Sequence[TrackPlan], n_files: int = 600, cpus: int = 4) -> str:
    """Each bundle's plan under a header naming its track, then one table of the bundles side by side: track,
    head, projected minutes and the headroom each leaves in the budget (minutes, %)."""
    lines = []
    for p in plans:
        lines += [f"== bundle {p.bundle} (track {p.track or 'none'}) ==", p.text, ""]
    budget = plans[0].budget_min if plans else 90.0
    rows = [("bundle", "track", "head", "projected min", "headroom min", "headroom %")]
    rows += [(str(p.bundle), p.track or "none", p.head_id, f"{p.projected_min:.1f}", f"{p.headroom_min:+.1f}",
              f"{p.headroom_pct:+.0f}%") for p in plans]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append(f"side by side: {n_files} files x 60 s on {cpus} CPUs, budget {budget:.0f} min (headroom < 0: "
                 "over budget, the time guard falls back)")
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
                     .rstrip())
    return "\n".join(lines)
