"""The labelling loop's probe and page picker (models/probe.py) on the embedded demo.

A simulated annotator labels page after page of class ``banana`` from the demo's held-back answers (the planted
calls of the windows without labels in the store: ``test_solution.csv`` and ``unlabelled_answers.csv``): positives
are found every round, far above the class's base rate; the held-out AUC is defined and above chance, and the last
probe ranks the windows nobody labelled well by an AUC computed here against the answers; margin items sit nearer
0.5 than the median candidate and top items are the best candidates but for the per-file cap; the effective-weight
scoring equals ``LinearHead.predict_proba``; a new loop resumes the round and never re-shows a labelled window;
undo; bad input is refused. One store copy for the module; ~10 small probe fits (the demo's 526 windows).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.demo_data import held_back_calls
from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from featurestore.user_labels import current_labels
from featurestore.windows import TEST
from models.probe import LabelLoop, ProbeParams, effective_weights, score_rows
from models.search import SearchParams

CLASS = "banana"
ROUNDS = 2              # probe pages labelled after the search page
PARAMS = ProbeParams(page_size=12, weak_negatives=2000, heldout_folds=2)   # 2 folds: one probe fit less a round


@pytest.fixture(scope="module")
def store(demo_embedded_store, store_copy):
    with FeatureStore.open(store_copy(demo_embedded_store, "probe"), create=False) as s:
        yield s


@pytest.fixture(scope="module")
def truth(demo_data) -> set[str]:
    return held_back_calls(demo_data.parent)[CLASS]


@pytest.fixture(scope="module")
def session_run(store, truth):
    """The simulated annotator: the search page, then ROUNDS probe pages, each labelled from the answers."""
    loop = LabelLoop(store, "birdnet", CLASS, "sim", params=PARAMS)
    pages, found, candidates = [], [], []
    shown: set[str] = set()
    expert = {r[0] for r in store.rows("SELECT window_id FROM window_labels")}
    for r in range(ROUNDS + 1):
        page = loop.page() if r == 0 else loop.next_page()
        pages.append(page)
        if loop.scores is not None:     # the probe's scores of the windows it could pick from
            rows = [i for i, w in enumerate(loop.ids) if w not in shown and w not in expert]
            candidates.append(dict(zip([loop.ids[i] for i in rows], loop.scores[rows].tolist(), strict=True)))
        else:
            candidates.append(None)
        for item in page.items:
            loop.label(item.window_id, "positive" if item.window_id in truth else "negative")
            shown.add(item.window_id)
        found.append(sum(item.window_id in truth for item in page.items))
    return loop, pages, found, candidates


def test_loop_finds_positives_and_the_probe_learns(store, truth, session_run):
    loop, pages, found, _ = session_run
    assert [p.round for p in pages] == list(range(ROUNDS + 1))
    assert pages[0].items and all(i.why == "search" for i in pages[0].items)
    assert not pages[0].stats.probe and pages[1].stats.probe
    shown = [i.window_id for p in pages for i in p.items]
    assert len(shown) == len(set(shown))                         # no window twice
    labelled = {r[0] for r in store.rows("SELECT window_id FROM window_labels")}
    assert not set(shown) & labelled                            # expert / focal windows are never shown
    for p in pages:
        per_file: dict[str, int] = {}
        for i in p.items:
            per_file[i.filename] = per_file.get(i.filename, 0) + 1
        assert max(per_file.values()) <= 2
    # positives found grow round after round, far above the class's base rate among the candidates
    assert all(f > 0 for f in found[:2]), found
    total = sum(found)
    base = len(truth) / store.first("SELECT count(*) FROM windows WHERE window_id NOT IN "
                                    "(SELECT window_id FROM window_labels)")[0]
    assert total / len(shown) > 2 * base, (found, base)
    stats = pages[-1].stats
    assert stats.positives == sum(found[:-1]) and stats.negatives == sum(len(p.items) for p in pages[:-1]) - stats.positives
    assert stats.heldout_auc is not None and stats.heldout_auc > 0.5, stats.line()
    store_pos = store.first("SELECT count(*) FROM window_labels WHERE list_contains(labels, ?)", [CLASS])[0]
    assert "2 folds by file" in stats.heldout_note
    assert stats.n_weak == min(PARAMS.weak_negatives, len(loop.ids) - stats.labelled - store_pos)
    assert stats.last_page_precision == pytest.approx(found[-2] / len(pages[-2].items))
    assert f"round {ROUNDS}:" in stats.line() and "held-out AUC" in stats.line()
    # the probe ranks the unlabelled windows it has not seen better than chance (an independent AUC)
    unseen = [w for w in loop.ids if w not in set(shown) | labelled]
    rows = loop._rows_of(unseen)
    y = np.array([loop.ids[r] in truth for r in rows])
    assert roc_auc_score(y, loop.scores[rows]) > 0.7


def test_margin_items_are_the_boundary_windows(session_run):
    _, pages, _, candidates = session_run
    for page, scores in zip(pages[1:], candidates[1:], strict=True):
        margin = [i.score for i in page.items if i.why == "margin"]
        top = [i.score for i in page.items if i.why == "top"]
        assert (len(top), len(margin)) == ProbeParams().shares()[:2]
        assert {i.why for i in page.items} == {"top", "margin", "audit"}
        for item in page.items:
            assert item.score == pytest.approx(scores[item.window_id], abs=1e-12)
        distance = np.abs(np.array(list(scores.values())) - 0.5)
        assert max(abs(s - 0.5) for s in margin) < np.median(distance), (margin, np.median(distance))
        # the top items are the highest scores but for windows of files already full on the page (cap 2)
        per_file: dict[str, int] = {}
        for i in page.items:
            per_file[i.filename] = per_file.get(i.filename, 0) + 1
        on_page = {i.window_id for i in page.items}
        for w, s in scores.items():
            if s > min(top) and w not in on_page:
                assert per_file.get(w.rpartition("@")[0].split("/", 1)[1], 0) == 2, (w, s, top)


def test_effective_weights_equal_predict_proba(session_run):
    loop, _, _, _ = session_run
    head = loop.head
    assert head.components_ is not None                     # the PCA path is folded too
    X = np.asarray(loop.cache.exact, np.float32)
    w, b = effective_weights(head)
    mine = score_rows(loop.cache.exact, w, b, threads=2)
    assert np.array_equal(mine, loop.scores)
    # the head's own arithmetic in float64: standardise, project, weigh
    Z = (X.astype(np.float64) - head.mean_) / head.scale_
    reference = 1 / (1 + np.exp(-(Z @ head.components_ @ head.coef_[:, 0] + head.bias_[0])))
    assert np.abs(mine - reference).max() < 1e-12
    # predict_proba computes in float32: equal to its rounding (measured 9e-7 on the demo)
    assert np.abs(mine - head.predict_proba(X)[:, 0]).max() < 2e-6


def test_resume_continues_the_round_and_never_reshows(store, session_run):
    loop, pages, _, _ = session_run
    again = LabelLoop(store, "birdnet", CLASS, "sim", params=PARAMS)
    assert again.round == loop.round + 1
    page = again.page()
    done = {r["window_id"] for r in current_labels(store).to_pylist() if r["primary_label"] == CLASS}
    assert page.items and not {i.window_id for i in page.items} & done
    assert all(i.label is None for i in page.items)
    with pytest.raises(UserInputError, match="not on the current page"):
        again.label(pages[0].items[0].window_id, "positive")
    # a click, then undo: the store and the page agree
    first = page.items[0].window_id
    again.label(first, "uncertain")
    assert again.page().items[0].label == "uncertain"
    result = again.undo()
    assert (result.window_id, result.was, result.now) == (first, "uncertain", "cleared")
    assert again.page().items[0].label is None
    with pytest.raises(UserInputError, match="nothing to undo"):
        again.undo()


def test_no_probe_yet_continues_the_search(store):
    loop = LabelLoop(store, "birdnet", "47158son02", "other", params=ProbeParams(page_size=6, weak_negatives=0,
                                                                                 per_file=None))
    first = loop.page()
    for item in first.items:
        loop.label(item.window_id, "uncertain")
    second = loop.next_page()
    assert second.round == 1 and not second.stats.probe and "no probe yet" in second.stats.line()
    assert all(i.why == "search" for i in second.items)
    assert len(second.items) == 6 and not {i.window_id for i in second.items} & {i.window_id for i in first.items}
    assert second.items[0].score <= first.items[-1].score + 1e-9     # the ranking continues


def test_where_limits_the_pages_and_labelled_windows_are_skipped(store, session_run):
    loop = LabelLoop(store, "birdnet", CLASS, "second", params=ProbeParams(page_size=8, weak_negatives=0),
                     search_params=SearchParams(where=f"source = '{TEST}'"))
    done = {r["window_id"] for r in current_labels(store).to_pylist() if r["primary_label"] == CLASS}
    items = loop.page().items
    assert len(items) == 8 and all(i.source == TEST for i in items)
    assert not {i.window_id for i in items} & done          # another annotator's labels of the class count too
    with pytest.raises(UserInputError, match="not a valid SQL condition"):
        LabelLoop(store, "birdnet", CLASS, "second", search_params=SearchParams(where="no_such_column = 1"))
    nothing = LabelLoop(store, "birdnet", CLASS, "second", search_params=SearchParams(where="start_s < 0")).page()
    assert nothing.items == [] and "no window left to show" in nothing.stats.line() and "--where" in nothing.stats.line()


def test_bad_input_is_refused(store):
    with pytest.raises(UserInputError, match="unknown class 'nosuchbird'"):
        LabelLoop(store, "birdnet", "nosuchbird", "sim")
    with pytest.raises(UserInputError, match="annotator"):
        LabelLoop(store, "birdnet", CLASS, "  ")
    for bad in (ProbeParams(page_size=0), ProbeParams(weak_weight=0), ProbeParams(margin_share=0.8, top_share=0.5),
                ProbeParams(per_file=0), ProbeParams(heldout_folds=1)):
        with pytest.raises(UserInputError):
            bad.check()
    loop = LabelLoop(store, "birdnet", CLASS, "bad", params=ProbeParams(page_size=3, weak_negatives=0))
    with pytest.raises(UserInputError, match="unknown label 'maybe'"):
        loop.label(loop.page().items[0].window_id, "maybe")
