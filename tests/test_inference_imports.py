"""The inference path stays light enough for the Kaggle notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("optuna", "matplotlib", "pytest", "librosa", "pandas", "tensorflow", "torch", "tqdm")


def test_inference_modules_import_no_heavy_or_test_packages() -> None:
    code = (
        "import sys\n"
        "import models.predict, models.heads, models.submission, models.frame, models.metrics\n"
        "import embed.features, embed.birdnet, embed.classical, embed.custom, embed.audio\n"
        "import featurestore.store, featurestore.windows\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
