"""Distillation into a cheap head (the library behind ``python -m pipelines.distill``).

The teacher - typically the stacked ensemble - labels *every* stored window fold by fold
(:func:`students.pseudo.run_pseudo` with pool ``all``); a student head on a cheaper feature set (e.g.
classical statistics only, or one embedding instead of several) is cross-validated on those soft
labels: fold ``k``'s student learns, on the windows outside fold ``k``, ``(1 - alpha) * label + alpha *
teacher`` for labelled windows and the teacher's soft label for unlabelled soundscape windows, all
from the teacher's fold-``k`` model (blind to fold ``k``). It is scored like every head: fold mean of
the true labels of its held-out fold.

The report puts teacher and student side by side: fold mean and the predict cost per 60-s file
measured in one run on the same audio (decode, resample, extractors, heads; :func:`submit.plan.measure_heads`),
so the Kaggle notebook's fallback (``pipelines.export --fallback-head``) can trade accuracy for time; then
their slices (site, hour bucket, overlap, taxon group, frequency bucket) side by side with the largest
drop, flagged when it exceeds the headline drop (:mod:`models.subgroups`). The student's experiments row
records its teacher (``teacher_id``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from featurestore.errors import UserInputError
from models.pseudo_labels import PseudoParams, make_params
from models.subgroups import SliceComparison
from students.pseudo import run_pseudo
from students.selftrain import fold_mean_of

TAG = "distill"


@dataclass
class Side:
    head_id: str
    features: str
    fold_mean: float
    fold_std: float
    pooled: float                       # pooled OOF AUC, beside the fold mean
    per_file_s: float | None            # predict cost per 60-s file, one process (None: not measured)
    stages: str = ""


@dataclass
class DistillResult:
    pseudo_version: str
    teacher: Side
    student: Side
    n_cost_files: int
    baseline: Side | None = None        # the student's configuration trained on the labels alone
    subgroups: SliceComparison | None = None   # teacher vs student slices (None: not compared)

    def render(self) -> str:
        lines = [f"distillation labels {self.pseudo_version}; predict cost per 60-s file measured on "
                 f"{self.n_cost_files} file(s) in one run, one process",
                 f"{'':11} {'head':24} {'features':28} {'fold mean':>16} {'pooled':>7} {'s / file':>9}  stages"]
        sides = [("teacher", self.teacher), ("student", self.student)]
        if self.baseline is not None:
            sides.append(("labels only", self.baseline))
        for name, s in sides:
            cost = f"{s.per_file_s:9.3f}" if s.per_file_s is not None else f"{'-':>9}"
            lines.append(f"{name:11} {s.head_id:24} {s.features[:28]:28} {s.fold_mean:8.4f} +/- {s.fold_std:.4f} "
                         f"{s.pooled:7.4f} "
                         f"{cost}  {s.stages}")
        t, s = self.teacher, self.student
        speed = (f"; student {t.per_file_s / s.per_file_s:.1f}x cheaper per file"
                 if t.per_file_s and s.per_file_s else "")
        lines.append(f"student - teacher fold mean: {s.fold_mean - t.fold_mean:+.4f}{speed}")
        if self.baseline is not None:
            lines.append(f"student - labels only: {s.fold_mean - self.baseline.fold_mean:+.4f} (what distillation "
                         "adds to this head)")
        if self.subgroups is not None:
            lines.append(self.subgroups.render())
        return "\n".join(lines)


def cost_files(store, n: int) -> list[Path]:
    """Up to ``n`` train soundscape files of the store that exist on disk (the cost measurement's audio)."""
    from embed.job import data_dir_of
    from featurestore.windows import SOUNDSCAPE

    root = data_dir_of(store)
    names = [r[0] for r in store.rows("SELECT DISTINCT filename FROM windows WHERE source = ? ORDER BY filename",
                                      [SOUNDSCAPE])]
    paths = [root / SOUNDSCAPE / f for f in names]
    return [p for p in paths if p.exists()][:n]


def _side(store, head_id: str, features: str, costs, level: int) -> Side:
    mean, std, pooled = fold_mean_of(store, head_id)
    if costs is None:
        return Side(head_id, features, mean, std, pooled, None)
    lv = costs.levels[level]
    stages = ", ".join([f"decode {costs.decode_s:.2f}"] + [f"{n} {costs.extractor_s[n]:.2f}" for n in lv.extractors]
                       + [f"heads {lv.heads_s:.3f}"])
    return Side(head_id, features, mean, std, pooled, lv.per_file_s, stages)


def _features_of(store_dir: Path, head_id: str) -> str:
    from stack.bundle import StackConfig, head_config

    config = head_config(store_dir, head_id)
    if isinstance(config, StackConfig):
        return "stack: " + " + ".join(_features_of(store_dir, h) for h in config.base_heads)
    return config.frame.features


def run_distill(store_dir: str | os.PathLike, teacher_id: str, kind: str = "linear", features: str = "classical",
                *, alpha: float = 1.0, params: PseudoParams | dict | None = None, overrides: dict | None = None,
                audio: list[Path] | None = None, n_cost_files: int = 3, seed: int = 0, baseline: bool = True,
                say=print) -> DistillResult:
    """Label every window with ``teacher_id``, train a ``kind`` student on ``features`` and compare; see
    the module doc. ``audio``: files for the cost measurement (default: ``n_cost_files`` of the store's
    train soundscapes; ``n_cost_files=0`` skips it); ``baseline``: also train the student's configuration
    on the labels alone (it costs what the student's features cost)."""
    from featurestore.store import FeatureStore
    from models.experiments import annotate
    from models.frame import FrameSpec
    from models.pseudo_labels import PseudoSpec, pseudo_run
    from models.subgroups import compare_heads
    from models.training import train_head

    # the teacher's soft predictions as they are (no threshold) unless asked otherwise
    params = params if isinstance(params, PseudoParams) else make_params({"min_prob": 0.0, **(params or {})})
    if not 0.0 <= alpha <= 1.0:
        raise UserInputError("--alpha must be in [0, 1]")
    root = Path(store_dir)
    labels = run_pseudo(root, teacher_id, replace(params, pool="all"), say=say)   # its per-chunk progress
    say(labels.render())
    with FeatureStore.open(root, read_only=True) as store:
        fold_version = pseudo_run(store, labels.version).fold_version
    student = train_head(root, kind, FrameSpec(features), overrides=overrides, fold_version=fold_version, seed=seed,
                         tag=TAG, pseudo=PseudoSpec(labels.version, alpha=alpha))
    say(f"student {student.head_id}: fold mean {student.fold_mean:.4f}")
    with FeatureStore.open(root, create=False) as store:
        annotate(store, student.head_id, teacher_id=teacher_id)
    plain = None
    if baseline:   # the same head on the labels alone: what the distillation itself adds
        plain = train_head(root, kind, FrameSpec(features), overrides=overrides, fold_version=fold_version, seed=seed)
        say(f"labels only {plain.head_id}: fold mean {plain.fold_mean:.4f}")
    with FeatureStore.open(root, read_only=True) as store:
        files = list(audio) if audio is not None else (cost_files(store, n_cost_files) if n_cost_files else [])
        costs = None
        if files:
            from submit.plan import measure_heads

            say(f"measuring predict cost on {len(files)} file(s) ...")
            costs = measure_heads(root, [teacher_id, student.head_id], files)
        return DistillResult(labels.version, _side(store, teacher_id, _features_of(root, teacher_id), costs, 0),
                             _side(store, student.head_id, features, costs, 1), len(files),
                             # the same kind on the same features as the student: the student's measured cost
                             _side(store, plain.head_id, features, costs, 1) if plain else None,
                             compare_heads(store, teacher_id, student.head_id))
