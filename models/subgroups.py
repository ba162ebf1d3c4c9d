"""Does a student keep its teacher's behaviour on subgroups? Teacher and student slices side by side.

Every experiments row holds ``slices``: the macro AUC of the head on subsets of its scored windows or
classes (:func:`models.metrics.evaluate`: ``site``, ``hour`` bucket, ``overlap``, ``class_name`` - the
taxon group - and ``frequency`` bucket; ``fold`` too, which is the headline's own parts and not a
subgroup, so it is left out here). :func:`compare_slices` lines up the teacher's and the student's
slices and finds the slice the student loses most on. A student is **flagged** when that slice's drop
exceeds its headline drop (teacher fold mean - student fold mean) by more than :data:`TOLERANCE`:
the student may match the teacher on average and still fail one site, the night, or the amphibians.

Guarantees:

* ``drop`` is always ``teacher auc - student auc`` (positive: the student is worse there);
* a slice counts for the largest drop and the flag only when it is defined on both sides (a finite
  AUC) and large enough to mean something: at least :data:`MIN_WINDOWS` windows and
  :data:`MIN_CLASSES` scorable classes (the smaller count of the two sides). Smaller and one-sided
  slices are still listed, marked, never chosen;
* an undefined headline (a NaN / missing fold mean) never flags; ``render()`` says why;
* slices come as the JSON text of an experiments row or as the parsed list; ``None`` is "no slices".
  A malformed entry is a :class:`MetricError` naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from featurestore.errors import MetricError, UserInputError
from models.experiments import finite_or_none

TOLERANCE = 0.01        # a slice drop may exceed the headline drop by this much before the student is flagged
MIN_WINDOWS = 36        # three 60-s files: a slice from one or two recordings measures them, not a subgroup
MIN_CLASSES = 3         # a macro AUC over fewer scorable classes is one or two classes' noise
# slice kinds compared, in display order (others a row may hold come after, in their order; "fold" never)
SLICE_ORDER = ("site", "hour", "overlap", "class_name", "frequency")
SKIPPED_SLICES = ("fold",)


@dataclass(frozen=True)
class SliceRow:
    """One slice value on both sides; an AUC is None where that side has no such slice or it is undefined."""

    slice: str
    value: str
    teacher_auc: float | None
    student_auc: float | None
    n_windows: int          # the smaller count of the sides that have the slice
    n_classes: int
    in_teacher: bool = True  # the side's row has this slice at all (its AUC may still be undefined)
    in_student: bool = True

    @property
    def drop(self) -> float | None:
        """Teacher - student AUC (positive: the student is worse); None unless both are defined."""
        if self.teacher_auc is None or self.student_auc is None:
            return None
        return self.teacher_auc - self.student_auc

    @property
    def large_enough(self) -> bool:
        return self.n_windows >= MIN_WINDOWS and self.n_classes >= MIN_CLASSES

    @property
    def counts(self) -> bool:
        """Whether this row may be the largest drop: defined on both sides and large enough."""
        return self.drop is not None and self.large_enough


@dataclass
class SliceComparison:
    teacher_fold_mean: float | None
    student_fold_mean: float | None
    rows: list[SliceRow] = field(default_factory=list)
    tolerance: float = TOLERANCE
    teacher_label: str = "teacher"
    student_label: str = "student"

    @property
    def headline_drop(self) -> float | None:
        """Teacher - student fold mean; None when either is undefined."""
        if self.teacher_fold_mean is None or self.student_fold_mean is None:
            return None
        return self.teacher_fold_mean - self.student_fold_mean

    @property
    def largest_drop(self) -> SliceRow | None:
        """The counted row (see the module doc) with the largest teacher - student drop; ties: the first in
        display order. None when no row counts."""
        best = None
        for r in self.rows:
            if r.counts and (best is None or r.drop > best.drop):
                best = r
        return best

    @property
    def flagged(self) -> bool:
        """The largest slice drop exceeds the headline drop by more than the tolerance."""
        worst, headline = self.largest_drop, self.headline_drop
        return worst is not None and headline is not None and worst.drop > headline + self.tolerance

    def summary(self) -> dict:
        """The worst slice, its drop, the headline drop and the flag, as plain values (for a page or a CSV)."""
        worst = self.largest_drop
        return {"worst_slice": None if worst is None else f"{worst.slice}={worst.value}",
                "worst_drop": None if worst is None else worst.drop, "headline_drop": self.headline_drop,
                "tolerance": self.tolerance, "flagged": self.flagged}

    def render(self) -> str:
        t, s = self.teacher_label, self.student_label
        lines = [f"subgroups: {t} vs {s} (drop = {t} - {s}; '*' marks the largest drop; 'small': fewer than "
                 f"{MIN_WINDOWS} windows or {MIN_CLASSES} classes, never chosen)",
                 f"  {'slice':10} {'value':16} {t[:9]:>9} {s[:9]:>9} {'drop':>8} {'windows':>8} {'classes':>7}"]
        worst = self.largest_drop
        for r in self.rows:
            note = " *" if r is worst else ("" if r.large_enough else " small")
            lines.append(f"  {r.slice:10} {r.value[:16]:16} {_num(r.teacher_auc):>9} {_num(r.student_auc):>9} "
                         f"{_num(r.drop, True):>8} {r.n_windows:8d} {r.n_classes:7d}{note}")
        one_sided = [k for k in dict.fromkeys(r.slice for r in self.rows) if _side_missing(self.rows, k)]
        if one_sided:
            lines.append(f"  slice kind(s) {', '.join(one_sided)} on one side only: that head's experiment row predates "
                         "them or its scoring has no such keys; re-train it to compare them")
        head = self.headline_drop
        lines.append(f"headline (fold mean): {t} {_num(self.teacher_fold_mean)}, {s} {_num(self.student_fold_mean)}, "
                     f"drop {_num(head, True)}")
        if worst is None:
            lines.append("largest slice drop: none (no slice defined on both sides and large enough)")
        elif head is None:
            lines.append(f"largest slice drop: {worst.slice} = {worst.value} {worst.drop:+.4f}; not judged (the "
                         "headline drop is undefined)")
        else:
            verdict = (f"FLAGGED: more than the headline drop {head:+.4f} + tolerance {self.tolerance:g} - {s} "
                       f"loses more here than overall: it does not keep {t}'s behaviour on this subgroup"
                       if self.flagged else
                       f"within the headline drop {head:+.4f} + tolerance {self.tolerance:g}")
            lines.append(f"largest slice drop: {worst.slice} = {worst.value} {worst.drop:+.4f} ({worst.n_windows} "
                         f"windows, {worst.n_classes} classes); {verdict}")
        return "\n".join(lines)


def _num(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")


def _side_missing(rows: list[SliceRow], kind: str) -> bool:
    """Whether a whole slice kind is absent from one side (not merely one value undefined)."""
    of_kind = [r for r in rows if r.slice == kind]
    return not any(r.in_teacher for r in of_kind) or not any(r.in_student for r in of_kind)


def parse_slices(slices: str | Sequence[dict] | None, who: str = "slices") -> dict[tuple[str, str], dict]:
    """``(slice, value) -> {auc, n_windows, n_classes}`` of an experiments row's ``slices`` (JSON text or the
    parsed list; None: empty). An AUC that is null or NaN is None (undefined)."""
    if slices is None:
        return {}
    if isinstance(slices, str):
        try:
            slices = json.loads(slices)
        except json.JSONDecodeError as exc:
            raise MetricError(f"{who}: not JSON ({exc})") from exc
    if not isinstance(slices, list):
        raise MetricError(f"{who}: expected a list of slice entries, got {type(slices).__name__}")
    out: dict[tuple[str, str], dict] = {}
    for i, e in enumerate(slices):
        if not isinstance(e, dict) or not {"slice", "value", "auc"} <= set(e):
            raise MetricError(f"{who}: entry {i} {e!r} lacks slice, value or auc")
        key = (str(e["slice"]), str(e["value"]))
        if key in out:
            raise MetricError(f"{who}: slice {key[0]} = {key[1]} appears twice (entry {i})")
        auc = e["auc"]
        if auc is not None and not isinstance(auc, int | float):
            raise MetricError(f"{who}: entry {i} ({key[0]} = {key[1]}) auc {auc!r} is not a number")
        out[key] = {"auc": None if auc is None or not math.isfinite(auc) else float(auc),
                    "n_windows": int(e.get("n_windows") or 0), "n_classes": int(e.get("n_classes") or 0)}
    return out


def compare_slices(teacher_slices: str | Sequence[dict] | None, student_slices: str | Sequence[dict] | None,
                   teacher_fold_mean: float | None, student_fold_mean: float | None, *,
                   tolerance: float = TOLERANCE, teacher_label: str = "teacher",
                   student_label: str = "student") -> SliceComparison:
    """Teacher and student slices side by side (every slice kind but ``fold``), see the module doc."""
    t = parse_slices(teacher_slices, f"{teacher_label} slices")
    s = parse_slices(student_slices, f"{student_label} slices")
    keys = list(dict.fromkeys([*t, *s]))
    kinds = list(dict.fromkeys([k for k in SLICE_ORDER if any(key[0] == k for key in keys)]
                               + [key[0] for key in keys]))
    rows = []
    for kind in kinds:
        if kind in SKIPPED_SLICES:
            continue
        for key in (k for k in keys if k[0] == kind):
            sides = [x[key] for x in (t, s) if key in x]
            rows.append(SliceRow(kind, key[1], t[key]["auc"] if key in t else None,
                                 s[key]["auc"] if key in s else None,
                                 min(x["n_windows"] for x in sides), min(x["n_classes"] for x in sides),
                                 key in t, key in s))
    return SliceComparison(finite_or_none(teacher_fold_mean), finite_or_none(student_fold_mean), rows, tolerance,
                           teacher_label, student_label)


def compare_heads(store, teacher_id: str, student_id: str, **kwargs) -> SliceComparison:
    """:func:`compare_slices` of two heads' latest experiments rows in ``store``."""
    from models.experiments import latest_row

    got = []
    for head_id in (teacher_id, student_id):
        row = latest_row(store, head_id)
        if not row:
            raise UserInputError(f"head {head_id} has no experiment row; train it with pipelines.train first")
        got.append(row)
    return compare_slices(got[0].get("slices"), got[1].get("slices"), got[0].get("fold_mean"),
                          got[1].get("fold_mean"), **kwargs)
