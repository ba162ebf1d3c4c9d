"""A head trained with user labels uses them, keeps the folds of their files and says so (head id, experiment row).

One linear head on a private copy of the embedded demo store, compared with the session's plain linear head
(demo_trained.head("linear"): same data, no user labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore.errors import UserInputError
from featurestore.store import FeatureStore
from featurestore.user_labels import LabelClick, append_labels, undo
from models.frame import FrameSpec
from models.heads import make_params
from models.training import plan_cv, train_head

UNLABELLED = ("SELECT w.window_id FROM windows w LEFT JOIN soundscape_labels l ON w.filename = l.filename "
              "AND w.start_s = l.start_s WHERE w.source = 'train_soundscapes' AND l.filename IS NULL ORDER BY 1")


def file_folds(store: FeatureStore) -> dict[str, set[int]]:
    """file key -> the folds its windows have in the folds table (the independent reference)."""
    out: dict[str, set[int]] = {}
    for wid, fold in store.rows("SELECT window_id, fold FROM folds"):
        out.setdefault(wid.rpartition("@")[0], set()).add(int(fold))
    return out


def test_linear_head_with_user_labels(demo_embedded_store: Path, demo_trained, store_copy):
    root = store_copy(demo_embedded_store, "train_user_labels")
    with pytest.raises(UserInputError, match="has no user labels"):
        train_head(root, "linear", FrameSpec("birdnet"), user_labels=True)
    with FeatureStore.open(root, create=False) as store:
        unlabelled = [r[0] for r in store.rows(UNLABELLED)]
        new_pos, new_neg, uncertain, conflict = (unlabelled[0], unlabelled[13], unlabelled[26], unlabelled[40])
        focal, focal_labels = store.first("SELECT window_id, labels FROM window_labels "
                                          "WHERE source = 'train_audio' AND NOT list_contains(labels, 'banana') "
                                          "ORDER BY 1")
        expert = store.first("SELECT window_id FROM window_labels WHERE source = 'train_soundscapes' ORDER BY 1")[0]
        test_window = store.first("SELECT window_id FROM windows WHERE source = 'test_soundscapes' ORDER BY 1")[0]
        append_labels(store, [
            LabelClick(new_pos, "banana", "positive", "ann"), LabelClick(new_pos, "ashgre1", "positive", "ann"),
            LabelClick(new_neg, "banana", "negative", "ann"),
            LabelClick(uncertain, "banana", "uncertain", "ann"),
            LabelClick(conflict, "banana", "positive", "ann"), LabelClick(conflict, "banana", "negative", "bob"),
            LabelClick(focal, "banana", "positive", "ann"), LabelClick(focal, focal_labels[0], "negative", "ann"),
            LabelClick(expert, "banana", "negative", "ann"),          # expert windows: not applied
            LabelClick(test_window, "banana", "positive", "ann"),     # test soundscape: no fold, left out
            LabelClick(new_neg, "baymac", "positive", "ann"),
        ])
        undo(store, "ann")                                            # the baymac click is undone
        folds_of_file = file_folds(store)
        frame = plan_cv(store, FrameSpec("birdnet")).frame           # the labels in the training matrix
    row = {w: i for i, w in enumerate(frame.window_ids.tolist())}
    col = {c: i for i, c in enumerate(frame.class_names)}
    assert np.flatnonzero(frame.Y[row[new_pos]]).tolist() == sorted([col["banana"], col["ashgre1"]])
    assert not frame.Y[row[new_neg]].any()                           # a hard negative: every class 0
    assert uncertain not in row and conflict not in row and test_window not in row
    expected_focal = sorted(col[c] for c in [*focal_labels[1:], "banana"])
    assert np.flatnonzero(frame.Y[row[focal]]).tolist() == expected_focal
    assert frame.source[row[new_pos]] == "user_labels" and frame.source[row[focal]] == "train_audio"

    result = train_head(root, "linear", FrameSpec("birdnet"))
    plain = demo_trained.head("linear")
    assert result.head_id != plain
    with FeatureStore.open(root, create=False, read_only=True) as store:
        got = store.first("SELECT n_user_windows, n_user_positives, n_user_negatives, user_labels, data_version, "
                          "n_eval_windows, n_train_windows FROM experiments WHERE head_id = ?", [result.head_id])
    with FeatureStore.open(demo_trained.store, create=False, read_only=True) as store:
        base = store.first("SELECT data_version, n_eval_windows, n_train_windows FROM experiments "
                           "WHERE head_id = ?", [plain])
    # windows: new_pos, new_neg, focal; positives: 2 + 1 (focal), negatives: 1 + 1 (focal)
    assert got[:3] == (3, 3, 2)
    summary = json.loads(got[3])
    assert {k: summary[k] for k in ("n_new_windows", "skipped_expert", "skipped_no_fold", "n_uncertain",
                                    "n_conflicts")} == {"n_new_windows": 2, "skipped_expert": 1,
                                                        "skipped_no_fold": 1, "n_uncertain": 1, "n_conflicts": 1}
    assert got[4] == base[0]                                         # the data version stays the ingested one
    assert got[5] == base[1]                                         # the same windows are scored
    assert got[6] == base[2] + 2                                     # two more training windows
    # the head's config differs from the plain one in its user_labels entry only (the digest is in the head id)
    mine = json.loads((root / "heads" / result.head_id / "config.json").read_text())
    theirs = json.loads((demo_trained.store / "heads" / plain / "config.json").read_text())
    assert mine.pop("user_labels") == {"digest": summary["digest"], "n_windows": 3} and mine == theirs
    # so it stacks with a plain head of the same data (the prior, trained here without the labels)
    from stack.run import run_stack

    plain_prior = train_head(root, "prior", FrameSpec("birdnet"), user_labels=False).head_id
    assert "user_labels" not in json.loads((root / "heads" / plain_prior / "config.json").read_text())
    stacked = run_stack(root, [result.head_id, plain_prior], "ridge", {"min_positives": 3})
    assert stacked.head_id.startswith("stack-")

    # each user-labelled window is held out by its file's fold and trained on by every other fold's model
    oof = pq.read_table(root / "oof" / f"{result.head_id}.parquet").to_pylist()
    oof_fold = {r["window_id"]: (r["fold"], r["source"]) for r in oof}
    for w in (new_pos, new_neg, focal):
        (fold,) = folds_of_file[w.rpartition("@")[0]]
        assert oof_fold[w][0] == fold
        for k in sorted({f for fs in folds_of_file.values() for f in fs} - {-1}):
            trained = pq.read_table(root / "heads" / result.head_id / f"fold_{k}" / "train_windows.parquet")
            assert (w in set(trained.column("window_id").to_pylist())) == (k != fold), (w, k)
    assert oof_fold[new_pos][1] == "user_labels" and test_window not in oof_fold

    # undoing every click gives back the plain run's data version (hence its head id)
    with FeatureStore.open(root, create=False) as store:
        for who, clicks in (("ann", 9), ("bob", 1)):
            for _ in range(clicks):
                undo(store, who)
        plan = plan_cv(store, FrameSpec("birdnet"))
        assert plan.config("linear", make_params("linear", {}), FrameSpec("birdnet"), seed=0).user_labels is None
