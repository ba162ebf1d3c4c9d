"""Shared fixtures: the real shared data, a store ingested from it, the small demo (ingested, embedded,
trained) and a store of synthetic features that needs no audio.

One BLAS/OpenMP/TensorFlow thread for the whole session, set here and nowhere else in the tests: the suite runs on
2 shared cores, where BLAS threads only contend (a linear head measured 36 s unlimited vs 1.8 s on one
thread), and subprocess jobs inherit the same environment (:data:`embed.extractors.ONE_THREAD_ENV`).

Trained artefacts are made once per test run (:func:`demo_trained`): a module that writes to a store copies
it first (:func:`store_copy`); no module trains a head the session fixture already has. The suite runs in
two pytest-xdist workers (``-n auto --dist loadfile --no-loadscope-reorder`` in pyproject.toml: every test of a
file on one worker, the files in this module's order); the session fixtures are built once for both, under a
file lock (:func:`built_once`).
"""

from __future__ import annotations

import os

from embed.extractors import ONE_THREAD_ENV

os.environ.update(ONE_THREAD_ENV)       # before numpy/scipy/lightgbm start their thread pools

import pickle  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from featurestore.demo_data import SMALL, generate_demo_dataset  # noqa: E402
from featurestore.ingest import run_ingest  # noqa: E402

_ONE_THREAD = threadpool_limits(1)      # kept for the whole session (libraries already loaded by plugins)

# the demo's heads on a few hundred windows: LightGBM's defaults target ~100k windows
SMALL_DATA_LGBM = {"inner_valid_fraction": 0.0, "n_estimators": 60, "learning_rate": 0.05, "num_leaves": 7,
                   "feature_fraction": 0.2, "min_child_samples": 10, "n_jobs": 1}
STACK_RIDGE = {"site_prior": True, "hour_prior": True, "min_positives": 3}
STACK_POST = [("smooth", {"kernel": [1, 2, 1]}), ("filescale", {"a": 0.5, "top_k": 2})]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, made by ``build(folder)`` once per test run: shared by the xdist workers (the
    first to take the lock builds, the others wait and re-use), or per session without xdist. A build that
    failed half-way is redone (``.done`` marks a finished one)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent              # the run's base folder, above every worker's own
    folder = root / f"shared-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bc2026" / "taxonomy.csv").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bc2026_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the real competition files in ../shared ingested (treat as read-only)."""
    return built_once(tmp_path_factory, "bc2026", lambda f: run_ingest(shared_data / "bc2026", f / "store",
                                                                        workers=1)) / "store"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic demo dataset in competition layout (treat as read-only)."""
    return built_once(tmp_path_factory, "demo", lambda f: generate_demo_dataset(f, SMALL, seed=7)) / "data"


@pytest.fixture(scope="session")
def demo_store(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo ingested into a store (treat as read-only; copy it before writing)."""
    return built_once(tmp_path_factory, "demo_store", lambda f: run_ingest(demo_data, f / "store", workers=2)) / "store"


@pytest.fixture(scope="session")
def demo_embedded_store(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo with folds and BirdNET + classical features (copy it before writing)."""
    from embed.job import run_embed
    from featurestore.folds import make_folds

    def build(folder: Path) -> None:
        shutil.copytree(demo_store, folder / "store")
        make_folds(folder / "store")
        run_embed(folder / "store", ("birdnet", "classical"), workers=2)

    return built_once(tmp_path_factory, "demo_embedded", build) / "store"


@pytest.fixture(scope="session")
def store_copy(tmp_path_factory: pytest.TempPathFactory):
    """``store_copy(source, name)``: a private, writable copy of a shared fixture store."""

    def make(source: Path, name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "store"
        shutil.copytree(source, target)
        return target

    return make


@dataclass(frozen=True)
class TrainedDemo:
    """The small demo store with the common heads trained once (read-only: ``store_copy`` it before writing).

    ``results`` maps a short name to what :func:`models.training.train_head` returned; ``stack`` is a ridge
    stack over linear + LightGBM + BirdNET's zero-shot logits with site/hour priors and two post steps,
    ``stack_linear`` a plain ridge stack over the two linear heads."""

    store: Path
    results: dict
    stack: object           # stack.run.StackResult
    stack_linear: object

    def head(self, name: str) -> str:
        return self.results[name].head_id


@pytest.fixture(scope="session")
def demo_trained(demo_embedded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedDemo:
    """prior, zeroshot (BirdNET logits), linear on classical, linear on BirdNET, LightGBM on BirdNET max
    (:data:`SMALL_DATA_LGBM`) and two ridge stacks, trained once for the whole test run."""
    from models.frame import FrameSpec
    from models.training import train_head
    from stack.run import run_stack

    def build(folder: Path) -> None:
        store = folder / "store"
        shutil.copytree(demo_embedded_store, store)
        results = {
            "prior": train_head(store, "prior", FrameSpec("birdnet")),
            "zeroshot": train_head(store, "zeroshot", FrameSpec("birdnet_logits")),
            "classical": train_head(store, "linear", FrameSpec("classical")),
            "linear": train_head(store, "linear", FrameSpec("birdnet")),
            "lgbm": train_head(store, "lgbm", FrameSpec("birdnet", pooling="max"), overrides=SMALL_DATA_LGBM),
        }
        stack = run_stack(store, [results["linear"].head_id, results["lgbm"].head_id], "ridge", STACK_RIDGE,
                          STACK_POST, zero_shot=("birdnet_logits",))
        stack_linear = run_stack(store, [results["linear"].head_id, results["classical"].head_id], "ridge",
                                 {"min_positives": 3})
        # the other worker needs the result objects too (scores, reports, paths): a test-only cache
        (folder / "trained.pkl").write_bytes(pickle.dumps(TrainedDemo(store, results, stack, stack_linear)))

    folder = built_once(tmp_path_factory, "demo_trained", build)
    return pickle.loads((folder / "trained.pkl").read_bytes())


@pytest.fixture(scope="session")
def synthetic_store(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo, ingested and folded, with synthetic BirdNET-table features (32-d, class signal) written
    through the store's own writers (:mod:`embed.synthetic`): heads and stacks train on it with no audio
    decoded or embedded. Read-only: ``store_copy`` it before writing."""
    from embed.synthetic import SyntheticParams, write_synthetic_features
    from featurestore.folds import make_folds

    def build(folder: Path) -> None:
        shutil.copytree(demo_store, folder / "store")
        make_folds(folder / "store")
        write_synthetic_features(folder / "store", SyntheticParams(dim=32, frames_per_window=3, seed=11))

    return built_once(tmp_path_factory, "synthetic", build) / "store"


DEMO_CHAIN = ("demo_data", "demo_store", "demo_embedded_store", "demo_trained", "synthetic_store")
SHARED = (*DEMO_CHAIN, "bc2026_store")
# seconds per file (junit sums of a 2-worker run of 836 tests, 2026-12-05, with the shared builds a file's first
# test waited on; the Ctrl-C files at their usual times): the order the files are dealt out in, longest first; a
# file not listed counts as short. Only the order matters: refresh from --junitxml when the long files move.
FILE_SECONDS = {
    "pipelines/test_demo.py": 142, "models/test_training.py": 118, "students/test_cnn.py": 103,
    "submit/test_submit.py": 73, "submit/test_export_perch.py": 67, "submit/test_predict_windows.py": 58,
    "stack/test_stack_pipeline.py": 53, "embed/test_embed_ray.py": 29, "submit/test_predict.py": 28,
    "embed/test_embed_job.py": 28, "pipelines/test_progress.py": 24, "submit/test_predictor_contract.py": 22,
    "models/test_tuning.py": 19, "models/test_real_degenerate.py": 18, "featurestore/test_ingest.py": 17,
    "reports/test_label_app.py": 16, "students/test_pseudo.py": 13, "models/test_training_integrity.py": 12,
    "featurestore/test_reader_during_write.py": 11, "embed/test_extractor_contract.py": 10,
    "embed/test_embed_streaming.py": 10, "models/test_tune_storage.py": 10, "embed/test_convert.py": 10,
    "submit/test_bundle_safety.py": 8, "models/test_train_resume.py": 8,
}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Order the files (the order pytest-xdist deals them out in: ``--no-loadscope-reorder`` in pyproject.toml
    keeps it; xdist's default re-sorts files by their number of tests and left the longest for the end):

    1. ``models/test_training.py``: it builds the whole demo chain (embedding + the trained heads);
    2. ``pipelines/test_demo.py``, whose first test (the demo command, the longest test) needs no shared
       fixture: it runs on the other worker while the chain builds;
    3. the files that use a shared fixture, longest first (:data:`FILE_SECONDS`), so no long file is left
       for the end;
    4. the files that need no shared fixture, longest first: short, they even out the two workers' ends.

    Collection order is kept inside each group for equal times, and inside every file."""
    def uses_shared(item) -> bool:
        return any(name in SHARED for name in getattr(item, "fixturenames", ()))

    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(str(item.path), []).append(item)

    def key(path: str) -> tuple[int, float]:
        name = Path(path).as_posix().rpartition("/tests/")[2]
        seconds = -FILE_SECONDS.get(name, 0)
        if name == "models/test_training.py":
            return 0, seconds
        if name == "pipelines/test_demo.py":
            return 1, seconds
        return (2 if any(uses_shared(i) for i in by_file[path]) else 3), seconds

    items[:] = [i for path in sorted(by_file, key=key) for i in by_file[path]]
