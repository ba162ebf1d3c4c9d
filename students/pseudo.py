"""Pseudo-labels: a teacher head predicts every unlabelled soundscape window from stored features, fold
by fold (the library behind ``python -m pipelines.pseudo``).

**Fold-consistent.** For each fold ``k`` the teacher's fold-``k`` model - which never saw a labelled
window of fold ``k`` - labels every unlabelled window; fold ``k``'s student trains on exactly those
labels, so its fold score cannot be inflated by fold-``k`` labels leaking through the teacher. The
*full* labels (``teacher_fold = -1``: the mean of the fold models, what predict uses) are for the final
student. A stacked teacher works the same way: its base heads' fold-``k`` models, then its fold-``k``
level-2 model and post steps.

**Stored** as the part table ``pseudo_labels`` - one row per (version, teacher fold, window) with
the soft probabilities of every class in taxonomy order (``probs``, float32) - and one row per run in
``pseudo_runs`` (version, teacher, parameters, class order, counts). The version is a hash of the
teacher id, the parameters, the class order and the unlabelled window ids: re-running the same
request writes nothing, and a killed run resumes where its last atomic part ended.

**Transform** (:class:`PseudoParams`, applied to the teacher's probability ``p`` of each class, in
this order): ``p ** power`` (2025 winner: 1.5-1.8 sharpened soft labels), 0 where the teacher's ``p``
is below ``min_prob`` (6th place kept p >= 0.55), then each window's label sum capped at ``cap`` by
scaling it down (2026 winner: 0.75). ``weight`` is the students' sample weight for these windows (stored).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import DataError, UserInputError
from models.pseudo_labels import (
    FULL_FOLD,
    KEYS,
    RUNS_TABLE,
    TABLE,
    PseudoParams,
    load_pseudo,
    make_params,
    pool_windows,
)

if TYPE_CHECKING:
    from models.bundle import HeadBundle

CHUNK_WINDOWS = 12_000          # windows predicted and written per part (one atomic step of a resumable run)


def transform(P: np.ndarray, params: PseudoParams) -> np.ndarray:
    """The soft labels of teacher probabilities ``P`` (windows x classes); see the module doc."""
    p = np.clip(np.asarray(P, np.float64), 0.0, 1.0)
    Q = np.where(np.less(p, params.min_prob), 0.0, p ** params.power)
    if params.cap is not None:
        total = Q.sum(axis=1, keepdims=True)
        Q *= np.where(total > params.cap, params.cap / np.maximum(total, 1e-300), 1.0)
    return Q.astype(np.float32)


# ---------------------------------------------------------------------------- teachers
class Teacher:
    """Per-fold probabilities of a trained head or stacked head on stored windows (in ``class_names`` order)."""

    def __init__(self, store, head_id: str, class_names: list[str]):
        """UserInputError when the store has no trained head ``head_id``."""
        from stack.bundle import StackBundle, open_head

        self.store, self.head_id, self.class_names = store, head_id, class_names
        head = open_head(store.root, head_id)
        self.is_stack = isinstance(head, StackBundle)
        if self.is_stack:
            self.stack = head
            self.bases = [open_head(store.root, h) for h in self.stack.config.base_heads]
            if self.stack.config.zero_shot:
                raise UserInputError(f"teacher {head_id}: stacks with zero-shot views are not supported as teachers yet")
            self.fold_ids = sorted(self.stack.folds)
            self.fold_version = self.stack.config.fold_version
        else:
            self.bases = [head]
            self.fold_ids = head.fold_ids
            self.fold_version = head.config.fold_version

    def _base_probs(self, base: HeadBundle, window_ids: list[str]) -> dict[int, np.ndarray]:
        from embed.features import load_window_features
        from models.frame import add_context

        bundle = base
        frame = bundle.config.frame
        ids, X, _, _ = load_window_features(self.store, frame.features, frame.pooling, window_ids=window_ids,
                                            versions=dict(bundle.config.feature_versions.extractors))
        self.store.release_catalog()   # predicting needs no catalog: readers get in (re-opened by the next load)
        if list(ids) != list(window_ids):
            missing = sorted(set(window_ids) - set(ids))
            raise DataError(f"teacher {bundle.head_id}: {len(missing)} unlabelled window(s) have no {frame.features} "
                            f"features at the teacher's extractor versions (e.g. {missing[0]}); run pipelines.embed")
        if frame.context:
            X, _ = add_context(X, np.asarray(ids))
        cols = [bundle.class_names.index(c) for c in self.class_names]
        return {k: head.predict_proba(X)[:, cols].astype(np.float32)
                for k, head in zip(bundle.fold_ids, bundle.folds, strict=True)}

    def predict(self, window_ids: list[str]) -> dict[int, np.ndarray]:
        """fold id -> (windows, classes) probabilities, plus ``FULL_FOLD`` -> the mean over folds."""
        if not self.is_stack:
            out = self._base_probs(self.bases[0], window_ids)
        else:
            out = self._stack_probs(window_ids)
        out[FULL_FOLD] = np.mean([out[k] for k in self.fold_ids], axis=0).astype(np.float32)
        return out

    def _stack_probs(self, window_ids: list[str]) -> dict[int, np.ndarray]:
        from stack.apply import apply_stack, unlabelled_inputs

        base = [self._base_probs(b, window_ids) for b in self.bases]
        names = list(self.stack.class_names)
        cols = [names.index(c) for c in self.class_names]
        order = [self.class_names.index(c) for c in names]
        out = {}
        for k in self.fold_ids:
            P = np.stack([b[k][:, order] for b in base])                 # (sources, windows, stack classes)
            p = apply_stack(self.stack, unlabelled_inputs(self.stack, window_ids, P), self.stack.folds[k])
            out[k] = p[:, cols].astype(np.float32)
        return out


@dataclass
class PseudoResult:
    version: str
    teacher_id: str
    n_windows: int
    n_folds: int
    written_parts: int
    seconds: float
    params: PseudoParams
    answers: tuple[float, int, int] | None = None    # score_against held-back answers: (auc, classes, windows)

    def render(self) -> str:
        pool = "unlabelled" if self.params.pool == "unlabelled" else "training"
        text = (f"pseudo-labels {self.version}: teacher {self.teacher_id}, {self.n_windows} {pool} windows x "
                f"({self.n_folds} folds + full); {self.written_parts} part(s) written now; {self.seconds:.1f} s "
                f"(power {self.params.power:g}, min_prob {self.params.min_prob:g}, cap {self.params.cap}, "
                f"weight {self.params.weight:g})")
        if self.answers is not None:
            auc, n_classes, n_windows = self.answers
            text += (f"\nmacro ROC-AUC of the full labels against the held-back answers: {auc:.4f} "
                     f"({n_classes} classes, {n_windows} windows)")
        return text


def pseudo_version(teacher_id: str, params: PseudoParams, class_names: list[str], window_ids: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"teacher": teacher_id, "params": asdict(params), "classes": class_names},
                        sort_keys=True).encode())
    for w in window_ids:
        h.update(w.encode() + b"\n")
    return f"pseudo-{h.hexdigest()[:12]}"


def run_pseudo(store_dir: str | os.PathLike, teacher_id: str, params: PseudoParams | dict | None = None, *,
               round_: int = 1, chunk_windows: int = CHUNK_WINDOWS, answers: str | os.PathLike | None = None,
               say=print) -> PseudoResult:
    """Label every unlabelled soundscape window with ``teacher_id`` (see the module doc); ``answers``:
    score the labels against held-back labels of those windows (:func:`score_against`)."""
    import pyarrow as pa

    from featurestore.store import FeatureStore, utc_now
    from models.frame import class_names_of

    params = params if isinstance(params, PseudoParams) else make_params(params)
    if answers is not None and not Path(answers).is_file():   # before the work, not after it
        raise UserInputError(f"{answers}: answers file not found")
    t0 = time.perf_counter()
    root = Path(store_dir)
    with FeatureStore.open(root, create=False) as store:
        classes = class_names_of(store)
        teacher = Teacher(store, teacher_id, classes)        # an unknown teacher is refused before any work
        ids = pool_windows(store, params.pool)
        if not ids:
            raise DataError(f"{root}: no unlabelled train soundscape windows to pseudo-label (ingest "
                            "train_soundscapes, or use --pool all to distil on every window)")
        version = pseudo_version(teacher_id, params, classes, ids)
        store.register_part_table(TABLE, KEYS)
        done: set[str] = set()
        if store.part_files(TABLE):
            glob = store.part_glob(TABLE).replace("'", "''")
            done = {r[0] for r in store.rows(
                f"SELECT window_id FROM read_parquet('{glob}') WHERE pseudo_version = ? AND teacher_fold = ?",
                [version, FULL_FOLD])}
        todo = [w for w in ids if w not in done]
        written = 0
        for a in range(0, len(todo), chunk_windows):
            chunk = todo[a: a + chunk_windows]
            probs = teacher.predict(chunk)
            tables = []
            for k in (*teacher.fold_ids, FULL_FOLD):
                Q = transform(probs[k], params)
                tables.append(pa.table({
                    "pseudo_version": pa.array([version] * len(chunk)), "teacher_id": pa.array([teacher_id] * len(chunk)),
                    "teacher_fold": pa.array([k] * len(chunk), pa.int32()), "round": pa.array([round_] * len(chunk), pa.int32()),
                    "window_id": pa.array(chunk),
                    "probs": pa.FixedSizeListArray.from_arrays(pa.array(Q.ravel(), pa.float32()), len(classes)),
                    "written_at": pa.array([utc_now()] * len(chunk), pa.timestamp("us", tz="UTC"))}))
            store.append_part(TABLE, pa.concat_tables(tables))       # full labels last: a part is all or nothing
            written += 1
            say(f"  {min(a + chunk_windows, len(todo))}/{len(todo)} windows labelled")
        run_row = pa.table({"pseudo_version": [version], "teacher_id": [teacher_id], "round": [round_],
                            "params": [json.dumps(asdict(params), sort_keys=True)],
                            "class_names": [json.dumps(classes)], "n_windows": [len(ids)],
                            "teacher_folds": [json.dumps(teacher.fold_ids)],
                            "fold_version": [teacher.fold_version], "created_at": [utc_now()]})
        old = store.read_table(RUNS_TABLE) if store.has_table(RUNS_TABLE) else None
        if old is not None:
            keep = [i for i, v in enumerate(old.column("pseudo_version").to_pylist()) if v != version]
            run_row = pa.concat_tables([old.take(pa.array(keep, pa.int64())), run_row], promote_options="default")
        store.write_table(RUNS_TABLE, run_row)
        store.refresh_part_views()
        scored = score_against(store, version, answers) if answers is not None else None
    return PseudoResult(version, teacher_id, len(ids), len(teacher.fold_ids), written, time.perf_counter() - t0, params,
                        scored)


def score_against(store, version: str, answers: str | os.PathLike) -> tuple[float, int, int]:
    """Macro ROC-AUC of a version's full labels against held-back answers for the same windows (a CSV in
    ``train_soundscapes_labels.csv`` layout, e.g. the demo's ``unlabelled_answers.csv``): ``(auc, classes
    scored, windows scored)`` over the windows both hold and the classes with a positive and a negative."""
    from featurestore.competition import read_soundscape_labels
    from featurestore.windows import SOUNDSCAPE, window_id
    from models.metrics import macro_auc_defined

    ids, P, classes, _ = load_pseudo(store, version, FULL_FOLD)
    table, _ = read_soundscape_labels(Path(answers), set(classes))
    truth = {window_id(SOUNDSCAPE, f, s): set(labels) for f, s, labels in
             zip(table.column("filename").to_pylist(), table.column("start_s").to_pylist(),
                 table.column("labels").to_pylist(), strict=True)}
    rows = [i for i, w in enumerate(ids) if w in truth]
    if not rows:
        raise DataError(f"{answers}: none of its windows is labelled by pseudo-labels {version}")
    Y = np.array([[c in truth[ids[i]] for c in classes] for i in rows], np.float32)
    auc, n = macro_auc_defined(Y, P[rows])
    return auc, n, len(rows)
