"""The data memo renders from the demo store; near-duplicate search against a brute-force reference."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from featurestore.folds import make_folds
from featurestore.near_duplicates import file_means, near_duplicate_pairs
from pipelines.report import SECTIONS, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MemoParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_memo_renders_every_section_with_decodable_images(demo_store: Path, tmp_path: Path):
    import matplotlib.image as mpimg

    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    make_folds(store)
    out = write_report(store, tmp_path / "memo" / "memo.html")
    parser = MemoParser()
    parser.feed(out.read_text(encoding="utf-8"))
    assert parser.sections == [sid for sid, _ in SECTIONS]
    assert len(parser.images) >= 6   # imbalance, durations, site x hour, co-occurrence, audio QA, folds
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        pixels = mpimg.imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    text = " ".join(parser.text)
    assert "no recording date" in text                 # the risk list states the session proxy
    assert "site:S01" in text                          # the fold audit lists soundscape groups
    assert "skipped" not in text.split("Fold audit")[-1].split("Risks")[0]   # folds were found


def test_near_duplicates_match_brute_force():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(30, 64)).astype(np.float32)
    windows, vectors = [], []
    for i, v in enumerate(base):
        for w in range(3):
            windows.append(f"train_audio/c/{i:02d}.ogg@{5 * w}")
            vectors.append(v + rng.normal(scale=0.3, size=64))
    # a re-encoded copy of file 07: same windows + tiny noise, and a gain change (cosine is scale-free)
    for w in range(3):
        windows.append(f"train_audio/d/copy.ogg@{5 * w}")
        vectors.append(2.5 * (vectors[7 * 3 + w] + rng.normal(scale=0.01, size=64)))
    files, unit = file_means(windows, np.array(vectors))
    assert len(files) == 31
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    pairs = near_duplicate_pairs(files, unit, threshold=0.99, chunk=7)   # small chunk: crosses chunk edges
    # independent reference: float64 cosine of the per-file means
    means = {f: np.mean([v / np.linalg.norm(v) for w, v in zip(windows, vectors, strict=True)
                         if w.startswith(f + "@")], axis=0) for f in files}
    expected = []
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            cos = means[a] @ means[b] / np.linalg.norm(means[a]) / np.linalg.norm(means[b])
            if cos >= 0.99:
                expected.append((a, b, cos))
    assert [(a, b) for a, b, _ in pairs] == [(a, b) for a, b, _ in expected] == [
        ("train_audio/c/07.ogg", "train_audio/d/copy.ogg")]
    assert pairs[0][2] == pytest.approx(expected[0][2], abs=1e-5)
