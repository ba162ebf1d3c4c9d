"""``python -m pipelines.search``: the CSV and the self-contained HTML page are written whole (atomically) with the
hits of the library's search; a missing --out folder, a wrong suffix and bad SQL give one ``error:`` line and exit
2 with nothing written. In-process (``run_main``), on the trained demo store with ``--no-cache`` (the shared store
stays unwritten)."""

from __future__ import annotations

import csv
import re

import pytest

from featurestore.store import FeatureStore
from models.search import SearchParams, search
from pipelines import search as search_job
from pipelines._cli import run_main


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        run_main(search_job.main, argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_csv_holds_the_search_hits(demo_trained, tmp_path, capsys):
    out = tmp_path / "hits.csv"
    code, stdout, err = _run(["--store", str(demo_trained.store), "--query", "class:banana", "--k", "15",
                              "--exclude-labelled", "--per-site", "4", "--no-cache", "--out", str(out)], capsys)
    assert code == 0, err
    assert "15 hit(s)" in stdout
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["rank", "window_id", "filename", "start_s", "site", "score", "best_query"]
    with FeatureStore.open(demo_trained.store, create=False, read_only=True) as store:
        want = search(store, "birdnet", ["class:banana"], SearchParams(k=15, exclude_labelled=True, per_site=4),
                      use_cache=False)
    assert [r["window_id"] for r in rows] == [h.window_id for h in want.hits]
    assert [int(r["rank"]) for r in rows] == list(range(1, 16))
    assert [float(r["score"]) for r in rows] == [round(h.score, 6) for h in want.hits]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hits.csv"]          # no temporary file left


def test_html_page_is_self_contained(demo_trained, demo_data, tmp_path, capsys):
    out = tmp_path / "hits.html"
    clip = sorted((demo_data / "train_audio" / "banana").glob("*.ogg"))[1]
    code, _, err = _run(["--store", str(demo_trained.store), "--query", f"{clip}@0", "--query", "class:banana",
                         "--k", "6", "--exclude-labelled", "--no-cache", "--data", str(demo_data),
                         "--out", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    cards = re.findall(r"<div class='clip' data-rank='(\d+)'>(.*?)</div>", page)
    assert [int(r) for r, _ in cards] == list(range(1, 7))
    for _, card in cards:
        assert "src='data:image/png;base64," in card
        assert "<audio controls preload='metadata' src='data:audio/ogg;base64," in card
    assert "class:banana" in page.split("id='hits'")[0] and f"{clip}@0" in page     # the query at the top
    assert not re.search(r"(src|href)=['\"]https?:", page)                          # nothing fetched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hits.html"]


@pytest.mark.parametrize("args, words", [
    (["--out", "{tmp}/missing/hits.csv"], "does not exist"),
    (["--out", "{tmp}/hits.txt"], "write a .csv or .html file"),
    (["--out", "{tmp}/hits.csv", "--where", "hourr < 3"], "window_id, source, filename, start_s, site, date, hour"),
    (["--out", "{tmp}/hits.csv", "--query", "class:nosuchbird"], "unknown class 'nosuchbird'"),
])
def test_refusals_are_one_error_line(demo_trained, tmp_path, capsys, args, words):
    argv = ["--store", str(demo_trained.store), "--no-cache"] + [a.format(tmp=tmp_path) for a in args]
    if "--query" not in argv:
        argv += ["--query", "class:banana"]
    code, _, err = _run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert list(tmp_path.iterdir()) == []
