"""A stacked head's level-2 model on its base heads' outputs: the inputs of unlabelled windows and
:func:`apply_stack` (the level-2 model, then the post steps). Shared by the inference path
(:mod:`submit.stack_predictor`) and the teacher of pseudo-labels (:mod:`students.pseudo`).

Imports neither pyarrow nor duckdb (the Kaggle inference path).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurestore.errors import BundleError, DataError
from featurestore.windows import file_of, parse_soundscape_name
from stack.bundle import StackBundle
from stack.inputs import StackInputs
from stack.post import FileLayout, apply_post

ZERO_SHOT_FALLBACK = 0.5     # a zero-shot source's value where a file has no usable audio


def unlabelled_inputs(bundle: StackBundle, window_ids: Sequence[str], P: np.ndarray) -> StackInputs:
    """Level-2 inputs of unlabelled windows: ``P`` (sources, windows, classes) in the bundle's source
    and class order; site and hour parsed from soundscape names (unknown when a name does not parse)."""
    ids = np.asarray([str(w) for w in window_ids], dtype=str)
    layout = bundle.layout
    P = np.asarray(P, dtype=np.float32)
    if P.shape != (len(layout.sources), len(ids), len(layout.class_names)):
        raise BundleError(f"stacked head {bundle.head_id}: inputs {P.shape} for {len(layout.sources)} sources x "
                          f"{len(ids)} windows x {len(layout.class_names)} classes")
    sites, hours = [], []
    for w in ids.tolist():
        try:
            name = parse_soundscape_name(file_of(w).rpartition("/")[2])
            sites.append(name.site)
            hours.append(name.hour)
        except DataError:
            sites.append(None)
            hours.append(-1)
    n, C = len(ids), len(layout.class_names)
    return StackInputs(ids, tuple(layout.sources), list(layout.class_names),
                       np.asarray(layout.class_groups, dtype=object), P, np.asarray(layout.available, bool),
                       np.zeros((n, C), np.float32), np.full(n, -1, np.int64),
                       np.array([file_of(w).partition("/")[0] for w in ids.tolist()], dtype=object),
                       np.array(sites, dtype=object), np.asarray(hours, dtype=np.int64))


def apply_stack(bundle: StackBundle, data: StackInputs, model=None) -> np.ndarray:
    """A level-2 model (default: the full-data one; a fold's for pseudo-labels) then the post steps (file
    blocks from the window ids): (windows, classes)."""
    p = (bundle.full if model is None else model).predict(data)
    steps = bundle.config.steps()
    if steps:
        p = apply_post(p, steps, FileLayout(data.window_ids), data.class_groups)
    return np.clip(p, 0.0, 1.0)
