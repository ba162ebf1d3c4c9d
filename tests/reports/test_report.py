"""The data memo: real-store facts checked against the CSVs, builds before folds, plot data, rendering."""

from __future__ import annotations

import base64
import csv
import io
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embed.near_duplicates import file_means, near_duplicate_pairs
from featurestore.folds import make_folds
from featurestore.store import FeatureStore
from reports.data_memo import (
    RARE_EXAMPLES,
    SECTIONS,
    Memo,
    class_label,
    cooccurrence_image,
    cooccurrence_matrix,
    gather,
    imbalance_rows,
    no_training_data,
    soundscape_durations,
    write_memo,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MemoParser(HTMLParser):
    """Sections, images, per-section text and table rows, and the key-numbers box of a memo page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.section_text: dict[str, list[str]] = {}
        self.section_rows: dict[str, list[list[str]]] = {}
        self.keys: dict[str, list[str]] = {}
        self._key: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
            self.section_text[attrs.get("id")] = []
            self.section_rows[attrs.get("id")] = []
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "tr":
            self._row, self._key = [], attrs.get("data-key")
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._key:
                self.keys[self._key] = self._row
            elif self.sections:
                self.section_rows[self.sections[-1]].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self.sections:
            self.section_text[self.sections[-1]].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def section(self, sid: str) -> str:
        return " ".join(self.section_text[sid])


def parse(page: str) -> MemoParser:
    p = MemoParser()
    p.feed(page)
    return p


# ---------------------------------------------------------------------------- the CSVs, read independently
def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def truth(shared_data: Path) -> dict:
    """Facts of ../shared/data/bc2026 computed from its CSVs with the csv module (no store involved)."""
    root = shared_data / "bc2026"
    taxonomy = read_csv(root / "taxonomy.csv")
    train = read_csv(root / "train.csv")
    labels = read_csv(root / "train_soundscapes_labels.csv")
    windows: dict[tuple[str, str], set[str]] = {}
    for r in labels:   # the real file lists every window twice: one window = (file, start)
        windows.setdefault((r["filename"], r["start"]), set()).update(r["primary_label"].split(";"))
    clips = Counter(r["primary_label"] for r in train)
    scape = Counter(label for labs in windows.values() for label in labs)
    examples = {t["primary_label"]: clips[t["primary_label"]] + scape[t["primary_label"]] for t in taxonomy}
    return {
        "taxonomy": {t["primary_label"]: t for t in taxonomy},
        "by_class_name": Counter(t["class_name"] for t in taxonomy),
        "no_data": {lab for lab, n in examples.items() if n == 0},
        "rare": {lab for lab, n in examples.items() if 0 < n < RARE_EXAMPLES},
        "examples": examples,
        "focal_clips": len(train),
        "labelled_files": len({f for f, _ in windows}),
        "labelled_windows": len(windows),
        "sites": len({f.split("_")[3] for f, _ in windows}),
        "windows": windows,
    }


@pytest.fixture(scope="module")
def real_memo(bc2026_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Memo, str, Path]:
    """(memo facts, HTML page, store path) of the real bc2026 store, built before any folds exist."""
    store = tmp_path_factory.mktemp("report_bc2026") / "store"
    shutil.copytree(bc2026_store, store)
    with FeatureStore.open(store, create=False, read_only=True) as s:
        assert not s.has_table("folds"), "precondition: the real store copy must have no folds yet"
        memo = gather(s)
    out = write_memo(store, store.parent / "memo.html")
    return memo, out.read_text(encoding="utf-8"), store


# ---------------------------------------------------------------------------- the real store
def test_real_memo_lists_exactly_the_classes_without_training_data(real_memo, truth):
    memo, page, _ = real_memo
    p = parse(page)
    rows = p.section_rows["no-training-data"]
    header, body = rows[0], rows[1:]
    assert header[:4] == ["primary_label", "class_name", "scientific_name", "common_name"]
    listed = [r[0] for r in body]
    assert len(listed) == len(set(listed)) == len(truth["no_data"])
    assert set(listed) == truth["no_data"]
    assert 100 < len(truth["no_data"]) < 234          # most of the taxonomy, not all of it
    for label, class_name, sci, common, *_ in body:    # names come from the taxonomy table
        t = truth["taxonomy"][label]
        assert (class_name, sci, common) == (t["class_name"], t["scientific_name"], t["common_name"])
    assert f"{len(truth['no_data'])} of 234 classes have no training data" in " ".join(p.section("no-training-data").split())
    assert {r["primary_label"] for r in no_training_data(memo.classes)} == truth["no_data"]


def test_real_memo_key_numbers(real_memo, truth):
    _, page, store = real_memo
    keys = {k: (row[1], row[2]) for k, row in parse(page).keys.items()}
    n_no_data = len(truth["no_data"])
    assert keys["classes"][0] == "234"
    assert keys["classes"][1] == ", ".join(f"{g} {n}" for g, n in sorted(truth["by_class_name"].items(),
                                                                          key=lambda kv: (-kv[1], kv[0])))
    assert keys["classes_with_data"][0] == str(234 - n_no_data)
    assert keys["classes_no_data"][0] == str(n_no_data)
    assert keys["classes_rare"][0] == str(len(truth["rare"]))
    assert keys["focal_clips"][0] == str(truth["focal_clips"]) == "4"
    assert keys["labelled_soundscapes"][0] == str(truth["labelled_files"])
    assert keys["labelled_windows"][0] == str(truth["labelled_windows"]) == "739"
    assert keys["sites"][0] == str(truth["sites"])
    assert keys["unlabelled_soundscapes"][0] == "0"     # no soundscape audio in ../shared
    assert keys["test_soundscapes"][0] == "0"
    assert keys["folds"] == ("no folds yet", f"run python -m pipelines.folds --store {store}")
    assert keys["ingest_problems"][0] == "0"
    assert int(keys["qa_outliers"][0]) >= 0
    assert parse(page).sections[0] == "key-numbers"     # the box comes first


def test_real_memo_builds_before_folds_without_raw_errors(real_memo):
    _, page, store = real_memo
    for raw in ("Error", "Exception", "Traceback", "Catalog", "Binder"):
        assert raw not in page, f"raw error text {raw!r} in the memo"
    p = parse(page)
    assert p.sections == [sid for sid, _ in SECTIONS]
    hint = f"no folds yet: run python -m pipelines.folds --store {store}"
    assert hint in p.section("folds")
    assert p.section("leakage").count(hint) == 3        # the three fold-based leakage queries
    assert "python -m pipelines.embed" in p.section("near-duplicates")
    assert "No folds yet: run python -m pipelines.folds" in p.section("risks")


def test_rare_and_no_data_do_not_overlap(real_memo, truth):
    memo, page, _ = real_memo
    status = {r["primary_label"]: r["status"] for r in memo.classes}
    assert {lab for lab, s in status.items() if s == "no training data"} == truth["no_data"]
    assert {lab for lab, s in status.items() if s == "rare"} == truth["rare"]
    assert truth["rare"] and not truth["rare"] & truth["no_data"]
    risks = " ".join(parse(page).section("risks").split())
    assert f"{len(truth['no_data'])} of 234 classes have no training data" in risks
    assert f"{len(truth['rare'])} classes are rare (1-{RARE_EXAMPLES - 1} examples" in risks


def test_imbalance_rows_have_no_zero_count_bars_and_carry_names(real_memo, truth):
    memo, _, _ = real_memo
    rows = imbalance_rows(memo.classes)
    assert len(rows) == 234 - len(truth["no_data"])
    assert {r["primary_label"] for r in rows} == set(truth["examples"]) - truth["no_data"]
    for r in rows:
        assert r["n_examples"] == r["n_clips"] + r["n_soundscape_windows"] == truth["examples"][r["primary_label"]] > 0
    assert [r["n_examples"] for r in rows] == sorted((r["n_examples"] for r in rows), reverse=True)
    frog = next(r for r in rows if r["primary_label"] == "1176823")     # a real focal clip
    assert frog["label"] == "1176823 · Wrestler Frog (Leptodactylus luctator)"
    assert class_label({"primary_label": "1161364", "common_name": "Guyalna cuta",
                        "scientific_name": "Guyalna cuta"}) == "1161364 · Guyalna cuta"


def test_cooccurrence_has_zero_diagonal_and_scale_from_zero(real_memo, truth):
    memo, _, store = real_memo
    with FeatureStore.open(store, create=False, read_only=True) as s:
        cooc = cooccurrence_matrix(s)
    assert cooc is not None and cooc.n_windows == truth["labelled_windows"]
    freq = Counter(label for labs in truth["windows"].values() for label in labs)
    assert cooc.labels == sorted(freq, key=lambda lab: (-freq[lab], lab))[:20]
    assert list(cooc.totals) == [freq[lab] for lab in cooc.labels]
    expected = np.zeros((20, 20), dtype=int)
    for labs in truth["windows"].values():
        for i, a in enumerate(cooc.labels):
            for j, b in enumerate(cooc.labels):
                expected[i, j] += i != j and a in labs and b in labs
    np.testing.assert_array_equal(cooc.matrix, expected)
    assert np.all(np.diag(cooc.matrix) == 0) and cooc.matrix.max() < cooc.totals.max()
    data, vmin, vmax = cooccurrence_image(cooc)
    assert vmin == 0.0 and vmax == float(expected.max())
    assert data.mask.diagonal().all() and not data.mask[~np.eye(20, dtype=bool)].any()


# ---------------------------------------------------------------------------- the demo store
def test_soundscape_durations_reported_apart(demo_store: Path, demo_data: Path):
    with FeatureStore.open(demo_store, create=False, read_only=True) as s:
        memo = gather(s)
    expected = []
    for source in ("train_soundscapes", "test_soundscapes"):
        seconds = Counter(round(sf.info(str(f)).duration, 1) for f in sorted((demo_data / source).glob("*.ogg")))
        expected += [(source, d, n) for d, n in sorted(seconds.items(), key=lambda t: (-t[1], t[0]))]
    assert soundscape_durations(memo.durations) == expected
    assert expected[0][1] == 60.0


def test_memo_renders_every_section_with_decodable_images(demo_store: Path, tmp_path: Path):
    import matplotlib.image as mpimg

    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    make_folds(store)
    out = write_memo(store, tmp_path / "memo.html")
    parser = parse(out.read_text(encoding="utf-8"))
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
    assert "site:S01" in parser.section("folds")       # the fold audit lists soundscape groups
    assert "no folds yet" not in parser.section("folds") + parser.section("leakage")
    keys = {k: row[1] for k, row in parser.keys.items()}
    assert keys["test_soundscapes"] == "4" and keys["labelled_soundscapes"] == "8"
    assert keys["folds"] != "no folds yet"
    assert "Every class has training data" in parser.section("no-training-data")


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
