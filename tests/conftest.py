"""Shared fixtures: the real shared data, a store ingested from it, and the small demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.demo_data import SMALL, generate_demo_dataset
from featurestore.ingest import run_ingest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bc2026" / "taxonomy.csv").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bc2026_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the real competition files in ../shared ingested (treat as read-only)."""
    store = tmp_path_factory.mktemp("bc2026") / "store"
    run_ingest(shared_data / "bc2026", store, workers=1)
    return store


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic demo dataset in competition layout (treat as read-only)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), SMALL, seed=7)


@pytest.fixture(scope="session")
def demo_store(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo ingested into a store (treat as read-only; copy it before writing)."""
    store = tmp_path_factory.mktemp("demo_store") / "store"
    run_ingest(demo_data, store, workers=2)
    return store


@pytest.fixture(scope="session")
def demo_embedded_store(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo with folds and BirdNET + classical features (copy it before writing)."""
    import shutil

    from embed.job import run_embed
    from featurestore.folds import make_folds

    store = tmp_path_factory.mktemp("demo_embedded") / "store"
    shutil.copytree(demo_store, store)
    make_folds(store)
    run_embed(store, ("birdnet", "classical"), workers=2)
    return store


@pytest.fixture(scope="session")
def store_copy(tmp_path_factory: pytest.TempPathFactory):
    """``store_copy(source, name)``: a private, writable copy of a shared fixture store."""
    import shutil

    def make(source: Path, name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "store"
        shutil.copytree(source, target)
        return target

    return make
