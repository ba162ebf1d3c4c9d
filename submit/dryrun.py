"""The offline dry run of an exported bundle (the library behind ``python -m pipelines.dryrun``).

1. a fresh venv that sees this environment's packages, after its own, as Kaggle's image provides its
   own (numpy, scipy, scikit-learn, lightgbm, soundfile, ipykernel), into which the notebook installs
   the bundle's wheels with ``--no-index`` - ``--ignore-installed``, so the bundle's copies shadow
   anything here (an editable install of this checkout is not visible), and the notebook's last cell
   proves where ``ai_edge_litert`` and the toolkit were imported from;
2. a fake ``/kaggle/input``: ``competitions/<slug>/`` with ``sample_submission.csv`` and the audio as
   ``test_soundscapes/``, ``datasets/<owner>/<slug>/`` = the bundle (links, nothing copied);
3. the notebook executed headless (nbclient) with no network - inside ``unshare -n`` when the machine
   allows it, else with network, and the run says so;
4. the submission compared with ``pipelines.predict``'s (same head, same files, this environment; files
   the time guard moved down are compared with their level's head, or the top head's class prior):
   the largest difference of the unrounded probabilities must be at most :data:`TOLERANCE` (1e-4).
   The notebook and predict run the same code on the same files, so only float32 storage and BLAS
   rounding separate them: 9e-8 on the demo, three orders of magnitude below the tolerance; a stale
   toolkit wheel or a head other than the one checked differs by 1e-2 or more. Above it
   :attr:`DryRun.agrees` is False and ``pipelines.dryrun`` exits 1 with one line naming the row;
5. ``projected Kaggle minutes: X (budget B)`` printed last, from the notebook's own run with the planner's
   model (:func:`project_dry_run`): the one-time cost (kernel start, install, verify, predictor loads, each
   worker's first-file warm-up, write) apart from the steady per-file rate (the files after each worker's
   first, scaled to 60-s files and to the target CPUs with the planner's scaling), both printed, whatever
   the file count; too few files to trust the rate (fewer than ``max(2, workers)`` after each worker's
   first) is said. The audio is :func:`submit.submission.list_audio`'s (pipelines.predict's rule: the
   folder's own files; what it skips is a note).

Guarantees: the work folder (``--work``, default ``.<bundle>-dryrun`` beside the bundle) is new, empty,
or one a dry run made (it holds :data:`WORK_MARKER`, written first); a non-empty folder without the
marker is refused and nothing in it is touched, and a re-run removes only the entries a dry run
creates (:data:`WORK_ENTRIES`). A notebook that fell back to the prior-only submission is an error
naming its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError, DataError, UserInputError
from submit.notebook import FALLBACK, NOTEBOOK
from submit.runtime import ENV_SAVE_PROBS, PRIOR_LEVEL, PROBS_FILE, REPORT_FILE, verify_bundle

TOLERANCE = 1e-4            # max |notebook - pipelines.predict| of a good bundle (see the module doc)
WORK_MARKER = ".birdclef-stack-dryrun"
WORK_ENTRIES = (WORK_MARKER, "venv", "input", "working", "reference", "executed.ipynb", "notebook_output.txt",
                "reference_submission.csv")

RUNNER = """
import sys, nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
# unix-socket transport: a fresh network namespace has no loopback interface up
km = KernelManager(kernel_name="python3", transport="ipc")
client = NotebookClient(nb, km=km, timeout=int(sys.argv[3]), kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[4]}})
try:
    client.execute()
finally:
    nbformat.write(nb, sys.argv[2])
"""


def network_namespace_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class DryRun:
    work: Path
    submission: Path
    reference: Path
    max_abs_diff: float
    n_rows: int
    network: str                           # "off (unshare -n)" | "ON (...)"
    run_report: dict
    modules: dict[str, str]
    projected_min: float
    budget_min: float
    planner_min: float | None = None
    notes: list[str] = field(default_factory=list)
    worst: str = ""                        # "row R, column C" of the largest difference
    projection: RunProjection | None = None     # the one-time cost and steady rate behind projected_min

    @property
    def within_budget(self) -> bool:
        return self.projected_min <= self.budget_min

    @property
    def agrees(self) -> bool:
        """The notebook predicted what ``pipelines.predict`` does, within :data:`TOLERANCE`."""
        return self.max_abs_diff <= TOLERANCE

    def disagreement(self) -> str:
        """One line saying how the notebook and pipelines.predict differ (when they do not agree)."""
        return (f"the notebook's predictions differ from pipelines.predict's by up to {self.max_abs_diff:.2e} "
                f"({self.worst}; tolerance {TOLERANCE:g}): the bundle's toolkit or heads do not predict what this "
                f"checkout does; re-export the bundle with pipelines.export (outputs: {self.work})")

    def render(self) -> str:
        st = self.run_report["stage_seconds"]
        lines = [f"dry run in {self.work}: notebook executed headless, network {self.network}",
                 f"runtime imported from the bundle's wheels: {', '.join(f'{k} {v}' for k, v in self.modules.items())}",
                 f"submission {self.submission}: {self.n_rows} rows, validated; max |notebook - pipelines.predict| = "
                 f"{self.max_abs_diff:.2e} (unrounded probabilities; tolerance {TOLERANCE:g})",
                 f"notebook stages (s): {', '.join(f'{k} {v:.1f}' for k, v in st.items())}; files by level "
                 f"{self.run_report['levels']}"]
        lines += [f"warning: {w}" for w in self.run_report["warnings"][:10]]
        lines += [f"time guard: {e}" for e in self.run_report["guard_events"]]
        if self.planner_min is not None:
            lines.append(f"planner (costs measured at export): {self.planner_min:.1f} min")
        lines += [f"note: {n}" for n in self.notes]
        lines += self.projection.lines() if self.projection else []
        lines.append(f"projected Kaggle minutes: {self.projected_min:.1f} (budget {self.budget_min:.0f})")
        return "\n".join(lines)


HIDE_FINDER = """
class _DryRunHidden:
    names = frozenset({names!r})

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the dry run: the bundle must run "
                                      "without it)", name=name)
        return None


sys.meta_path.insert(0, _DryRunHidden())
"""


def make_image_venv(folder: Path, hide: tuple[str, ...] = ()) -> Path:
    """A fresh venv whose ``sys.path`` ends with this environment's site-packages (standing in for the
    packages Kaggle's image has), after its own: what the notebook installs there shadows them. Only
    the directories are added - their ``.pth`` files (an editable install of this toolkit) are not run,
    so the toolkit can only come from the bundle's wheel. ``hide``: top-level modules no process of the
    venv can import (a ``.pth`` puts a finder first on ``sys.meta_path`` that raises ModuleNotFoundError
    for them), e.g. ``tensorflow`` for a Perch bundle, whose notebook must run on its .tflite / .onnx
    alone. Returns the venv's python."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    image = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (Path(purelib) / "_kaggle_image.pth").write_text("\n".join(image) + "\n", encoding="utf-8")
    if hide:    # a .pth line starting with "import" is executed at start-up, before any user code
        code = HIDE_FINDER.format(names=sorted(hide))
        (Path(purelib) / "_dryrun_hidden.pth").write_text(f"import sys; exec({code!r})\n", encoding="utf-8")
    return python


def _link_inputs(work: Path, bundle: Path, audio: Path, manifest: dict, sample: Path | None) -> Path:
    root = work / "input"
    comp = root / "competitions" / manifest.get("competition", "birdclef-2026")
    (comp / "test_soundscapes").mkdir(parents=True)
    for f in sorted(audio.iterdir()):
        if f.is_file():
            (comp / "test_soundscapes" / f.name).symlink_to(f.resolve())
    if sample:
        shutil.copy(sample, comp / "sample_submission.csv")
    else:
        (comp / "sample_submission.csv").write_text(",".join(["row_id", *manifest["columns"]]) + "\n")
    ds = root / "datasets" / "dry-run-owner"
    ds.mkdir(parents=True)
    (ds / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
    return root


def _outputs(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    text = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                text.append(o.get("text", ""))
            elif o.get("output_type") == "error":
                text.append(f"{o.get('ename')}: {o.get('evalue')}")
    return "".join(text)


def dry_run(bundle: str | os.PathLike, audio: str | os.PathLike, *, work: str | os.PathLike | None = None,
            budget_min: float | None = None, n_files: int = 600, cpus: int = 4, sample: str | os.PathLike | None = None,
            timeout_s: int = 3600, allow_network: bool = False, hide: tuple[str, ...] | None = None,
            say=print) -> DryRun:
    """Run the bundle's notebook offline on ``audio`` (see the module doc). ``hide``: modules the notebook's
    venv cannot import (:func:`make_image_venv`); default: ``tensorflow`` when the bundle ships a Perch
    model (its notebook must not need TensorFlow), else none."""
    from submit.submission import list_audio, write_submission

    bundle, audio = Path(bundle).expanduser().resolve(), Path(audio).expanduser().resolve()
    manifest = verify_bundle(bundle)
    notes: list[str] = []
    if not audio.is_dir() or not list_audio(audio, on_skipped=notes.append):
        raise DataError(f"{audio}: no audio files to dry-run on" + (f" ({notes[0]})" if notes else ""))
    budget_min = float(budget_min or manifest.get("budget_min") or 90.0)
    work = Path(work).expanduser().resolve() if work else bundle.parent / f".{bundle.name}-dryrun"
    prepare_work(work)
    t = time.perf_counter()
    if hide is None:
        hide = ("tensorflow",) if manifest.get("perch_model") else ()
    venv_python = make_image_venv(work / "venv", tuple(hide))
    say(f"venv {work / 'venv'} ({time.perf_counter() - t:.1f} s); the notebook installs the bundle's wheels into it"
        + (f"; hidden there: {', '.join(hide)}" if hide else ""))
    root = _link_inputs(work, bundle, audio, manifest, Path(sample) if sample else None)
    working = work / "working"
    working.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "BIRDCLEF_STACK_BUNDLE",
                                                             "BIRDCLEF_STACK_COMPETITION", "BIRDCLEF_STACK_BIRDNET_DIR")}
    env.update(BIRDCLEF_STACK_INPUT=str(root), BIRDCLEF_STACK_WORKING=str(working),
               BIRDCLEF_STACK_BUDGET_MIN=str(budget_min), PIP_NO_INDEX="1", **{ENV_SAVE_PROBS: "1"}, PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [str(venv_python), "-c", RUNNER, str(bundle / NOTEBOOK), str(work / "executed.ipynb"), str(timeout_s),
           str(working)]
    if network_namespace_works():
        cmd, network = ["unshare", "-n", *cmd], "off (unshare -n)"
    elif allow_network:
        network = "ON (unshare -n is not permitted here; the run could have reached the network)"
    else:
        raise BundleError("cannot cut the network here (unshare -n failed); re-run with --allow-network to dry-run "
                          "with network on")
    say(f"executing the notebook headless, network {network} ...")
    t = time.perf_counter()
    result = subprocess.run(cmd, cwd=working, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    out_text = _outputs(work / "executed.ipynb") if (work / "executed.ipynb").exists() else ""
    (work / "notebook_output.txt").write_text(out_text + "\n--- stderr ---\n" + result.stderr, encoding="utf-8")
    if FALLBACK in out_text:
        reason = out_text.split(FALLBACK, 1)[1].splitlines()[0].strip()
        raise BundleError(f"the notebook fell back to the prior-only submission: {reason} (full output: "
                          f"{work / 'notebook_output.txt'})")
    if result.returncode != 0:
        tail = (out_text.strip().splitlines() or result.stderr.strip().splitlines() or ["?"])[-1]
        raise BundleError(f"the notebook failed: {tail} (full output: {work / 'notebook_output.txt'})")
    if not (working / REPORT_FILE).exists() or not (working / PROBS_FILE).exists():
        raise BundleError(f"the notebook ran but wrote no {REPORT_FILE} / {PROBS_FILE}: the bundle's toolkit wheel "
                          f"({manifest.get('toolkit_wheel')}) predates this dry run; re-export the bundle")
    report = json.loads((working / REPORT_FILE).read_text())
    modules = json.loads(out_text.split("runtime modules:", 1)[1].splitlines()[0])
    prefix = str(work / "venv")
    for name in ("ai_edge_litert", "submit"):
        if not modules[name].startswith(prefix):
            raise BundleError(f"the notebook imported {name} from {modules[name]}, not from the bundle's wheels in "
                              f"{prefix}: the bundle lacks it")
    submission = working / "submission.csv"
    columns = manifest["columns"]
    audio_in = root / "competitions" / manifest.get("competition", "birdclef-2026") / "test_soundscapes"
    row_ids, probs = reference_predictions(bundle, manifest, audio_in, report["levels"], work / "reference")
    reference = work / "reference_submission.csv"
    write_submission(reference, row_ids, probs, columns)
    _max_abs_diff(submission, reference)                 # same columns and row ids, else BundleError
    diff, worst = compare_probabilities(np.load(working / PROBS_FILE), probs, row_ids, columns)
    projection = project_dry_run(report, manifest, n_files, cpus, wall)
    return DryRun(work, submission, reference, diff, len(row_ids), network, report,
                  {k: v for k, v in modules.items() if k in ("ai_edge_litert", "submit")},
                  projection.projected_s / 60.0, budget_min, projection.planner_min, notes, worst, projection)


def prepare_work(work: Path) -> None:
    """Make ``work`` a dry run's own empty folder: create it (marker first), or clear one a dry run made
    (only :data:`WORK_ENTRIES`); refuse a non-empty folder without the marker, touching nothing."""
    if work.exists() and not work.is_dir():
        raise UserInputError(f"--work {work} is a file, not a folder; choose a new or empty folder")
    if work.is_dir() and any(work.iterdir()):
        if not (work / WORK_MARKER).is_file():
            raise UserInputError(f"--work {work} is not empty and was not made by pipelines.dryrun (no {WORK_MARKER} "
                                 "in it); nothing was touched - choose a new or empty folder")
        for name in WORK_ENTRIES[1:]:
            entry = work / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).write_text("made by python -m pipelines.dryrun: a re-run removes "
                                    f"{', '.join(WORK_ENTRIES[1:])} here and nothing else\n", encoding="utf-8")


def reference_predictions(bundle: Path, manifest: dict, audio: Path, by_level: dict[str, int],
                          links: Path) -> tuple[list[str], np.ndarray]:
    """``pipelines.predict``'s rows for what the notebook did: its files in order, as many per level as its
    report says (``by_level``: the time guard moves the remaining files down the levels); files at a head
    level are predicted with that head, files at the prior level get the top head's class prior."""
    from submit.predict import open_predictor, predict_audio
    from submit.submission import expected_row_ids, list_audio

    files, columns = list_audio(audio), manifest["columns"]
    chain = [*manifest["levels"], PRIOR_LEVEL]
    counts = [int(by_level.get(name, 0)) for name in chain]
    if sum(counts) != len(files) or set(by_level) - set(chain):
        raise BundleError(f"the notebook's report counts files by level {by_level}, but the levels are {chain} and "
                          f"there are {len(files)} files: its toolkit predates this dry run; re-export the bundle")
    row_ids: list[str] = []
    blocks: list[np.ndarray] = []
    start = 0
    for name, n in zip(chain, counts, strict=True):
        part, start = files[start:start + n], start + n
        if not part:
            continue
        if name == PRIOR_LEVEL:
            top = open_predictor(bundle / "heads" / chain[0])
            prior = np.asarray(top.output_prior)[[top.class_names.index(c) for c in columns]]
            ids = [rid for f in part for rid in expected_row_ids(f)]
            row_ids, blocks = row_ids + ids, [*blocks, np.tile(prior, (len(ids), 1))]
            continue
        folder = audio
        if n < len(files):                     # only this level's files: links in a folder of their own
            folder = links / name
            folder.mkdir(parents=True)
            for f in part:
                (folder / f.name).symlink_to(f.resolve())
        ids, probs, _ = predict_audio(bundle / "heads" / name, folder, columns, workers=1)
        row_ids, blocks = row_ids + ids, [*blocks, probs]
    return row_ids, np.vstack(blocks) if blocks else np.zeros((0, len(columns)))


def compare_probabilities(notebook: np.ndarray, reference: np.ndarray, row_ids: list[str],
                          columns: list[str]) -> tuple[float, str]:
    """The largest |notebook - reference| and where it is (``"row R, column C"``)."""
    if notebook.shape != reference.shape:
        raise BundleError(f"the notebook saved {notebook.shape} probabilities, pipelines.predict made {reference.shape}")
    if not reference.size:
        return 0.0, ""
    delta = np.abs(notebook.astype(np.float64) - reference)
    i, j = np.unravel_index(int(np.argmax(delta)), delta.shape)
    return float(delta[i, j]), f"row {row_ids[i]}, column {columns[j]}"


def _max_abs_diff(a: Path, b: Path) -> float:
    import csv

    def read(p: Path) -> tuple[list[str], list[str], np.ndarray]:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return rows[0], [r[0] for r in rows[1:]], np.array([[float(x) for x in r[1:]] for r in rows[1:]])

    ha, ia, pa_ = read(a)
    hb, ib, pb = read(b)
    if ha != hb or ia != ib:
        raise BundleError(f"the notebook's submission and pipelines.predict's differ in columns or row ids ({a}, {b})")
    return float(np.abs(pa_ - pb).max()) if pa_.size else 0.0


@dataclass(frozen=True)
class RunProjection:
    """The notebook's run here, split in two and projected to Kaggle (:func:`project_dry_run`)."""

    once_s: float               # one-time seconds here: the notebook's wall minus the steady per-file work
    per_file_s: float           # steady seconds per 60-s file in one process (S(n)-corrected to one worker)
    rate_files: int             # files the rate is from (after their worker's first, unless too few)
    steady: bool                # the rate is from files after each worker's first (else first files: warm-up in)
    trusted: bool               # enough such files: at least max(2, pool) of them
    pool: int                   # processes that ran at once here
    load_s: float               # mean predictor load per worker here (part of once_s)
    n_files: int
    cpus: int
    target_per_file_s: float    # wall seconds per 60-s file on ``cpus`` CPUs: per_file_s / S(cpus)
    projected_s: float          # once_s + n_files x target_per_file_s
    model: str                  # the scaling model's words (:func:`submit.plan.speedup_model`)
    planner_min: float | None = None    # the planner's total for the bundle's costs measured at export

    def lines(self) -> list[str]:
        """The two figures, the scaling, and a warning when the rate cannot be trusted."""
        rate = (f"from {self.rate_files} file(s) after their worker's first" if self.steady else
                f"from {self.rate_files} first file(s) of their workers: warm-up included, an upper bound")
        out = [f"one-time cost here: {self.once_s:.1f} s (kernel start, install, verify, predictor loads "
               f"{self.load_s:.1f} s per worker, first-file warm-up, finish, write)",
               f"steady rate: {self.per_file_s:.2f} s per 60-s file in one process ({rate}; {self.pool} ran at once "
               f"here) -> {self.target_per_file_s:.3f} s per file on {self.cpus} CPUs with {self.model}",
               f"projection: {self.once_s:.0f} s + {self.n_files} files x {self.target_per_file_s:.3f} s = "
               f"{self.projected_s / 60:.1f} min"]
        if not self.trusted:
            need = self.pool + max(2, self.pool)
            out.append(f"warning: too few files to trust the rate ({self.rate_files} usable; each of the {self.pool} "
                       f"worker(s)' first file pays its warm-up): dry-run at least {need} files"
                       + (f"; the planner's {self.planner_min:.1f} min uses the costs measured at export"
                          if self.planner_min is not None else ""))
        return out


def project_dry_run(report: dict, manifest: dict, n_files: int, cpus: int, wall: float) -> RunProjection:
    """Kaggle seconds for ``n_files`` 60-s files on ``cpus`` CPUs from the notebook's own run here
    (``report``: its :data:`~submit.runtime.REPORT_FILE`; ``wall``: the notebook's wall seconds here).

    The planner's model (:mod:`submit.plan`): one-time cost + files x per-file cost / ``S(cpus)``, with
    the planner's scaling ``S`` (:func:`submit.plan.speedup_model`; ``S(n) = n`` without measured costs).
    Each predicted file's seconds in its worker (``file_timing``) is scaled to 60 s (x 12 / its windows) and to
    one process (x ``S(pool) / pool``: ``pool`` processes shared the CPUs); the steady per-file cost is the mean
    over the files after their worker's first (a worker's first file pays its warm-up), or over the first
    files when there are no others (then an upper bound, and not trusted). The one-time cost is the rest:
    ``wall`` minus each file's steady share of the wall (its steady cost x its windows / 12 / ``S(pool)``) -
    kernel start, install, verify, predictor loads, first-file warm-up, finish and write, whatever the file
    count. Files without decodable audio (0 windows) cost only their one-time share. The rate is trusted
    with at least ``max(2, pool)`` files after their worker's first."""
    from featurestore.windows import SOUNDSCAPE_SECONDS, WINDOW_SECONDS
    from submit.plan import Costs, project, speedup_model

    timing = report.get("file_timing")
    if timing is None:
        raise BundleError(f"the notebook's {REPORT_FILE} has no per-file timing (file_timing): the bundle's toolkit "
                          "predates this dry run; re-export the bundle with pipelines.export")
    costs = Costs.from_json(manifest["stage_costs"]) if "stage_costs" in manifest else None
    speedup, model = speedup_model(costs)
    per_window = SOUNDSCAPE_SECONDS / WINDOW_SECONDS
    audio = [t for t in timing if t["windows"] > 0]
    steady = [t for t in audio if not t["first"]]
    used = steady or [t for t in audio if t["first"]]

    def one_process(t: dict) -> float:         # seconds of a 60-s file in one process
        return t["s"] * per_window / t["windows"] * speedup(t["pool"]) / t["pool"]

    per_file = float(np.mean([one_process(t) for t in used])) if used else 0.0
    share = sum(per_file * t["windows"] / per_window / speedup(t["pool"]) for t in audio)
    once = max(0.0, wall - share)
    pool = max((t["pool"] for t in timing), default=1)
    loads = [t["load_s"] for t in timing if t["first"] and t["load_s"] > 0]
    target = per_file / speedup(cpus)
    planner = project(costs, n_files, cpus)[0].total_s / 60.0 if costs else None
    return RunProjection(once, per_file, len(used), bool(steady), len(steady) >= max(2, pool), pool,
                         float(np.mean(loads)) if loads else 0.0, n_files, cpus, target, once + n_files * target,
                         model, planner)
