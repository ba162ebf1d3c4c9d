"""What the Kaggle notebook runs: find the inputs, verify the bundle, predict every test soundscape
under a time guard, and always leave a valid ``submission.csv``.

Inference path only (numpy, scipy, soundfile, ai-edge-litert, lightgbm, scikit-learn; no duckdb,
pyarrow or nbformat). The notebook itself (:mod:`submit.notebook`) is a thin driver: one cell
verifies the bundle with the standard library and installs its wheels offline, the next calls :func:`run`.

Guarantees:

* **inputs** are found by probing the mount layouts Kaggle has used - ``/kaggle/input/competitions/
  <slug>``, ``/kaggle/input/<slug>``, ``/kaggle/input/datasets/<owner>/<slug>`` - or taken from
  ``$BIRDCLEF_STACK_COMPETITION`` / ``$BIRDCLEF_STACK_BUNDLE`` (``$BIRDCLEF_STACK_INPUT`` moves the
  root, which the dry run uses); the test audio is :func:`submit.submission.list_audio`'s, pipelines.predict's
  one rule (the folder's own files in a format soundfile decodes), and what it skips is a warning naming it;
* the bundle is untrusted input, checked against ``manifest.json`` before any prediction
  (:func:`verify_bundle`): every listed path is relative, normalised and inside the bundle; nothing
  in the bundle is a symbolic link (its root may be reached through one, as Kaggle and the dry run
  mount it); the bundle holds exactly the listed files (an extra file or folder, e.g. a
  ``heads/<id>/fold_9``, is refused) and each has its listed size and sha256; every level is a
  plain head folder name under ``heads/`` (so are a stacked level's base heads), ``head_id`` is the
  first level, and the wheel and model files the manifest names (and those the heads' extractors
  need) are listed files. Any failure, a malformed manifest included, is one
  :class:`~featurestore.errors.BundleError` naming the file. The notebook repeats the file checks
  with the standard library before it installs anything (:mod:`submit.notebook`);
* nothing is written into the bundle: the extractors' cache (``.birdclef-stack-cache``) and the run
  report go beside the submission, in the working folder;
* the submission holds exactly the expected row ids in ``sample_submission.csv``'s column order and
  is validated before the run ends. A file that fails gets its head's class prior (a stacked head:
  the stack's own prior) for the rows it has no audio for;
* **time guard**: after every file the total run time is projected from the recent per-file rate; when
  it would pass ``guard`` x the budget, the remaining files go to the next cheaper level - the
  bundle's fallback head (fewer extractors, no stack), then the class prior (instant) - and the run says
  so. Levels are data in the manifest (``levels``);
* the run report (:data:`REPORT_FILE`) keeps each predicted file's completion time (``file_done_s``) and its
  :class:`submit.predict.FileTiming` (``file_timing``: seconds in its worker, first of its worker, the
  worker's load, windows, pool size), from which the dry run separates one-time costs from the steady rate.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from embed.extractors import environ_set
from featurestore.errors import BundleError, DataError
from featurestore.files import file_sha256, walk_tree
from featurestore.windows import WINDOW_SECONDS

MANIFEST = "manifest.json"
BUNDLE_KIND = "birdclef-stack-bundle"
COMPETITION_SLUG = "birdclef-2026"
INPUT_ROOT = "/kaggle/input"
WORKING = "/kaggle/working"
ENV_INPUT, ENV_COMPETITION, ENV_BUNDLE = "BIRDCLEF_STACK_INPUT", "BIRDCLEF_STACK_COMPETITION", "BIRDCLEF_STACK_BUNDLE"
ENV_BUDGET = "BIRDCLEF_STACK_BUDGET_MIN"
BUDGET_MIN = 90.0
GUARD = 0.80              # switch level when the projected total passes 80% of the budget (CSV + slack after)
PRIOR_LEVEL = "prior"
REPORT_FILE = "birdclef_stack_run.json"     # beside the submission: what the run did, for the dry run
PROBS_FILE = "birdclef_stack_probs.npy"     # the unrounded probabilities, written when $BIRDCLEF_STACK_SAVE_PROBS
ENV_SAVE_PROBS = "BIRDCLEF_STACK_SAVE_PROBS"


# ---------------------------------------------------------------------------- finding inputs
def _probe(root: Path, accept: Callable[[Path], bool], depth: int = 4) -> list[Path]:
    found, frontier = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            if accept(d):
                found.append(d)
                continue
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                continue
        frontier = nxt
    return found


def find_competition(root: str | os.PathLike | None = None, slug: str = COMPETITION_SLUG) -> Path:
    """The competition folder: ``$BIRDCLEF_STACK_COMPETITION``, else the known layouts under the input
    root, else any folder below it holding ``sample_submission.csv`` and ``test_soundscapes/``."""
    if os.environ.get(ENV_COMPETITION):
        return Path(os.environ[ENV_COMPETITION])
    root = Path(root or os.environ.get(ENV_INPUT) or INPUT_ROOT)
    for cand in (root / "competitions" / slug, root / slug):
        if (cand / "sample_submission.csv").is_file():
            return cand
    hits = _probe(root, lambda d: (d / "sample_submission.csv").is_file() and (d / "test_soundscapes").is_dir())
    if not hits:
        raise DataError(f"no competition folder under {root} (looked for {root}/competitions/{slug}, {root}/{slug} "
                        f"and any folder with sample_submission.csv + test_soundscapes/); set ${ENV_COMPETITION}")
    return hits[0]


def _is_bundle(d: Path) -> bool:
    path = d / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == BUNDLE_KIND
    except (OSError, ValueError):
        return False


def find_bundle(root: str | os.PathLike | None = None) -> Path:
    """The bundle folder: ``$BIRDCLEF_STACK_BUNDLE``, else the first folder below the input root holding a
    birdclef-stack ``manifest.json`` (``/kaggle/input/<slug>``, ``/kaggle/input/datasets/<owner>/<slug>``)."""
    if os.environ.get(ENV_BUNDLE):
        return Path(os.environ[ENV_BUNDLE])
    root = Path(root or os.environ.get(ENV_INPUT) or INPUT_ROOT)
    for pattern in (f"*/{MANIFEST}", f"datasets/*/*/{MANIFEST}"):       # the known layouts first: no deep walk
        for m in sorted(root.glob(pattern)):
            if _is_bundle(m.parent):
                return m.parent
    hits = _probe(root, _is_bundle)
    if not hits:
        raise BundleError(f"no birdclef-stack bundle (a folder with {MANIFEST}) under {root}; attach the dataset "
                          f"written by pipelines.export, or set ${ENV_BUNDLE}")
    return hits[0]


# ---------------------------------------------------------------------------- manifest
REEXPORT = "re-export it with pipelines.export and upload the whole folder"
MODEL_KEYS = ("toolkit_wheel", "custom_model", "perch_model", "cnn_model")    # manifest keys naming one bundle file
# extractor kind -> the manifest key of its model
HEAD_MODEL_KEYS = {"custom": "custom_model", "perch": "perch_model", "cnn": "cnn_model"}


def file_entries(folder: Path) -> list[dict]:
    """``{path, bytes, sha256}`` of every file below ``folder`` except its own ``manifest.json``, sorted by path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST)
    return [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in files]


def read_manifest(bundle: Path) -> dict:
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle / MANIFEST}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{bundle / MANIFEST}: not a birdclef-stack bundle manifest")
    return manifest


def is_inside_path(path: object) -> bool:
    """A manifest path: a non-empty, normalised, relative POSIX path that stays inside the bundle."""
    return (isinstance(path, str) and path not in ("", ".") and not path.startswith("/") and "\x00" not in path
            and posixpath.normpath(path) == path and ".." not in path.split("/"))


def is_head_name(name: object) -> bool:
    """A level / base head: a plain folder name under ``heads/`` (no ``/``, not ``.`` or ``..``)."""
    return isinstance(name, str) and is_inside_path(name) and "/" not in name


def _listed(root: Path, manifest: dict) -> dict[str, dict]:
    """The manifest's ``files``, by path, each checked for shape and for a path inside the bundle."""
    where = root / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BundleError(f"{where}: {'no' if files is None else 'a malformed'} \"files\" list (every file with "
                          f"path, bytes, sha256); {REEXPORT}")
    listed: dict[str, dict] = {}
    for i, entry in enumerate(files):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and type(entry.get("bytes")) is int
                and isinstance(entry.get("sha256"), str)):
            raise BundleError(f"{where}: files[{i}] is not {{path: str, bytes: int, sha256: str}}; {REEXPORT}")
        path = entry["path"]
        if not is_inside_path(path) or path == MANIFEST:
            raise BundleError(f"{where}: files[{i}] path {path!r} is not a normalised relative path inside the bundle; "
                              f"{REEXPORT}")
        if path in listed:
            raise BundleError(f"{where}: {path} is listed twice; {REEXPORT}")
        listed[path] = entry
    return listed


def _walk(root: Path) -> tuple[set[str], set[str]]:
    """(files, folders) below ``root`` as relative POSIX paths; BundleError at the first symbolic link or
    special file (the root itself may be reached through a link: Kaggle and the dry run mount it so)."""
    files, folders, other = walk_tree(root)
    for rel in other:
        if (root / rel).is_symlink():
            raise BundleError(f"bundle {root}: {rel} is a symbolic link (to {os.readlink(root / rel)}); a bundle "
                              f"holds plain files only - remove the link or {REEXPORT}")
        raise BundleError(f"bundle {root}: {rel} is not a regular file; remove it or {REEXPORT}")
    return set(files), set(folders)


def verify_bundle(bundle: str | os.PathLike) -> dict:
    """Check the bundle against its manifest (see the module doc): every listed path inside the bundle,
    no symbolic link anywhere in it, exactly the listed files (size, then sha256 of each), and every
    head, level and model the manifest names present among them. Returns the manifest; any failure is
    one :class:`~featurestore.errors.BundleError` naming the file."""
    root = Path(bundle).resolve()           # resolved once: only the root may be reached through a link
    manifest = read_manifest(root)
    listed = _listed(root, manifest)
    files, folders = _walk(root)
    files.discard(MANIFEST)
    if extra := sorted(files - set(listed)):
        raise BundleError(f"bundle {root}: {extra[0]} is not listed in {MANIFEST} ({len(extra)} unlisted file(s)); "
                          f"a bundle holds exactly the files its manifest lists - remove them or {REEXPORT}")
    parents = {str(p) for f in listed for p in PurePosixPath(f).parents}
    if empty := sorted(folders - parents):
        raise BundleError(f"bundle {root}: folder {empty[0]} holds no listed file; remove it or {REEXPORT}")
    for path, entry in listed.items():
        if path not in files:
            raise BundleError(f"bundle file {path} is missing from {root}; {REEXPORT}")
        if (root / path).stat().st_size != entry["bytes"] or file_sha256(root / path) != entry["sha256"]:
            raise BundleError(f"bundle file {path} does not match {MANIFEST} (sha256 or size differ): the bundle was "
                              f"modified or truncated; {REEXPORT}")
    _check_names(root, manifest, listed)
    return manifest


def _check_names(root: Path, manifest: dict, listed: dict[str, dict]) -> None:
    """Every head, level and model file the manifest (and the levels' own configs) name is a listed file."""
    where = root / MANIFEST
    levels, head_id = manifest.get("levels"), manifest.get("head_id")
    if not isinstance(levels, list) or not levels or not all(is_head_name(x) for x in levels):
        raise BundleError(f"{where}: \"levels\" must be a non-empty list of head folder names under heads/ "
                          f"(got {levels!r}); {REEXPORT}")
    if head_id != levels[0]:
        raise BundleError(f"{where}: head_id {head_id!r} is not the first level {levels[0]!r}; {REEXPORT}")
    for key in MODEL_KEYS:
        if key in manifest and manifest[key] not in listed:
            raise BundleError(f"{where}: {key} {manifest[key]!r} is not a file of the bundle; {REEXPORT}")
    shapes = {"columns": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
              "competition": is_head_name,          # the dry run makes competitions/<competition>/ from it
              "runtime_packages": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in (*v, *v.values())),
              "budget_min": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
              "toolkit_version": lambda v: isinstance(v, str)}
    for key, ok in shapes.items():
        if key in manifest and not ok(manifest[key]):
            raise BundleError(f"{where}: malformed {key!r} ({str(manifest[key])[:60]!r}); {REEXPORT}")
    prior = manifest.get("prior")
    if prior is not None and not (isinstance(prior, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in prior.values())):
        raise BundleError(f"{where}: \"prior\" must map each column to a probability in [0, 1]; {REEXPORT}")
    heads, todo = [], list(levels)
    while todo:                             # the levels and, for a stacked head, its base heads
        head = todo.pop(0)
        if head in heads:
            continue
        heads.append(head)
        config = _head_json(root, head, "config.json", listed)
        bases = config.get("base_heads", []) if isinstance(config, dict) else []
        if not isinstance(bases, list) or not all(is_head_name(b) for b in bases):
            raise BundleError(f"{root}/heads/{head}/config.json: base heads {bases!r} are not head folder names "
                              f"under heads/; {REEXPORT}")
        todo += bases
        extractors = _head_json(root, head, "extractors.json", listed, required=False) or {}
        for name, params in (extractors.items() if isinstance(extractors, dict) else ()):
            key = HEAD_MODEL_KEYS.get(params.get("kind") if isinstance(params, dict) else None)
            if key and key not in manifest:
                raise BundleError(f"{root}/heads/{head}/extractors.json: extractor {name} needs a model file, but "
                                  f"the manifest names no {key} shipped in the bundle; {REEXPORT}")


def _head_json(root: Path, head: str, name: str, listed: dict[str, dict], required: bool = True) -> object:
    path = f"heads/{head}/{name}"
    if path not in listed:
        if not required:
            return None
        raise BundleError(f"{root / MANIFEST}: head {head} is not in the bundle (no {path}); {REEXPORT}")
    try:
        return json.loads((root / path).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle file {path}: unreadable JSON ({exc}); {REEXPORT}") from None


@contextmanager
def bundle_environment(bundle: Path, cache: Path | None = None):
    """Point the extractors at the bundle's model files (and a writable cache) for the duration."""
    updates: dict[str, str | None] = {}
    if (bundle / "models" / "birdnet").is_dir():
        updates["BIRDCLEF_STACK_BIRDNET_DIR"] = str(bundle / "models" / "birdnet")
    if cache is not None and not os.environ.get("BIRDCLEF_STACK_CACHE"):
        updates["BIRDCLEF_STACK_CACHE"] = str(cache)
    with environ_set(updates):
        yield


def bundle_runtime(bundle: Path, manifest: dict) -> dict:
    """Extractor runtime options of a bundle (the shipped custom or Perch model's and CNN student's paths; the
    export ships at most one of custom / Perch: both families read ``model_path``)."""
    model = manifest.get("custom_model") or manifest.get("perch_model")
    runtime = {"model_path": str(bundle / model)} if model else {}
    if manifest.get("cnn_model"):
        runtime["cnn_model_path"] = str(bundle / manifest["cnn_model"])
    return runtime


# ---------------------------------------------------------------------------- prediction under a guard
@dataclass
class Level:
    name: str                                  # a head id, or "prior"
    files: list[Path] = field(default_factory=list)
    window_ids: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    usable: list[np.ndarray] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    submission: Path
    n_files: int
    n_rows: int
    stage_seconds: dict[str, float]
    levels: dict[str, int]                     # level name -> files predicted at that level
    warnings: list[str]
    guard_events: list[str]

    def render(self) -> str:
        lines = [f"wrote {self.submission}: {self.n_rows} rows for {self.n_files} files (validated)"]
        lines += [f"  files by level: {', '.join(f'{k} {v}' for k, v in self.levels.items())}"]
        lines += [f"  time guard: {e}" for e in self.guard_events]
        lines += [f"  warning: {w}" for w in self.warnings[:20]]
        lines += ["seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items())]
        return "\n".join(lines)


def _projected(start: float, done_times: list[float], remaining: int, window: int) -> float:
    """Seconds from ``start`` to the end: elapsed + remaining x the recent per-file rate."""
    now = time.perf_counter()
    if len(done_times) < 2:
        return float("inf") if remaining and not done_times else now - start
    k = min(window, len(done_times) - 1)
    rate = (done_times[-1] - done_times[-1 - k]) / k
    return (now - start) + remaining * rate


def predict_with_guard(heads_dir: Path, levels: Sequence[str], files: list[Path], columns: list[str], *,
                       workers: int, budget_s: float, start: float, guard: float = GUARD,
                       runtime: dict | None = None, say: Callable[[str], object] = print,
                       every: int = 25, timeline: list[float] | None = None, timings: list | None = None,
                       ) -> tuple[list[str], np.ndarray, list[str], dict[str, int], list[str]]:
    """Predict ``files`` with the first level in ``levels`` (head ids), moving the remaining files down a
    level whenever the projected total passes ``guard * budget_s``; the last level is always the class
    prior. Returns row ids, probabilities in ``columns`` order, warnings, files per level, guard events;
    ``timeline`` (a list) receives the ``perf_counter`` time of each file's completion, ``timings`` each
    predicted file's :class:`submit.predict.FileTiming` (in the same order; prior-level files have none)."""
    from submit.predict import iter_predictions, open_predictor
    from submit.submission import file_window_ids

    if not levels:
        raise BundleError("no head to predict with: the bundle's manifest lists no levels")
    runtime = runtime or {}
    chain = [*levels, PRIOR_LEVEL]
    done: dict[str, Level] = {name: Level(name) for name in chain}
    predictors: dict[str, object] = {}
    warnings: list[str] = []
    events: list[str] = []
    pending = list(files)
    done_times: list[float] = timeline if timeline is not None else []
    n_total = len(files)
    for i, name in enumerate(chain):
        if not pending:
            break
        if name == PRIOR_LEVEL:
            done[name].files = pending
            pending = []
            break
        predictors[name] = open_predictor(heads_dir / name, **runtime)
        level_times: list[float] = []
        gen = iter_predictions(heads_dir / name, pending, workers, runtime, predictors[name] if workers <= 1 else None,
                               timings=timings)
        taken = 0
        try:
            for path, ids, probs, error, ok in gen:
                lv = done[name]
                lv.files.append(Path(path))
                lv.row_ids += ids
                lv.window_ids += file_window_ids(Path(path), np.arange(len(ids)) * WINDOW_SECONDS)[0]
                lv.rows.append(probs)
                lv.usable.append(ok)
                if error:
                    warnings.append(error)
                taken += 1
                now = time.perf_counter()
                done_times.append(now)
                level_times.append(now)
                n_done = sum(len(v.files) for v in done.values())
                if n_done % every == 0 or n_done == n_total:
                    say(f"  {n_done}/{n_total} files, {now - start:.0f} s elapsed ({name})")
                left = len(pending) - taken
                projected = _projected(start, level_times, left, window=2 * max(1, workers))
                if left and len(level_times) >= 2 and projected > guard * budget_s:
                    nxt = chain[i + 1]
                    events.append(f"projected {projected / 60:.1f} min > {guard:.0%} of the {budget_s / 60:.0f}-min "
                                  f"budget after {n_done} files: the remaining {left} files go to "
                                  f"{'the class prior' if nxt == PRIOR_LEVEL else 'fallback head ' + nxt}")
                    say(f"time guard: {events[-1]}")
                    break
        finally:
            gen.close()
        pending = pending[taken:]
    return _assemble(files, chain, done, predictors, columns) + (warnings, {k: len(v.files) for k, v in done.items()},
                                                                 events)


def _assemble(files: list[Path], chain: list[str], done: dict[str, Level], predictors: dict,
              columns: list[str]) -> tuple[list[str], np.ndarray]:
    from submit.submission import expected_row_ids

    by_row: dict[str, np.ndarray] = {}
    for name in chain:
        lv = done[name]
        if name == PRIOR_LEVEL:
            if lv.files:
                first = predictors[chain[0]]        # loaded before any file: the top level's own prior
                prior = np.asarray(first.output_prior)[[first.class_names.index(c) for c in columns]]
                for path in lv.files:
                    for rid in expected_row_ids(path):
                        by_row[rid] = prior
            continue
        if not lv.rows:
            continue
        pred = predictors[name]
        probs = pred.finish(lv.window_ids, np.vstack(lv.rows), np.concatenate(lv.usable))
        order = [pred.class_names.index(c) for c in columns]
        for rid, p in zip(lv.row_ids, np.asarray(probs)[:, order], strict=True):
            by_row[rid] = p
    row_ids = [rid for path in files for rid in expected_row_ids(path)]
    return row_ids, np.vstack([by_row[r] for r in row_ids]) if row_ids else np.zeros((0, len(columns)))


def run(bundle: str | os.PathLike | None = None, competition: str | os.PathLike | None = None,
        out: str | os.PathLike | None = None, *, budget_min: float | None = None, workers: int | None = None,
        audio_subdir: str = "test_soundscapes", say: Callable[[str], object] = print) -> RunReport:
    """The notebook's whole job (see the module doc)."""
    from submit.submission import list_audio, read_header, validate_submission, write_submission

    start = time.perf_counter()
    stages: dict[str, float] = {}
    t = time.perf_counter()
    bundle = Path(bundle) if bundle else find_bundle()
    competition = Path(competition) if competition else find_competition()
    manifest = verify_bundle(bundle)
    stages["verify bundle"] = time.perf_counter() - t
    say(f"bundle {bundle} (head {manifest['head_id']}, toolkit {manifest.get('toolkit_version', '?')}): "
        f"{len(manifest['files'])} files verified; competition {competition}")
    budget_min = float(budget_min or os.environ.get(ENV_BUDGET) or manifest.get("budget_min") or BUDGET_MIN)
    workers = int(workers or os.cpu_count() or 1)
    runtime = bundle_runtime(bundle, manifest)
    sample = competition / "sample_submission.csv"
    columns = read_header(sample)[1:]
    audio_dir = competition / audio_subdir
    # the notebook must always leave a submission: two files with one stem (never in the competition)
    # are predicted once, the first by name, with a warning - pipelines.predict refuses them instead.
    # What the listing skips (sub-folders, m4a/aac, other suffixes) is said too: pipelines.predict's one rule
    duplicates: list[str] = []
    files = list_audio(audio_dir, on_duplicate=duplicates.append, on_skipped=duplicates.append) \
        if audio_dir.is_dir() else []
    for line in duplicates:
        say(f"warning: {line}")
    out = Path(out) if out else Path(WORKING) / "submission.csv"
    say(f"{len(files)} soundscapes in {audio_dir}; {workers} worker(s); budget {budget_min:.0f} min; "
        f"levels {' -> '.join([*manifest['levels'], PRIOR_LEVEL])}")
    t = time.perf_counter()
    timeline: list[float] = []
    timings: list = []
    with bundle_environment(bundle, out.parent / ".birdclef-stack-cache"):
        row_ids, probs, warnings, levels, events = predict_with_guard(
            bundle / "heads", manifest["levels"], files, columns, workers=workers, budget_s=budget_min * 60.0,
            start=start, runtime=runtime, say=say, timeline=timeline, timings=timings)
        warnings[:0] = duplicates
        if not files:
            warnings.append(f"no audio in {audio_dir} (Kaggle hides the test set outside a submission run): "
                            "wrote sample_submission.csv's rows with the class prior")
            row_ids, probs = _sample_rows(sample, bundle / "heads" / manifest["levels"][0], columns, runtime)
    stages["predict"] = time.perf_counter() - t
    t_predict = t
    t = time.perf_counter()
    write_submission(out, row_ids, probs, columns)
    validate_submission(out, sample, row_ids)
    if os.environ.get(ENV_SAVE_PROBS):        # the dry run compares unrounded numbers
        np.save(out.parent / PROBS_FILE, np.asarray(probs, np.float32))
    stages["write + validate"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - start
    report = RunReport(out, len(files), len(row_ids), stages, levels, warnings, events)
    (out.parent / REPORT_FILE).write_text(json.dumps({
        "submission": str(out), "n_files": len(files), "n_rows": len(row_ids), "stage_seconds": stages,
        "levels": levels, "warnings": warnings, "guard_events": events, "workers": workers,
        "budget_min": budget_min, "file_done_s": [round(x - t_predict, 4) for x in timeline],
        "file_timing": [t.to_json() for t in timings]},
        indent=1), encoding="utf-8")
    say(report.render())
    return report


def _sample_rows(sample: Path, head_dir: Path, columns: list[str], runtime: dict) -> tuple[list[str], np.ndarray]:
    import csv

    from submit.predict import open_predictor

    with open(sample, newline="", encoding="utf-8") as f:
        ids = [row[0] for row in list(csv.reader(f))[1:] if row]
    pred = open_predictor(head_dir, **runtime)
    prior = np.asarray(pred.output_prior)[[pred.class_names.index(c) for c in columns]]
    return ids, np.tile(prior, (len(ids), 1))
