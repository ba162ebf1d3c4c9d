"""User labels (featurestore/user_labels.py): a durable click log, latest wins, undo, validation, exports.

One private copy of the small demo store (ingested, no features needed) for the module."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore.competition import read_soundscape_labels
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from featurestore.user_labels import (
    TABLE,
    LabelClick,
    append_labels,
    current_labels,
    export_labels,
    training_labels,
    undo,
)
from pipelines._cli import run_main
from pipelines.label import main as label_main

UNLABELLED = ("SELECT w.window_id FROM windows w LEFT JOIN soundscape_labels l ON w.filename = l.filename "
              "AND w.start_s = l.start_s WHERE w.source = 'train_soundscapes' AND l.filename IS NULL ORDER BY 1")


@pytest.fixture(scope="module")
def labelled(demo_store: Path, store_copy) -> tuple[Path, list[str]]:
    """A demo store copy and three unlabelled train-soundscape window ids of different files."""
    root = store_copy(demo_store, "user_labels")
    with FeatureStore.open(root, create=False, read_only=True) as store:
        ids = [r[0] for r in store.rows(UNLABELLED)]
    by_file: dict[str, str] = {}
    for w in ids:
        by_file.setdefault(w.rpartition("@")[0], w)
    return root, sorted(by_file.values())[:3]


def state(store: FeatureStore) -> dict[tuple[str, str, str], str]:
    rows = current_labels(store, include_cleared=True).to_pylist()
    return {(r["window_id"], r["primary_label"], r["annotator"]): r["label"] for r in rows}


def test_append_latest_wins_and_undo(labelled):
    root, (w1, w2, _w3) = labelled
    with FeatureStore.open(root, create=False) as store:
        append_labels(store, [LabelClick(w1, "banana", "positive", "ann", "s1", "banana call", 1)])
        append_labels(store, [LabelClick(w1, "banana", "negative", "ann", "s1")])
        append_labels(store, [LabelClick(w1, "banana", "positive", "bob", "s9")])
        append_labels(store, [LabelClick(w2, "ashgre1", "uncertain", "ann", "s2")])
        assert state(store) == {(w1, "banana", "ann"): "negative", (w1, "banana", "bob"): "positive",
                                (w2, "ashgre1", "ann"): "uncertain"}
        # the SQL view says the same
        assert sorted(store.rows("SELECT window_id, annotator, label FROM user_labels_current")) == sorted(
            [(w1, "ann", "negative"), (w1, "bob", "positive"), (w2, "ann", "uncertain")])
        # undo within session s1: ann's last s1 click (negative) goes, the positive before it is back
        done = undo(store, "ann", session="s1")
        assert (done.was, done.now, done.window_id) == ("negative", "positive", w1)
        assert state(store)[(w1, "banana", "ann")] == "positive"
        # undo without a session: ann's latest click in effect is the s2 one
        assert undo(store, "ann").window_id == w2
        assert (w2, "ashgre1", "ann") not in {k for k, v in state(store).items() if v != "cleared"}
        assert undo(store, "ann").now == "cleared"          # back past the first click
        with pytest.raises(UserInputError, match="nothing to undo for annotator 'ann'"):
            undo(store, "ann")
        assert state(store)[(w1, "banana", "bob")] == "positive"   # another annotator's label untouched
        log = store.rows(f"SELECT action, label, labelled_at FROM {TABLE} WHERE annotator = 'ann' "
                         "ORDER BY labelled_at")
        # every click of ann is kept (3 sets, 3 undos), times strictly rising
        assert [a for a, _, _ in log] == ["set", "set", "set", "undo", "undo", "undo"]
        assert all(a[2] < b[2] for a, b in zip(log, log[1:], strict=False))
        # cleanup for the next tests: bob's label cleared
        append_labels(store, [LabelClick(w1, "banana", "cleared", "bob")])
        assert not current_labels(store).num_rows


def test_bad_ids_refused_and_nothing_written(labelled):
    root, (w1, _w2, _w3) = labelled
    with FeatureStore.open(root, create=False) as store:
        before = len(store.part_files(TABLE))
        with pytest.raises(UserInputError, match=r"unknown window id\(s\) \['train_soundscapes/nope.ogg@0'\]"):
            append_labels(store, [LabelClick(w1, "banana", "positive", "ann"),
                                  LabelClick("train_soundscapes/nope.ogg@0", "banana", "positive", "ann")])
        with pytest.raises(UserInputError, match=r"unknown class\(es\) \['not_a_bird'\]"):
            append_labels(store, [LabelClick(w1, "not_a_bird", "positive", "ann")])
        with pytest.raises(UserInputError, match=r"unknown label value\(s\) \['yes'\]"):
            append_labels(store, [LabelClick(w1, "banana", "yes", "ann")])
        with pytest.raises(UserInputError, match="annotator"):
            append_labels(store, [LabelClick(w1, "banana", "positive", " ")])
        assert len(store.part_files(TABLE)) == before


def test_a_returned_click_survives_kill_9(labelled):
    """The writer is killed (SIGKILL: no close, no atexit) right after append_labels returns; a new
    process opening the store sees the click."""
    root, (_w1, _w2, w3) = labelled
    code = textwrap.dedent(f"""
        import os, signal
        from featurestore.store import FeatureStore
        from featurestore.user_labels import LabelClick, append_labels
        store = FeatureStore.open({str(root)!r}, create=False)
        append_labels(store, [LabelClick({w3!r}, "baymac", "positive", "carl", "crash")])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with FeatureStore.open(root, create=False, read_only=True) as store:
        assert state(store)[(w3, "baymac", "carl")] == "positive"
    # and a read-write open (the next writer takes over the stale lock) can undo it
    with FeatureStore.open(root, create=False) as store:
        assert undo(store, "carl").now == "cleared"


def test_exports_match_hand_worked_rows(labelled, tmp_path: Path, capsys):
    root, (w1, w2, w3) = labelled
    with FeatureStore.open(root, create=False) as store:
        focal = store.first("SELECT window_id FROM windows WHERE source = 'train_audio' ORDER BY 1")[0]
        append_labels(store, [LabelClick(w1, "banana", "positive", "ann", "e"),
                              LabelClick(w1, "ashgre1", "positive", "bob", "e"),
                              LabelClick(w2, "banana", "negative", "ann", "e"),
                              LabelClick(w3, "banana", "positive", "ann", "e"),
                              LabelClick(w3, "banana", "negative", "bob", "e"),     # a conflict: not exported
                              LabelClick(focal, "baymac", "positive", "ann", "e")])  # focal: not a soundscape row
        used = training_labels(store)
        assert used.n_conflicts == 1
        assert used.windows[w1] == (frozenset({"banana", "ashgre1"}), frozenset())
    f1, s1 = w1.split("/", 1)[1].split("@")

    def clock(s: int) -> str:
        return f"00:{s // 60:02d}:{s % 60:02d}"

    out = tmp_path / "labels.csv"
    assert export_labels(root, "soundscape-labels", out).n_rows == 1
    assert out.read_text() == (f"filename,start,end,primary_label\n"
                               f"{f1},{clock(int(s1))},{clock(int(s1) + 5)},ashgre1;banana\n")
    table, report = read_soundscape_labels(out, {"banana", "ashgre1"})   # the project's own reader takes it
    assert table.select(["filename", "start_s", "end_s", "labels"]).to_pylist() == [
        {"filename": f1, "start_s": float(s1), "end_s": float(s1) + 5, "labels": ["ashgre1", "banana"]}]
    assert not report.warnings and not report.conflicts

    plain = tmp_path / "plain.csv"
    export_labels(root, "csv", plain)
    rows = list(csv.DictReader(plain.open()))
    assert len(rows) == 6
    first = next(r for r in rows if r["window_id"] == w1 and r["annotator"] == "bob")
    assert {k: first[k] for k in ("source", "filename", "start_s", "end_s", "primary_label", "label", "session")} == {
        "source": "train_soundscapes", "filename": f1, "start_s": s1, "end_s": str(int(s1) + 5),
        "primary_label": "ashgre1", "label": "positive", "session": "e"}

    raven = tmp_path / "selections.txt"
    export_labels(root, "raven", raven)
    lines = raven.read_text().splitlines()
    assert lines[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                                    "High Freq (Hz)", "Begin File", "File Offset (s)", "Species", "Label", "Annotator"]
    assert len(lines) == 7
    with FeatureStore.open(root, create=False, read_only=True) as store:
        rate = store.first("SELECT sample_rate FROM audio_inventory WHERE source || '/' || filename = ?",
                           [w1.rpartition("@")[0]])[0]
    body = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in body] == [str(i) for i in range(1, 7)]
    w1_rows = [r[1:] for r in body if r[7] == f1 and r[8] == f"{int(s1):.3f}"]
    assert w1_rows == [["Spectrogram 1", "1", f"{int(s1):.3f}", f"{int(s1) + 5:.3f}", "0.0", f"{rate / 2:.1f}", f1,
                        f"{int(s1):.3f}", species, "positive", who] for species, who in
                       (("ashgre1", "bob"), ("banana", "ann"))]

    # the job: a missing --out folder is one line, exit 2, nothing written
    with pytest.raises(SystemExit) as exit_info:
        run_main(label_main, ["--store", str(root), "--export", "raven", "--out", str(tmp_path / "no" / "x.txt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {tmp_path / 'no' / 'x.txt'}: the folder {tmp_path / 'no'} does not exist"]
    assert not (tmp_path / "no").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_compaction_keeps_every_click_and_a_reader_may_append(labelled):
    """pipelines.compact merges the one-part-per-click files into one and drops no click (the key is the
    event id), so the labels and the undo history are the same afterwards; once the table exists, a
    read-only open (no writer lock, as embed workers) appends a click too."""
    from featurestore.compact import compact_store

    root, (w1, _w2, _w3) = labelled
    with FeatureStore.open(root, create=False) as store:
        append_labels(store, [LabelClick(w1, "baymac", "positive", "dana", "rw")])
    with FeatureStore.open(root, create=False, read_only=True) as store:
        append_labels(store, [LabelClick(w1, "baymac", "negative", "dana", "ro")])
        before = (state(store), store.rows(f"SELECT * FROM {TABLE} ORDER BY event_id"))
        n_parts = len(store.part_files(TABLE))
    assert n_parts >= 2
    (result,) = compact_store(root, TABLE)
    assert (result.parts_after, result.superseded_rows) == (1, 0)
    with FeatureStore.open(root, create=False) as store:
        assert (state(store), store.rows(f"SELECT * FROM {TABLE} ORDER BY event_id")) == before
        assert undo(store, "dana").now == "positive"                # the history is still there to undo


def test_import_a_filled_in_search_csv(labelled, tmp_path: Path, capsys) -> None:
    """pipelines.label --import: the user filled the label column of a search CSV; blank rows skipped, every
    word of the table understood, a bad word or a missing column refused naming the line, nothing written."""
    root = labelled[0]
    with FeatureStore.open(root, create=False, read_only=True) as store:
        ids = [r[0] for r in store.rows(UNLABELLED)][10:16]
    hits = tmp_path / "hits.csv"

    def write(rows: list[tuple[str, str]], header=("rank", "window_id", "score", "best_query", "label")) -> None:
        with open(hits, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, (wid, label) in enumerate(rows, 1):
                w.writerow([i, wid, 0.9 - i / 100, "class:banana", label][:len(header)])

    write([(ids[0], "y"), (ids[1], " Negative "), (ids[2], ""), (ids[3], "?"), (ids[4], "maybe"), (ids[5], "p")])
    with FeatureStore.open(root, create=False, read_only=True) as store:
        before = state(store)
    with pytest.raises(SystemExit) as info:
        run_main(label_main, ["--store", str(root), "--import", str(hits), "--class", "banana", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == [f"error: {hits}:6: label 'maybe' is not one of positive, negative, "
                                            "uncertain (or p/n/u, y/n, 1/0, ?)"]
    with FeatureStore.open(root, create=False, read_only=True) as store:
        assert state(store) == before                      # all or nothing

    write([(ids[0], "y"), (ids[1], " Negative "), (ids[2], ""), (ids[3], "?"), (ids[4], "0"), (ids[5], "p")])
    assert label_main(["--store", str(root), "--import", str(hits), "--class", "banana", "--annotator", "cat"]) == 0
    assert capsys.readouterr().out.strip() == (f"imported 5 label(s) from {hits} (2 positive, 2 negative, "
                                               "1 uncertain); 1 row(s) left blank were skipped")
    with FeatureStore.open(root, create=False, read_only=True) as store:
        now = state(store)
        rows = {r["window_id"]: r for r in current_labels(store).to_pylist() if r["annotator"] == "cat"}
    assert {k: v for k, v in now.items() if k not in before} == {
        (ids[0], "banana", "cat"): "positive", (ids[1], "banana", "cat"): "negative",
        (ids[3], "banana", "cat"): "uncertain", (ids[4], "banana", "cat"): "negative",
        (ids[5], "banana", "cat"): "positive"}
    assert {r["query"] for r in rows.values()} == {"class:banana"} and {r["session"] for r in rows.values()} == {
        "import:hits.csv"}

    write([(ids[0], "y")], header=("rank", "window_id"))
    with pytest.raises(UserInputError, match=r"needs the columns window_id and label \(found rank, window_id\)"):
        label_main(["--store", str(root), "--import", str(hits), "--class", "banana"])
    with pytest.raises(SystemExit):
        label_main(["--store", str(root), "--import", str(hits)])          # no --class: a usage error
    assert "--import needs --class CODE" in capsys.readouterr().err
