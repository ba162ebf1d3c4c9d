"""The one choice of folds a cross-validation runs, and the one same-fold-version check."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.errors import StoreError, UserInputError
from featurestore.folds import folds_to_run, require_same_fold_version


def test_folds_to_run_are_the_folded_ones_or_a_checked_subset() -> None:
    folds = np.array([2, -1, 0, 1, 2, 0, -1])
    assert folds_to_run(folds) == [0, 1, 2]                       # -1 (no fold) is never run
    assert folds_to_run(folds, ()) == folds_to_run(folds, None) == [0, 1, 2]
    assert folds_to_run(folds, [2, 0, 2]) == [0, 2]
    with pytest.raises(StoreError, match=r"fold\(s\) \[5\] do not exist; the fold table has \[0, 1, 2\]"):
        folds_to_run(folds, [0, 5])
    assert folds_to_run(np.array([-1, -1])) == []


def test_a_different_fold_version_is_one_user_error() -> None:
    require_same_fold_version("base head h", "folds-a", "folds-a", "retrain it")
    with pytest.raises(UserInputError) as info:
        require_same_fold_version("base head h", "folds-b", "folds-a", "retrain it")
    assert str(info.value) == "base head h trained on fold version folds-b, but this run uses folds-a: retrain it"
