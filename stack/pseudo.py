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

import numpy as np

from featurestore.errors import DataError, UserInputError
from featurestore.params import params_from

TABLE, RUNS_TABLE = "pseudo_labels", "pseudo_runs"
KEYS = ["pseudo_version", "teacher_fold", "window_id"]
FULL_FOLD = -1
CHUNK_WINDOWS = 12_000          # windows predicted and written per part (one atomic step of a resumable run)


@dataclass(frozen=True)
class PseudoParams:
    power: float = 1.0
    min_prob: float = 0.0
    cap: float | None = None        # maximum label sum per window (None: no cap)
    weight: float = 1.0             # students' sample weight for pseudo-labelled windows

    def check(self) -> PseudoParams:
        if self.power <= 0 or not 0.0 <= self.min_prob < 1.0 or self.weight < 0:
            raise UserInputError("pseudo: power must be > 0, 0 <= min_prob < 1, weight >= 0")
        if self.cap is not None and self.cap <= 0:
            raise UserInputError("pseudo: cap must be > 0 (or omitted)")
        return self


def make_params(overrides: dict | None = None) -> PseudoParams:
    return params_from(PseudoParams, overrides or {}, "pseudo").check()


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

    def __init__(self, store, heads_dir: Path, head_id: str, class_names: list[str]):
        from stack.bundle import is_stack_dir

        self.store, self.heads_dir, self.head_id, self.class_names = store, heads_dir, head_id, class_names
        self.is_stack = is_stack_dir(heads_dir / head_id)
        if self.is_stack:
            from stack.bundle import load_stack

            self.stack = load_stack(heads_dir / head_id)
            self.bases = [self._base(h) for h in self.stack.config.base_heads]
            if self.stack.config.zero_shot:
                raise UserInputError(f"teacher {head_id}: stacks with zero-shot views are not supported as teachers yet")
            self.fold_ids = sorted(self.stack.folds)
        else:
            self.bases = [self._base(head_id)]
            self.fold_ids = self.bases[0][1]

    def _base(self, head_id: str):
        from models.bundle import load_bundle

        folder = self.heads_dir / head_id
        bundle = load_bundle(folder)
        fold_ids = sorted(int(p.name.split("_", 1)[1]) for p in folder.glob("fold_*") if p.is_dir())
        if len(fold_ids) != len(bundle.folds):
            raise DataError(f"{folder}: {len(bundle.folds)} fold models for fold folders {fold_ids}")
        by_id = dict(zip(sorted(fold_ids, key=str), bundle.folds, strict=True))   # load_bundle's name order
        return bundle, fold_ids, by_id

    def _base_probs(self, base, window_ids: list[str]) -> dict[int, np.ndarray]:
        from embed.features import load_window_features
        from models.frame import add_context

        bundle, fold_ids, by_id = base
        frame = bundle.config.frame
        ids, X, _, _ = load_window_features(self.store, frame.features, frame.pooling, window_ids=window_ids,
                                            versions=dict(bundle.config.feature_versions.extractors))
        if list(ids) != list(window_ids):
            missing = sorted(set(window_ids) - set(ids))
            raise DataError(f"teacher {bundle.head_id}: {len(missing)} unlabelled window(s) have no {frame.features} "
                            f"features at the teacher's extractor versions (e.g. {missing[0]}); run pipelines.embed")
        if frame.context:
            X, _ = add_context(X, np.asarray(ids))
        cols = [bundle.class_names.index(c) for c in self.class_names]
        return {k: by_id[k].predict_proba(X)[:, cols].astype(np.float32) for k in fold_ids}

    def predict(self, window_ids: list[str]) -> dict[int, np.ndarray]:
        """fold id -> (windows, classes) probabilities, plus ``FULL_FOLD`` -> the mean over folds."""
        if not self.is_stack:
            out = self._base_probs(self.bases[0], window_ids)
        else:
            out = self._stack_probs(window_ids)
        out[FULL_FOLD] = np.mean([out[k] for k in self.fold_ids], axis=0).astype(np.float32)
        return out

    def _stack_probs(self, window_ids: list[str]) -> dict[int, np.ndarray]:
        from stack.post import FileLayout, apply_post
        from stack.predict import unlabelled_inputs

        base = [self._base_probs(b, window_ids) for b in self.bases]
        names = list(self.stack.class_names)
        cols = [names.index(c) for c in self.class_names]
        order = [self.class_names.index(c) for c in names]
        out = {}
        for k in self.fold_ids:
            P = np.stack([b[k][:, order] for b in base])                 # (sources, windows, stack classes)
            data = unlabelled_inputs(self.stack, window_ids, P)
            p = self.stack.folds[k].predict(data)
            steps = self.stack.config.steps()
            if steps:
                p = apply_post(p, steps, FileLayout(data.window_ids), data.class_groups)
            out[k] = np.clip(p, 0.0, 1.0)[:, cols].astype(np.float32)
        return out


# ---------------------------------------------------------------------------- the job
def unlabelled_windows(store) -> list[str]:
    """Windows of the train soundscape files that have no label row at all, sorted (the pseudo-labelling
    pool). A labelled file's windows without a row are left out: they belong to the expert-labelled
    files, whose folds and scoring already cover them."""
    from featurestore.windows import SOUNDSCAPE

    labelled = {r[0] for r in store.rows("SELECT DISTINCT filename FROM soundscape_labels")} \
        if store.has_table("soundscape_labels") else set()
    rows = store.rows("SELECT window_id, filename FROM windows WHERE source = ? ORDER BY window_id", [SOUNDSCAPE])
    return [w for w, f in rows if f not in labelled]


@dataclass
class PseudoResult:
    version: str
    teacher_id: str
    n_windows: int
    n_folds: int
    written_parts: int
    seconds: float
    params: PseudoParams

    def render(self) -> str:
        return (f"pseudo-labels {self.version}: teacher {self.teacher_id}, {self.n_windows} unlabelled windows x "
                f"({self.n_folds} folds + full); {self.written_parts} part(s) written now; {self.seconds:.1f} s "
                f"(power {self.params.power:g}, min_prob {self.params.min_prob:g}, cap {self.params.cap}, "
                f"weight {self.params.weight:g})")


def pseudo_version(teacher_id: str, params: PseudoParams, class_names: list[str], window_ids: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"teacher": teacher_id, "params": asdict(params), "classes": class_names},
                        sort_keys=True).encode())
    for w in window_ids:
        h.update(w.encode() + b"\n")
    return f"pseudo-{h.hexdigest()[:12]}"


def run_pseudo(store_dir: str | os.PathLike, teacher_id: str, params: PseudoParams | dict | None = None, *,
               round_: int = 1, chunk_windows: int = CHUNK_WINDOWS, say=print) -> PseudoResult:
    """Label every unlabelled soundscape window with ``teacher_id`` (see the module doc)."""
    import pyarrow as pa

    from featurestore.store import FeatureStore, utc_now
    from models.bundle import HEADS_DIR
    from models.frame import class_names_of

    params = params if isinstance(params, PseudoParams) else make_params(params)
    t0 = time.perf_counter()
    root = Path(store_dir)
    with FeatureStore.open(root, create=False) as store:
        heads_dir = store.root / HEADS_DIR
        if not (heads_dir / teacher_id).is_dir():
            present = sorted(p.name for p in heads_dir.iterdir() if p.is_dir()) if heads_dir.is_dir() else []
            raise UserInputError(f"no trained head {teacher_id!r} in {heads_dir}; heads present: {present}")
        classes = class_names_of(store)
        ids = unlabelled_windows(store)
        if not ids:
            raise DataError(f"{root}: no unlabelled train soundscape windows to pseudo-label")
        version = pseudo_version(teacher_id, params, classes, ids)
        teacher = Teacher(store, heads_dir, teacher_id, classes)
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
                            "teacher_folds": [json.dumps(teacher.fold_ids)], "created_at": [utc_now()]})
        old = store.read_table(RUNS_TABLE) if store.has_table(RUNS_TABLE) else None
        if old is not None:
            keep = [i for i, v in enumerate(old.column("pseudo_version").to_pylist()) if v != version]
            run_row = pa.concat_tables([old.take(pa.array(keep, pa.int64())), run_row], promote_options="default")
        store.write_table(RUNS_TABLE, run_row)
        store.refresh_part_views()
    return PseudoResult(version, teacher_id, len(ids), len(teacher.fold_ids), written, time.perf_counter() - t0, params)


def load_pseudo(store, version: str, fold: int) -> tuple[list[str], np.ndarray, list[str], PseudoParams]:
    """``(window_ids, soft labels (windows, classes), class names, params)`` of one teacher fold of a
    stored pseudo-label version (``fold = -1``: the full labels)."""
    if not store.has_table(RUNS_TABLE):
        raise UserInputError("no pseudo-labels in this store; run python -m pipelines.pseudo first")
    row = store.first("SELECT class_names, params FROM pseudo_runs WHERE pseudo_version = ?", [version])
    if row is None:
        known = [r[0] for r in store.rows("SELECT pseudo_version FROM pseudo_runs")]
        raise UserInputError(f"unknown pseudo-label version {version!r}; stored: {known}")
    classes, params = json.loads(row[0]), make_params(json.loads(row[1]))
    glob = store.part_glob(TABLE).replace("'", "''")
    table = store.sql(f"SELECT window_id, probs FROM read_parquet('{glob}') WHERE pseudo_version = ? AND "
                      "teacher_fold = ? ORDER BY window_id", [version, fold])
    ids = table.column("window_id").to_pylist()
    flat = table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, flat.reshape(len(ids), len(classes)).astype(np.float32), classes, params
