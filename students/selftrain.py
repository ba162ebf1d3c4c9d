"""Self-training rounds on the unlabelled soundscapes (the library behind ``python -m pipelines.selftrain``).

One round: the teacher labels every unlabelled soundscape window fold by fold (:func:`students.pseudo.run_pseudo`),
then a student with the *original* teacher's configuration is re-trained with those soft labels (fold
``k``'s model on the teacher's fold-``k`` labels, :class:`models.training.PseudoRows`). The student
becomes the next round's teacher. No audio is re-embedded: teacher and students read stored features.

* A plain head teacher: the student is the same head kind, features, parameters and seed.
* A stacked teacher: every base head is re-trained with the labels (tag ``selftrain-r<N>-base``), then
  the same stacker, parameters and post steps are stacked over the new bases - an ensemble student.

Every student is a normal head: its bundle, OOF table and ``experiments`` row (tag ``selftrain-r<N>``),
scored like every head by the fold mean on the labelled soundscape windows - each fold by the model
that never saw it, whose pseudo-labels came from a teacher model that never saw it either. The rounds
stop early when a student's fold mean does not beat the best so far by more than ``min_gain``; the
best head is the result (the teacher itself when no round helped).

Resumable: a killed run re-run with the same arguments re-uses the stored pseudo-labels (same version)
and every student whose bundle and experiment row an earlier run finished.

Subgroups: every round's student is compared with the *original* teacher (round 0), slice by slice (site,
hour bucket, overlap, taxon group, frequency bucket; :mod:`models.subgroups`), and flagged when its
largest slice drop exceeds its headline drop. The original, not the previous round: the question is
whether self-training keeps the behaviour of the model it started from, and a drift of a little per
round would pass every round-to-round check. For the same reason each student's experiments row records
the original teacher as ``teacher_id`` (a stacked student's base students: the teacher's matching base
head); the head that actually produced a round's labels is in the student's ``config.json``
(``pseudo.teacher_id``) and in :class:`Round`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.errors import UserInputError
from models.pseudo_labels import PseudoParams, make_params
from models.subgroups import SliceComparison
from students.pseudo import run_pseudo

TAG = "selftrain-r{round}"


@dataclass
class Round:
    round: int
    teacher_id: str
    pseudo_version: str
    student_id: str
    fold_mean: float
    fold_std: float
    pooled: float                 # pooled OOF AUC, beside the fold mean
    seconds: float
    base_ids: tuple[str, ...] = ()          # a stacked student's re-trained base heads (plain teacher: none)
    subgroups: SliceComparison | None = None  # this student vs the original teacher, slice by slice


@dataclass
class SelfTrainResult:
    teacher_id: str
    teacher_fold_mean: float
    rounds: list[Round] = field(default_factory=list)
    best_id: str = ""
    stopped: str = ""

    def written_ids(self) -> list[str]:
        """Every head id whose experiment row this run wrote or re-used: each round's base students (a
        stacked teacher) and student, in round order."""
        return [h for r in self.rounds for h in (*r.base_ids, r.student_id)]

    def render(self) -> str:
        lines = [f"round 0 (teacher {self.teacher_id}): fold mean {self.teacher_fold_mean:.4f}"]
        for r in self.rounds:
            lines.append(f"round {r.round}: labels {r.pseudo_version} from {r.teacher_id} -> student {r.student_id}: "
                         f"fold mean {r.fold_mean:.4f} +/- {r.fold_std:.4f} ({r.fold_mean - self.teacher_fold_mean:+.4f} "
                         f"vs round 0; pooled OOF {r.pooled:.4f}), {r.seconds:.0f} s")
        lines.append(f"best: {self.best_id} ({self.stopped})")
        for r in self.rounds:
            if r.subgroups is not None:
                lines.append(f"round {r.round} student {r.student_id} vs the round-0 teacher {self.teacher_id}:")
                lines.append(r.subgroups.render())
        return "\n".join(lines)


def fold_mean_of(store, head_id: str) -> tuple[float, float, float]:
    """The recorded (fold mean, fold std, pooled OOF AUC) of a head's latest run; NaN when nothing was scorable."""
    from models.experiments import latest_row

    row = latest_row(store, head_id)
    if not row:
        raise UserInputError(f"head {head_id} has no experiment row; train it with pipelines.train first")
    return tuple(float("nan") if row[c] is None else float(row[c]) for c in ("fold_mean", "fold_std", "oof_auc"))


class Student:
    """How a round re-trains the original teacher's configuration with a pseudo-label version."""

    def __init__(self, store_dir: Path, teacher_id: str):
        from stack.bundle import StackConfig, head_config

        self.store_dir = store_dir
        config = head_config(store_dir, teacher_id)
        self.stack = config if isinstance(config, StackConfig) else None
        self.bases = [head_config(store_dir, h) for h in self.stack.base_heads] if self.stack else [config]
        for c in self.bases:
            if c.replay or c.subsample:
                raise UserInputError(f"{c.head_id} is a {'replay' if c.replay else 'fast'} run; self-train a fully "
                                     "cross-validated head")

    def trained(self, base, version: str, tag: str) -> tuple[str, float] | None:
        """A student of ``base`` on ``version`` an earlier (killed) run already finished: its experiment row
        (same kind, frame, parameters, folds and seed, these labels) and its bundle both exist."""
        from featurestore.store import FeatureStore
        from models.bundle import bundle_dir
        from models.experiments import rows_with_tag

        want = base.to_json()
        with FeatureStore.open(self.store_dir, read_only=True) as store:
            rows = rows_with_tag(store, tag)
        for row in rows:
            head_id, mean, got = row["head_id"], row["fold_mean"], json.loads(row["config"])
            same = all(got.get(k) == want.get(k) for k in ("head", "params", "frame", "fold_version", "seed"))
            if same and (got.get("pseudo") or {}).get("version") == version and bundle_dir(self.store_dir, head_id).is_dir():
                return head_id, float("nan") if mean is None else float(mean)
        return None

    def train(self, version: str, round_: int, say) -> tuple[str, tuple[str, ...]]:
        """The student's head id (a stacked one for a stacked teacher) and its re-trained base heads (a plain
        teacher: none). Every head it trains or re-uses records the teacher it re-trains as ``teacher_id``."""
        from models.pseudo_labels import PseudoSpec
        from models.training import train_head

        spec = PseudoSpec(version)                      # at the weight stored with the labels
        tag = TAG.format(round=round_)
        ids = []
        for c in self.bases:
            base_tag = f"{tag}-base" if self.stack else tag
            done = self.trained(c, version, base_tag)
            if done is None:
                result = train_head(self.store_dir, c.kind, c.frame, overrides=c.params, fold_version=c.fold_version,
                                    seed=c.seed, tag=base_tag, pseudo=spec)
                done = result.head_id, result.fold_mean
                say(f"  student {done[0]} ({c.kind} on {c.frame.features}): fold mean {done[1]:.4f}")
            else:
                say(f"  student {done[0]} ({c.kind} on {c.frame.features}): fold mean {done[1]:.4f} "
                    "(trained by an earlier run)")
            ids.append(done[0])
        if self.stack is None:
            self._record_teacher(done[0], c.head_id)
            return done[0], ()
        for base_id, c in zip(ids, self.bases, strict=True):
            self._record_teacher(base_id, c.head_id)
        from stack.run import run_stack

        s = self.stack
        stacked = run_stack(self.store_dir, ids, s.stacker, s.params, list(s.post), zero_shot=s.zero_shot,
                            zero_shot_pooling=s.zero_shot_pooling, tag=tag)
        say(f"  stacked student {stacked.head_id}: fold mean {stacked.fold_mean:.4f}")
        self._record_teacher(stacked.head_id, self.stack.head_id)
        return stacked.head_id, tuple(ids)

    def _record_teacher(self, head_id: str, teacher_id: str) -> None:
        from featurestore.store import FeatureStore
        from models.experiments import annotate

        with FeatureStore.open(self.store_dir, create=False) as store:
            annotate(store, head_id, teacher_id=teacher_id)


def run_selftrain(store_dir: str | os.PathLike, teacher_id: str, rounds: int = 3,
                  params: PseudoParams | dict | None = None, *, min_gain: float = 0.0,
                  say=print) -> SelfTrainResult:
    """Run up to ``rounds`` teacher -> pseudo-labels -> student rounds; see the module doc."""
    from featurestore.store import FeatureStore
    from models.subgroups import compare_heads

    if rounds < 1:
        raise UserInputError("--rounds must be >= 1")
    params = params if isinstance(params, PseudoParams) else make_params(params)
    if params.pool != "unlabelled":
        raise UserInputError("self-training labels the unlabelled soundscapes (pool 'unlabelled'); "
                             "use pipelines.distill to distil on every window")
    root = Path(store_dir)
    student = Student(root, teacher_id)
    with FeatureStore.open(root, read_only=True) as store:
        base_mean, _, _ = fold_mean_of(store, teacher_id)
    if base_mean != base_mean:   # NaN: no round could be judged against it
        raise UserInputError(f"teacher {teacher_id} has no fold mean (no labelled window was scorable on its folds); "
                             "self-training needs a scored teacher - ingest labelled soundscapes or re-fold")
    result = SelfTrainResult(teacher_id, base_mean, best_id=teacher_id)
    best, teacher = base_mean, teacher_id
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        say(f"round {r}: teacher {teacher}")
        labels = run_pseudo(root, teacher, params, round_=r, say=say)   # its per-chunk progress
        say(f"  {labels.render()}")
        student_id, base_ids = student.train(labels.version, r, say)
        with FeatureStore.open(root, read_only=True) as store:
            mean, std, pooled = fold_mean_of(store, student_id)
            subgroups = compare_heads(store, teacher_id, student_id, teacher_label="round 0",
                                      student_label=f"round {r}")
        result.rounds.append(Round(r, teacher, labels.version, student_id, mean, std, pooled,
                                   time.perf_counter() - t0, base_ids, subgroups))
        if subgroups.flagged:
            worst = subgroups.largest_drop
            say(f"  round {r} student loses {worst.drop:+.4f} on {worst.slice} = {worst.value} against the round-0 "
                f"teacher, more than its headline drop {subgroups.headline_drop:+.4f}")
        if not mean > best + min_gain:
            result.stopped = (f"stopped after round {r}: fold mean {mean:.4f} did not beat {best:.4f} "
                              f"by more than {min_gain:g}")
            break
        best, teacher, result.best_id = mean, student_id, student_id
    else:
        result.stopped = f"all {rounds} rounds improved the fold mean"
    return result
