"""The inference path stays light enough for the Kaggle notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("optuna", "matplotlib", "pytest", "librosa", "pandas", "tensorflow", "torch", "tqdm", "nbformat",
             "nbclient")
STORE_LIBS = ("duckdb", "pyarrow")
INFERENCE = ("submit.predict", "submit.head_predictor", "submit.stack_predictor", "submit.submission", "models.heads",
             "models.bundle", "embed.features", "embed.birdnet", "embed.classical", "embed.custom", "embed.cnn",
             "embed.registry", "embed.audio", "featurestore.windows", "featurestore.errors", "stack.bundle",
             "stack.apply", "stack.post", "submit.runtime")


# Packages a dependency imports only when they are installed (scikit-learn imports pandas if it can): made
# unimportable in the check below, so what is asserted is that the inference path neither needs nor imports
# them itself - whether or not they are installed (ray[data], a test extra, brings pandas).
OPTIONAL_FOR_DEPENDENCIES = ("pandas",)
BLOCK = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL_FOR_DEPENDENCIES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Absent())
"""


def _loaded(modules: tuple[str, ...], watch: tuple[str, ...]) -> list[str]:
    code = (f"{BLOCK}\nimport sys\nimport {', '.join(modules)}\n"
            f"print(sorted(m for m in {watch!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # a printed list of str


def test_inference_modules_import_no_heavy_or_test_packages() -> None:
    modules = (*INFERENCE, "models.frame", "models.metrics", "featurestore.store")
    assert _loaded(modules, FORBIDDEN) == []


def test_inference_modules_import_no_store_libraries() -> None:
    """duckdb and pyarrow are for reading a store; the notebook's predict path needs neither."""
    assert _loaded(INFERENCE, STORE_LIBS) == []
