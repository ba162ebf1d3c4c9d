"""The error-analysis page (reports/error_page.py, pipelines.errors) on real heads trained on the demo store:
sections, decodable images, audio that is the window it claims to be, numbers checked against sklearn,
and the pure parts on hand-worked cases."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from featurestore.errors import UserInputError
from featurestore.windows import parse_window_id
from models.training import OOF_DIR
from pipelines import errors as errors_job
from reports.error_page import (
    SECTIONS,
    ErrorPageParams,
    confusion_pairs,
    missed_mask,
    pick_examples,
    write_error_page,
)


class Page(HTMLParser):
    """Section ids, image and audio sources, and the per-class table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.audio: list[str] = []
        self.clips: list[str] = []
        self._section = None
        self._cell: list[str] | None = None
        self._row: list[str] = []
        self.per_class_rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
            self._section = a["id"]
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "audio":
            self.audio.append(a["src"])
        elif tag == "div" and a.get("class") == "clip":
            self.clips.append(a.get("data-kind", ""))
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._section == "per-class" and self._row:
            self.per_class_rows.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "errors")


@pytest.fixture(scope="module")
def heads(demo_trained) -> list[str]:
    return [demo_trained.head("linear"), demo_trained.head("classical")]


@pytest.fixture(scope="module")
def page(store: Path, heads: list[str], demo_data: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("errors") / "errors.html"
    return write_error_page(store, heads[0], out, ErrorPageParams(worst=3, examples=2))


def test_page_has_every_section_decodable_images_and_audio_of_the_right_window(page, demo_data: Path) -> None:
    path, report = page
    parsed = parse(path)
    assert parsed.sections == [sid for sid, _ in SECTIONS]
    assert len(parsed.images) >= 2 * 3 * 2 + 1          # 3 classes x (2 FP + 2 missed) thumbnails + diversity
    import matplotlib.image as mpimg

    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 20 and pixels.shape[1] > 20
    examples = [ex for exs in report.examples.values() for ex in exs]
    assert len(parsed.audio) == len(examples) == 12 and parsed.clips.count("missed positive") == 6
    for src, ex in zip(parsed.audio, examples, strict=True):
        assert src.startswith("data:audio/ogg;base64,")
        y, sr = sf.read(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert sr == 32000 and abs(len(y) / sr - 5.0) < 0.01
        file_key, start = parse_window_id(ex.window_id)          # the same window, read independently
        ref, ref_sr = sf.read(demo_data / file_key, start=int(start * 32000), frames=5 * 32000)
        assert ref_sr == 32000
        n = min(len(y), len(ref))
        corr = np.corrcoef(y[:n], ref[:n])[0, 1]
        assert corr > 0.9, (ex.window_id, corr)                  # Vorbis is lossy; a wrong window gives ~0


def test_per_class_auc_matches_sklearn_and_is_sorted_worst_first(page, store: Path, heads: list[str]) -> None:
    path, report = page
    oof = pq.read_table(store / OOF_DIR / f"{heads[0]}.parquet").to_pylist()
    rows = [r for r in oof if r["source"] == "train_soundscapes" and r["fold"] >= 0]
    assert report.n_windows == len(rows)
    from stack.inputs import load_inputs

    data = load_inputs(store, heads[:1])
    index = {w: i for i, w in enumerate(data.window_ids)}
    scored = [r for r in report.per_class if not np.isnan(r["auc"])]
    assert scored and [r["auc"] for r in scored] == sorted(r["auc"] for r in scored)
    for r in scored:
        y = np.array([data.Y[index[o["window_id"]], data.class_names.index(r["label"])] for o in rows])
        s = np.array([o[r["label"]] for o in rows])
        assert r["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
        assert r["n_pos_scored"] == int(y.sum())
    parsed = parse(path)
    assert [row[0] for row in parsed.per_class_rows[: len(scored)]] == [r["label"] for r in scored]
    # the worst classes shown are the lowest AUCs, in order
    assert list(report.examples) == [r["label"] for r in scored[:3]]


def test_stacked_head_page_shows_its_base_heads_in_the_diversity_matrix(store: Path, heads: list[str],
                                                                        tmp_path: Path, demo_trained) -> None:
    stacked = demo_trained.stack_linear             # a ridge stack over the two linear heads
    path, report = write_error_page(store, stacked.head_id, tmp_path / "stack.html",
                                    ErrorPageParams(worst=1, examples=1))
    assert report.diversity is not None and report.diversity.heads[:3] == (stacked.head_id, *heads)
    assert np.allclose(np.diag(report.diversity.matrix), 1.0)
    assert report.experiment["head"] == "stack" and f"fold mean {report.experiment['fold_mean']:.4f}" in \
        path.read_text(encoding="utf-8")


def test_missing_audio_becomes_notes_and_the_page_still_renders(store: Path, heads: list[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    path, report = write_error_page(store, heads[0], tmp_path / "e.html", ErrorPageParams(worst=1, examples=1),
                                    data_dir=tmp_path / "empty")
    parsed = parse(path)
    assert parsed.audio == [] and parsed.sections == [sid for sid, _ in SECTIONS]
    assert all(ex.note and "audio not found" in ex.note for exs in report.examples.values() for ex in exs)
    assert any("have no audio" in n for n in report.notes)


def test_cli_writes_the_page_and_refuses_an_unknown_head(store: Path, heads: list[str], tmp_path: Path,
                                                         capsys) -> None:
    out = tmp_path / "cli.html"
    assert errors_job.main(["--store", str(store), "--head", heads[1], "--out", str(out), "--worst", "1",
                            "--examples", "1"]) == 0
    assert out.exists() and "error page written to" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="no OOF table for head 'nope'"):
        errors_job.main(["--store", str(store), "--head-id", "nope", "--out", str(tmp_path / "x.html")])
    with pytest.raises(SystemExit) as info:              # argparse's, like every count option (test_cli_options)
        errors_job.main(["--store", str(store), "--head-id", heads[0], "--worst", "-1"])
    assert info.value.code == 2


# ---------------------------------------------------------------------------- hand-worked pure parts
def test_missed_positives_and_confusion_pairs_on_a_hand_worked_case() -> None:
    #            a    b    c
    Y = np.array([[1, 0, 0],
                  [1, 0, 0],
                  [0, 1, 0],
                  [0, 0, 1],
                  [0, 0, 0]], float)
    P = np.array([[0.9, 0.1, 0.2],
                  [0.1, 0.8, 0.3],      # a missed (below a's top negatives 0.6/0.4), b outscores it
                  [0.6, 0.7, 0.1],      # b found
                  [0.4, 0.2, 0.05],     # c missed: every negative of c scores above it; a outscores it
                  [0.2, 0.1, 0.3]])
    missed = missed_mask(Y, P, quantile=0.10)
    # a's negatives: 0.6, 0.4, 0.2 -> 90% quantile 0.56: 0.9 kept, 0.1 missed
    assert missed.tolist() == [[False, False, False], [True, False, False], [False, False, False],
                               [False, False, True], [False, False, False]]
    pairs = confusion_pairs(Y, P, ["a", "b", "c"], missed, limit=10)
    assert [(p["true_class"], p["outscored_by"], p["n_windows"]) for p in pairs] == [("a", "b", 1), ("c", "a", 1)]
    by = {(p["true_class"], p["outscored_by"]): p for p in pairs}
    assert by[("a", "b")]["mean_margin"] == pytest.approx(0.7) and by[("c", "a")]["mean_margin"] == pytest.approx(0.35)
    assert by[("a", "b")]["share_of_missed"] == 1.0
    fp, mp = pick_examples(Y, P, 0, 2)
    assert fp.tolist() == [2, 3] and mp.tolist() == [1, 0]


def test_page_file_is_written_atomically_and_mentions_its_command(page) -> None:
    path, _ = page
    text = path.read_text(encoding="utf-8")
    assert "python -m pipelines.errors" in text and not list(path.parent.glob(".*.tmp"))
    assert re.search(r"fold mean \d\.\d{4} ± \d\.\d{4}", text)
