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
from pipelines import report as report_job
from pipelines._cli import run_main
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


def test_missing_audio_files_become_notes_and_a_folder_without_any_is_refused(store: Path, heads: list[str], page,
                                                                               demo_data: Path, tmp_path: Path) -> None:
    _, full = page
    # worst=2, examples=1 shows the first example of each kind of the page's 2 worst classes (stable order)
    shown = [next(e for e in full.examples[c] if e.kind == k) for c in list(full.examples)[:2]
             for k in ("false positive", "missed positive")]
    files = {parse_window_id(e.window_id)[0] for e in shown}
    assert len(files) >= 2, "precondition: the examples come from at least two audio files"
    gone = parse_window_id(shown[0].window_id)[0]
    partial = tmp_path / "partial"
    for key in files - {gone}:                      # every example's file but one, as links to the real audio
        (partial / key).parent.mkdir(parents=True, exist_ok=True)
        (partial / key).symlink_to(demo_data / key)
    path, report = write_error_page(store, heads[0], tmp_path / "e.html", ErrorPageParams(worst=2, examples=1),
                                    data_dir=partial)
    examples = [ex for exs in report.examples.values() for ex in exs]
    assert [ex.window_id for ex in examples] == [ex.window_id for ex in shown]
    for ex in examples:
        missing = parse_window_id(ex.window_id)[0] == gone
        assert (ex.note is not None and "audio not found" in ex.note) == missing and (ex.audio_b64 is None) == missing
    n_missing = sum(parse_window_id(ex.window_id)[0] == gone for ex in examples)
    assert f"{n_missing} of {len(examples)} example windows have no audio" in " ".join(report.notes)
    parsed = parse(path)
    assert len(parsed.audio) == len(examples) - n_missing and parsed.sections == [sid for sid, _ in SECTIONS]

    (tmp_path / "empty").mkdir()                    # a folder holding none of the files: the wrong folder
    with pytest.raises(UserInputError, match=r"none of the 4 example windows' audio files is under .*empty.*--data"):
        write_error_page(store, heads[0], tmp_path / "x.html", ErrorPageParams(worst=2, examples=1),
                         data_dir=tmp_path / "empty")
    assert not (tmp_path / "x.html").exists()


def test_cli_refuses_a_missing_data_folder_and_out_folder_in_one_line(store: Path, heads: list[str], tmp_path: Path,
                                                                       capsys) -> None:
    def run(*argv: str) -> str:
        with pytest.raises(SystemExit) as info:
            run_main(errors_job.main, ["--store", str(store), "--head-id", heads[0], *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        return err

    out = tmp_path / "page.html"
    err = run("--data", str(tmp_path / "missing"), "--out", str(out))
    assert f"--data {tmp_path / 'missing'} does not exist: pass --data DIR" in err and not out.exists()
    for job, argv in ((errors_job.main, ["--head-id", heads[0]]), (report_job.main, [])):
        with pytest.raises(SystemExit) as info:
            run_main(job, ["--store", str(store), *argv, "--out", str(tmp_path / "nope" / "deeper" / "x.html")])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err == f"error: --out {tmp_path / 'nope' / 'deeper' / 'x.html'}: the folder " \
                      f"{tmp_path / 'nope' / 'deeper'} does not exist\n"      # pipelines.sql's rule and words
        assert not (tmp_path / "nope").exists()


def test_head_id_best_is_the_leaderboards_best_full_cv_head(store: Path, tmp_path: Path, capsys) -> None:
    import duckdb

    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)    # the table, read without our code
    try:
        rows = con.execute("SELECT head_id, mode, fold_mean FROM experiments").fetchall()
    finally:
        con.close()
    full = [(mean, head) for head, mode, mean in rows if mode == "full" and mean is not None]
    assert len(full) >= 3 and len({m for m, _ in full}) == len(full)      # precondition: no tie at the top
    best = max(full)[1]
    out = tmp_path / "best.html"
    assert errors_job.main(["--store", str(store), "--head-id", "best", "--out", str(out), "--worst", "0",
                            "--diversity-heads", "0"]) == 0
    assert f": head {best}, " in capsys.readouterr().out
    assert f"<code>{best}</code>" in out.read_text(encoding="utf-8")


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


# ---------------------------------------------------------------------------- the page in a real browser
CARD_LAYOUT_JS = """
const out = [];
for (const card of document.querySelectorAll('.clip')) {
  const box = card.getBoundingClientRect();
  const range = document.createRange();
  range.selectNodeContents(card);                 // every line box of the card's text, caption included
  const parts = [...range.getClientRects(), ...[...card.querySelectorAll('*')].map(e => e.getBoundingClientRect())];
  const code = card.querySelector('code');
  out.push({card: [box.left, box.top, box.right, box.bottom],
            parts: parts.filter(r => r.width > 0 && r.height > 0).map(r => [r.left, r.top, r.right, r.bottom]),
            caption: code.textContent, captionOverflow: code.scrollWidth - code.clientWidth});
}
return out;
"""

COLUMN_JS = """
const [section, name] = arguments;
return [...document.querySelectorAll('#' + section + ' table')].flatMap(t => {
  const i = [...t.querySelectorAll('thead th')].map(th => th.textContent).indexOf(name);
  return i < 0 ? [] : [...t.querySelectorAll('tbody tr')].map(tr => tr.children[i].textContent);
});
"""


def test_page_layout_audio_and_auc_cells_in_chromium_at_1400_px(page) -> None:
    from browser import chromium, open_page, wait_until

    path, report = page
    examples = [ex for exs in report.examples.values() for ex in exs]
    with chromium(width=1400) as driver:
        open_page(driver, path)
        assert driver.execute_script("return window.innerWidth") >= 1380
        # players know their length before any click (preload='metadata'; 'none' leaves them at 0:00 / 0:00)
        durations = wait_until(driver, "const a = [...document.querySelectorAll('audio')]; "
                                       "return a.length > 0 && a.every(x => x.readyState >= 1) && a.map(x => x.duration)")
        assert len(durations) == len(examples) and all(abs(d - 5.0) < 0.05 for d in durations), durations
        cards = driver.execute_script(CARD_LAYOUT_JS)
        page_overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        aucs = driver.execute_script(COLUMN_JS, "per-class", "auc")
        slice_aucs = driver.execute_script(COLUMN_JS, "slices", "auc")
    assert page_overflow <= 0, f"the page scrolls sideways by {page_overflow} px"
    assert [c["caption"] for c in cards] == [ex.window_id for ex in examples]
    assert any(len(c["caption"]) > 40 for c in cards)          # long captions (train_soundscapes/...ogg@25) are here
    for c in cards:                                          # every caption line, thumbnail and player inside its card
        left, top, right, bottom = c["card"]
        assert c["captionOverflow"] <= 0, c["caption"]
        for p_left, p_top, p_right, p_bottom in c["parts"]:
            assert left - 0.5 <= p_left and p_right <= right + 0.5 and top - 0.5 <= p_top and p_bottom <= bottom + 0.5, \
                (c["caption"], c["card"], (p_left, p_top, p_right, p_bottom))
    for a, b in ((a, b) for i, a in enumerate(cards) for b in cards[i + 1:]):   # no two cards overlap
        (al, at, ar, ab), (bl, bt, br, bb) = a["card"], b["card"]
        assert ar <= bl or br <= al or ab <= bt or bb <= at, (a["caption"], b["caption"])
    # one format for the whole AUC column; a class with nothing to rank says so instead of a blank
    assert len(aucs) == len(report.per_class)
    for cell, row in zip(aucs, report.per_class, strict=True):
        if np.isnan(row["auc"]):
            assert cell == ("no positives" if row["n_pos_scored"] == 0 else "no negatives"), (row, cell)
        else:
            assert re.fullmatch(r"\d\.\d{4}", cell) and float(cell) == pytest.approx(row["auc"], abs=5e-5), cell
    assert any(cell == "no positives" for cell in aucs)      # the demo has classes without a scored positive
    assert slice_aucs and all(re.fullmatch(r"\d\.\d{4}|no class scorable", cell) for cell in slice_aucs), slice_aucs
