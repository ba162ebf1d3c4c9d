"""The campaign dashboard: one page (or CSV) that says, for every head and stack of a store, promote or prune
(the library behind ``python -m pipelines.dashboard``; issue 29).

It joins what lived in four places - the leaderboard (fold mean, std), the error page's head diversity
(:func:`stack.inputs.head_correlation`), the planner's predict cost (stored on the experiments row by
``submit.plan.record_predict_costs``: the page itself needs no audio) and the experiments table's search log -
and states a **decision** per row from rules that are data (:class:`DecisionParams`, printed on the page).

One row per experiment (:func:`build_dashboard`), full cross-validation first (fast / replay / CNN runs in their
own table), with these columns (:data:`COLUMNS`; the CSV has exactly these, the page shows the same text):

* ``fold_mean`` / ``fold_std`` (the headline), ``pooled`` (pooled OOF AUC), ``rare_auc``;
* ``worst_slice``: the lowest-AUC stored slice of kind site, hour (bucket) or overlap with at least
  :attr:`DashboardParams.min_slice_windows` windows, its AUC and its gap to the fold mean;
* ``per_file_s`` / ``kaggle_minutes``: the stored ``predict_cost`` (blank when unmeasured: run with ``--audio``);
* ``corr_best``: mean over classes of the OOF Spearman correlation with the current best full-CV row, on the
  labelled soundscape windows in a fold (:func:`stack.inputs.head_correlation`, as the error page);
* ``stack_gain``: what the head adds to the current best stack, by the stack code's own level-2 CV
  (:func:`stack.stackers.cross_validate_stack`) - see :data:`GAIN_METHOD` for the exact definition;
* the search log (``question``, ``answer``, ``verdict``), the student check (``teacher_id``, ``student_flag``
  by ``models.subgroups.compare_slices``), the submission ``track``;
* ``decision`` (:data:`DECISIONS`) and ``reason`` (the rule that fired, with its numbers).

Reads the store only (opened read-only) and its OOF tables; writes nothing but the page.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from featurestore.errors import DataError, StackError, StoreError, UserInputError
from models.experiments import finite_or_none
from reports.htmlpage import check_out, render_page, write_page

DECISIONS = ("promote", "test more", "replay first", "watch", "prune")
SLICE_KINDS = ("site", "hour", "overlap")          # the worst slice is taken over these stored slice kinds
UNKNOWN_SLICE_VALUES = ("(unknown)", "None")      # windows with no site / hour: not a subgroup to judge
SUBSET_MODES = ("fast", "replay")                 # trained on a subset: not comparable with full CV
FORMATS = ("html", "csv")

GAIN_METHOD = {
    "stack": ("stack gain = level-2 CV fold mean of the best stack's own recipe (stacker, parameters, post steps, "
              "zero-shot sources) over its base heads plus this head, minus the same recipe over its base heads; "
              "for one of its base heads: the recipe over all its base heads minus the recipe without this head. "
              "Both sides are cross-validated now by stack.stackers.cross_validate_stack (the code that scored the "
              "stack)."),
    "pair": ("stack gain = level-2 CV fold mean of a ridge stack (default parameters, no post steps) over the best "
             "head and this head, minus the same ridge over the best head alone (the store has no stacked head yet; "
             "cross-validated now by stack.stackers.cross_validate_stack)."),
}


# ---------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class DecisionParams:
    """The decision rules' thresholds (printed on the page). Rules are tried in order; the first that fires wins:

    1. *test more* - a fast / replay run (trained on a subset), or a row with no fold mean;
    2. *prune* - fold mean < best's fold mean - ``prune_stds`` x best's std, and stack gain <= ``min_gain`` (a gain
       that small is level-2 CV noise; an unmeasured gain counts as none);
    3. *replay first* - fold std > ``replay_std_ratio`` x best's std (unstable: re-run before trusting it);
    4. *watch* - projected Kaggle minutes > ``watch_share`` x ``budget_minutes``;
    5. *promote* - the best full-CV row, or stack gain > ``min_gain``;
    6. *test more* - everything else.
    """

    prune_stds: float = 1.0
    replay_std_ratio: float = 2.0
    watch_share: float = 0.5
    budget_minutes: float = 90.0
    min_gain: float = 0.002            # a stack gain at most this is noise: no reason to keep a weak head

    def check(self) -> DecisionParams:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"decision rule {f.name} must be a finite number >= 0, got {value}")
        if self.budget_minutes <= 0:
            raise UserInputError(f"decision rule budget_minutes must be > 0, got {self.budget_minutes}")
        return self

    def rules(self) -> list[tuple[str, str]]:
        """``(decision, rule text)`` in the order they are tried."""
        return [
            ("test more", "a fast or replay run (trained on a subset: run full cross-validation), or no fold mean"),
            ("prune", f"fold mean < best fold mean - {self.prune_stds:g} x best's fold std, and stack gain <= "
                      f"{self.min_gain:g} (level-2 CV noise; an unmeasured gain counts as none)"),
            ("replay first", f"fold std > {self.replay_std_ratio:g} x best's fold std"),
            ("watch", f"projected Kaggle minutes > {self.watch_share:.0%} of the {self.budget_minutes:g}-minute "
                      f"budget (> {self.watch_share * self.budget_minutes:g} min)"),
            ("promote", f"the best full-CV row, or stack gain > {self.min_gain:g}"),
            ("test more", "otherwise"),
        ]


@dataclass(frozen=True)
class DashboardParams:
    decisions: DecisionParams = DecisionParams()
    min_slice_windows: int = 10        # a slice with fewer windows is too noisy to be the "worst"
    stack_gain: bool = True            # False: skip the level-2 CV runs (gain left blank)

    def check(self) -> DashboardParams:
        self.decisions.check()
        if self.min_slice_windows < 0:
            raise UserInputError(f"min_slice_windows must be >= 0, got {self.min_slice_windows}")
        return self


@dataclass(frozen=True)
class Best:
    """The reference of the rules: the best full-CV row."""

    head_id: str
    fold_mean: float
    fold_std: float                    # 0 when undefined (one fold)


def decide(row: dict, best: Best | None, params: DecisionParams = DecisionParams()) -> tuple[str, str]:
    """``(decision, reason)`` of one row (keys ``head_id, mode, fold_mean, fold_std, stack_gain,
    kaggle_minutes``) against ``best`` by the rules of :class:`DecisionParams` (first that fires wins)."""
    p = params
    mean, std, gain, minutes = row.get("fold_mean"), row.get("fold_std"), row.get("stack_gain"), \
        row.get("kaggle_minutes")
    if row.get("mode") in SUBSET_MODES:
        return "test more", f"a {row['mode']} run (trained on a subset): run full cross-validation"
    if mean is None or best is None:
        return "test more", "no fold mean" if mean is None else "no scored full-CV row to compare with"
    is_best = row.get("head_id") == best.head_id
    floor = best.fold_mean - p.prune_stds * best.fold_std
    if not is_best and mean < floor and (gain is None or gain <= p.min_gain):
        added = "unmeasured" if gain is None else f"{gain:+.4f}"
        return "prune", f"fold mean {mean:.4f} < {floor:.4f} (best {best.fold_mean:.4f} - {p.prune_stds:g} x " \
                        f"{best.fold_std:.4f}); stack gain {added}"
    if std is not None and std > p.replay_std_ratio * best.fold_std:
        return "replay first", f"fold std {std:.4f} > {p.replay_std_ratio:g} x best's {best.fold_std:.4f}"
    if minutes is not None and minutes > p.watch_share * p.budget_minutes:
        return "watch", f"{minutes:.1f} Kaggle minutes > {p.watch_share * p.budget_minutes:g} " \
                        f"({p.watch_share:.0%} of {p.budget_minutes:g})"
    if is_best:
        return "promote", f"the best full-CV fold mean ({mean:.4f})"
    if gain is not None and gain > p.min_gain:
        return "promote", f"stack gain {gain:+.4f} > {p.min_gain:g}"
    return "test more", "no rule fired"


# ---------------------------------------------------------------------------- pure parts
def worst_slice(slices: Sequence[dict] | None, headline: float | None,
                min_windows: int = 10) -> tuple[str, float, float | None] | None:
    """``(slice=value, auc, auc - headline)`` of the lowest-AUC slice of kind :data:`SLICE_KINDS` with at least
    ``min_windows`` windows and a defined AUC (ties: first stored), or None when there is none."""
    best = None
    for s in slices or []:
        auc = s.get("auc")
        if (s.get("slice") not in SLICE_KINDS or str(s.get("value")) in UNKNOWN_SLICE_VALUES
                or auc is None or not math.isfinite(auc) or not s.get("n_classes")
                or (s.get("n_windows") or 0) < min_windows):
            continue
        if best is None or auc < best[1]:
            best = (f"{s['slice']}={s['value']}", float(auc))
    if best is None:
        return None
    return best[0], best[1], None if headline is None else best[1] - headline


def pareto_front(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Ids of the points ``(id, cost, score)`` that no other point dominates (cost <= and score >=, one strictly):
    the cheapest way to each score."""
    front = set()
    for pid, cost, score in points:
        if not any((c <= cost and s >= score) and (c < cost or s > score) for _, c, s in points):
            front.add(pid)
    return front


def config_hash_of(head_id: str) -> str:
    """The config hash in a head id (``<kind>-<hash>``)."""
    return head_id.rpartition("-")[2] or head_id


def _json(value) -> object:
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"experiments row: JSON value {value[:60]!r} does not parse ({exc})") from exc


# ---------------------------------------------------------------------------- the rows
# column -> cell text of a value (the CSV and the page show the same text)
def _fixed(decimals: int, sign: bool = False):
    def show(v) -> str:
        return "" if v is None else format(v, f"{'+' if sign else ''}.{decimals}f")
    return show


def _text(v) -> str:
    return "" if v is None else str(v)


# the decision first after the id: it is what the page is for (the reason, with the rule's numbers, at the end)
COLUMNS: dict[str, object] = {
    "head_id": _text, "decision": _text, "mode": _text, "head": _text, "tag": _text, "features": _text,
    "fold_mean": _fixed(4), "fold_std": _fixed(4), "pooled": _fixed(4), "rare_auc": _fixed(4),
    "worst_slice": _text, "worst_slice_auc": _fixed(4), "worst_slice_gap": _fixed(4, True),
    "per_file_s": _fixed(3), "kaggle_minutes": _fixed(1), "corr_best": _fixed(3), "stack_gain": _fixed(4, True),
    "question": _text, "answer": _text, "verdict": _text, "teacher_id": _text, "student_flag": _text,
    "track": _text, "reason": _text,
}
NUMERIC = {c for c, f in COLUMNS.items() if f is not _text}


@dataclass
class DashboardRow:
    head_id: str
    mode: str
    head: str | None = None
    tag: str | None = None
    features: str | None = None
    fold_mean: float | None = None
    fold_std: float | None = None
    pooled: float | None = None
    rare_auc: float | None = None
    worst_slice: str | None = None
    worst_slice_auc: float | None = None
    worst_slice_gap: float | None = None
    per_file_s: float | None = None
    kaggle_minutes: float | None = None
    corr_best: float | None = None
    stack_gain: float | None = None
    question: str | None = None
    answer: str | None = None
    verdict: str | None = None
    teacher_id: str | None = None
    student_flag: str | None = None
    track: str | None = None
    decision: str = ""
    reason: str = ""
    # not columns: what the sections below the table use
    answered_at: str | None = None
    track_info: dict | None = None
    flagged: bool = False

    def cells(self) -> dict[str, str]:
        """The row's text per :data:`COLUMNS` (what the CSV holds and the page shows)."""
        values = asdict(self)
        return {c: show(values[c]) for c, show in COLUMNS.items()}


@dataclass
class Dashboard:
    store: Path
    rows: list[DashboardRow]
    best: Best | None
    best_stack: str | None             # the stack the gains are measured against (None: "pair" method)
    gain_method: str | None            # key of GAIN_METHOD; None when gains were not computed
    params: DashboardParams
    notes: list[str] = field(default_factory=list)
    # every asked question, newest first (models.experiments.search_log: the experiments rows' and the runs'
    # that write no row, e.g. pseudo)
    log: list[dict] = field(default_factory=list)

    def row(self, head_id: str) -> DashboardRow:
        return next(r for r in self.rows if r.head_id == head_id)


def _experiments(store) -> list[dict]:
    """Every experiments row with its mode, full first then by fold mean (as the leaderboard ranks them)."""
    from models.experiments import TABLE, ranked

    if not store.has_table(TABLE):
        return []
    board = ranked(store).to_pylist()
    rows = {r["head_id"]: r for r in store.sql(f"SELECT * FROM {TABLE}").to_pylist()}
    return [{**rows[b["head_id"]], "mode": b["mode"]} for b in board if b["head_id"] in rows]


def _base_row(e: dict, params: DashboardParams) -> DashboardRow:
    slices = _json(e.get("slices"))
    headline = finite_or_none(e.get("fold_mean"))
    worst = worst_slice(slices, headline, params.min_slice_windows)
    cost = _json(e.get("predict_cost")) or {}
    track = _json(e.get("track"))
    answered = e.get("answered_at")
    return DashboardRow(
        head_id=e["head_id"], mode=e["mode"], head=e.get("head"), tag=e.get("tag"), features=e.get("features"),
        fold_mean=headline, fold_std=finite_or_none(e.get("fold_std")), pooled=finite_or_none(e.get("oof_auc")),
        rare_auc=finite_or_none(e.get("rare_auc")),
        worst_slice=worst[0] if worst else None, worst_slice_auc=worst[1] if worst else None,
        worst_slice_gap=worst[2] if worst else None,
        per_file_s=finite_or_none(cost.get("per_file_s")), kaggle_minutes=finite_or_none(cost.get("kaggle_minutes")),
        question=e.get("question"), answer=e.get("answer"), verdict=e.get("verdict"), teacher_id=e.get("teacher_id"),
        track=track.get("track") if isinstance(track, dict) else None,
        track_info=track if isinstance(track, dict) else None,
        answered_at=None if answered is None else str(answered))


def _best(rows: list[DashboardRow]) -> Best | None:
    """The best full-CV row (the leaderboard's first full row with a fold mean)."""
    for r in rows:
        if r.mode == "full" and r.fold_mean is not None:
            return Best(r.head_id, r.fold_mean, r.fold_std or 0.0)
    return None


def _student_flags(rows: list[DashboardRow], slices: dict[str, list], notes: list[str]) -> None:
    """Flag students whose largest slice drop against their teacher exceeds their headline drop
    (``models.subgroups.compare_slices``: its rules, sizes and tolerance)."""
    students = [r for r in rows if r.teacher_id]
    if not students:
        return
    from models.subgroups import compare_slices

    means = {r.head_id: r.fold_mean for r in rows}
    for r in students:
        if r.teacher_id not in slices:
            r.student_flag = f"teacher {r.teacher_id} has no experiments row"
            continue
        cmp = compare_slices(slices[r.teacher_id], slices[r.head_id], means[r.teacher_id], r.fold_mean)
        r.flagged = bool(cmp.flagged)
        worst, head = cmp.largest_drop, cmp.headline_drop
        where = f"{worst.slice}={worst.value} {worst.drop:+.4f}" if worst else "none comparable"
        r.student_flag = (f"{'FLAGGED' if r.flagged else 'ok'}: largest slice drop {where}, headline drop "
                          f"{'n/a' if head is None else f'{head:+.4f}'} (tolerance {cmp.tolerance:g})")


# ---------------------------------------------------------------------------- correlation and stack gain
def _gains_and_correlations(root: Path, rows: list[DashboardRow], best: Best, params: DashboardParams,
                            notes: list[str]) -> tuple[str | None, str | None]:
    """Fill ``corr_best`` and ``stack_gain`` of the rows that have an OOF table; returns (best stack id, method)."""
    from featurestore.windows import SOUNDSCAPE
    from models.bundle import bundle_dir
    from stack.bundle import StackConfig, head_config
    from stack.inputs import available_heads, head_correlation, load_inputs
    from stack.stackers import cross_validate_stack, make_stack_params

    present = set(available_heads(root))
    if best.head_id not in present:
        notes.append(f"no OOF table for the best row {best.head_id}: correlation and stack gain left blank")
        return None, None
    recipe = None                                   # (stack id, base heads, zero-shot, kind, params, post, focal)
    for r in rows:
        if r.mode == "full" and r.head == "stack" and r.fold_mean is not None and r.head_id in present \
                and bundle_dir(root, r.head_id).is_dir():
            config = head_config(root, r.head_id)
            if isinstance(config, StackConfig):
                params_ = make_stack_params(config.stacker, config.params)
                recipe = (r.head_id, list(config.base_heads), list(config.zero_shot), config.stacker, params_,
                          list(config.post), bool(getattr(params_, "use_focal", False)))
                break
    method = "stack" if recipe else "pair"
    if recipe is None:
        recipe = (None, [best.head_id], [], "ridge", make_stack_params("ridge", None), [], False)
    stack_id, base, zero_shot, kind, sparams, post, focal = recipe
    reference: dict[str, float] = {}

    def cv(data, heads: list[str]) -> float:
        key = ",".join(heads)
        if key not in reference:
            reference[key] = cross_validate_stack(data.select([*heads, *zero_shot]), kind, sparams, post).fold_mean
        return reference[key]

    failed = []
    for r in rows:
        if r.head_id not in present:
            continue
        wanted = list(dict.fromkeys([best.head_id, *base, r.head_id]))
        try:
            data = load_inputs(root, wanted, zero_shot=zero_shot, focal=focal)
        except (DataError, UserInputError) as exc:
            failed.append(f"{r.head_id}: {exc}")
            continue
        labelled = (data.folds >= 0) & (data.source == SOUNDSCAPE)
        pair = data.select([best.head_id, r.head_id]) if r.head_id != best.head_id else data.select([best.head_id])
        r.corr_best = 1.0 if r.head_id == best.head_id else finite_or_none(head_correlation(pair, labelled).matrix[0, 1])
        if not params.stack_gain or r.mode != "full" or r.head == "stack":
            continue
        try:
            if r.head_id in base:
                rest = [h for h in base if h != r.head_id]
                if not rest and not zero_shot:
                    continue                        # the recipe without its only source: nothing to compare
                r.stack_gain = finite_or_none(cv(data, base) - cv(data, rest))
            else:
                r.stack_gain = finite_or_none(cv(data, [*base, r.head_id]) - cv(data, base))
        except StackError as exc:
            failed.append(f"{r.head_id}: stack gain not computed ({exc})")
    if failed:
        notes.append(f"{len(failed)} row(s) without correlation or stack gain: " + "; ".join(failed[:5]))
    return stack_id, (method if params.stack_gain else None)


# ---------------------------------------------------------------------------- gathering
def build_dashboard(store_dir: str | os.PathLike, params: DashboardParams = DashboardParams()) -> Dashboard:
    """Every row of the page, its numbers and its decision, from the store (read-only) and its OOF tables."""
    from featurestore.store import FeatureStore

    params.check()
    root = Path(store_dir).expanduser().resolve()
    from models.experiments import search_log

    with FeatureStore.open(root, create=False, read_only=True) as store:
        experiments = _experiments(store)
        log = search_log(store)
    if not experiments:
        raise StoreError(f"no experiments in {root}; run pipelines.train first")
    rows = [_base_row(e, params) for e in experiments]
    notes: list[str] = []
    kinds = {s["slice"] for e in experiments for s in (_json(e.get("slices")) or [])}
    lacking = [k for k in SLICE_KINDS if k not in kinds]
    if lacking:
        notes.append(f"no row stores {' or '.join(lacking)} slices (rows trained before they were recorded): the "
                     "worst slice is over the kinds stored; retrain to get them")
    _student_flags(rows, {e["head_id"]: _json(e.get("slices")) or [] for e in experiments}, notes)
    best = _best(rows)
    stack_id, method = (None, None)
    if best is not None:
        stack_id, method = _gains_and_correlations(root, rows, best, params, notes)
    for r in rows:
        r.decision, r.reason = decide(asdict(r), best, params.decisions)
    return Dashboard(root, rows, best, stack_id, method, params, notes, log)


def unmeasured_heads(store_dir: str | os.PathLike) -> list[str]:
    """Head ids of the store's rows with no stored ``predict_cost`` (what ``--audio`` measures)."""
    from featurestore.store import FeatureStore

    with FeatureStore.open(Path(store_dir), create=False, read_only=True) as store:
        return [e["head_id"] for e in _experiments(store) if e.get("predict_cost") is None]


# ---------------------------------------------------------------------------- CSV
def render_csv(dash: Dashboard) -> str:
    """One line per row, the :data:`COLUMNS` as the page shows them."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in dash.rows:
        writer.writerow(r.cells())
    return buf.getvalue()


# ---------------------------------------------------------------------------- HTML
SECTIONS = (("rules", "Decision rules"), ("models", "Heads and stacks (full cross-validation)"),
            ("other-runs", "Other runs: fast, replay, CNN"), ("pareto", "Fold mean vs predict cost per file"),
            ("search-log", "Search log"), ("ideas", "Ideas: reproduced / rejected / postponed"),
            ("tracks", "Submission tracks"), ("students", "Students and their teachers' subgroups"))

EXTRA_CSS = """<style>body{max-width:1600px}table.sortable th{cursor:pointer;white-space:nowrap}
table.sortable th:after{content:" \\2195";color:#aaa}table.sortable td{white-space:nowrap}
table.sortable td.reason,table.sortable td.question,table.sortable td.answer,table.sortable td.student-flag{
white-space:normal;min-width:16em;max-width:28em}
td.unmeasured:after{content:"run with --audio";color:#999;font-style:italic}
tr.d-promote td.decision{background:#dfd}tr.d-prune td.decision{background:#fdd}
tr.d-watch td.decision,tr.d-replay-first td.decision{background:#ffd}tr.flagged td.student{background:#fdd}
svg .point{fill:#57a}svg .point.pareto{fill:#c33}svg text{font-size:11px}</style>"""

# click a header: sort by that column (numbers as numbers, blanks last; a second click reverses)
SORT_JS = """<script>
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('thead th').forEach(function (o) { delete o.dataset.dir; });
      th.dataset.dir = asc ? 'asc' : 'desc';
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var numeric = th.dataset.type === 'num';
      function key(r) {
        var t = r.cells[i].textContent;
        if (t === '') return null;
        return numeric ? parseFloat(t) : t;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
        var c = numeric ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>"""


def _table(rows: list[DashboardRow], table_id: str) -> str:
    if not rows:
        return "<p class='none'>no rows</p>"
    head = "".join(f"<th data-col='{c}' data-type='{'num' if c in NUMERIC else 'text'}'>{html.escape(c)}</th>"
                   for c in COLUMNS)
    body = []
    for r in rows:
        cells = r.cells()
        tds = []
        for c, text in cells.items():
            cls = [c.replace("_", "-")]
            if c == "decision":
                cls.append("decision")
            if c == "student_flag":
                cls.append("student")
            if c in ("per_file_s", "kaggle_minutes") and r.per_file_s is None and r.mode == "full":
                cls.append("unmeasured")
            tds.append(f"<td class='{' '.join(cls)}'>{html.escape(text)}</td>")
        classes = f"d-{r.decision.replace(' ', '-')}" + (" flagged" if r.flagged else "")
        body.append(f"<tr class='{classes}' data-head='{html.escape(r.head_id)}'>{''.join(tds)}</tr>")
    return (f"<div class='scroll'><table id='{table_id}' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _rules_html(dash: Dashboard) -> str:
    p = dash.params
    items = "".join(f"<li><b>{html.escape(d)}</b> when {html.escape(t)}</li>" for d, t in p.decisions.rules())
    best = (f"<p>Best full-CV row: <code>{html.escape(dash.best.head_id)}</code>, fold mean "
            f"{dash.best.fold_mean:.4f} ± {dash.best.fold_std:.4f}.</p>" if dash.best else
            "<p class='note'>no scored full-CV row: every decision is 'test more'.</p>")
    if dash.gain_method == "stack":
        gain = f"<p>Current best stack: <code>{html.escape(str(dash.best_stack))}</code>. " \
               f"{html.escape(GAIN_METHOD['stack'])}</p>"
    elif dash.gain_method == "pair":
        gain = f"<p>{html.escape(GAIN_METHOD['pair'])}</p>"
    else:
        gain = "<p>Stack gain not computed (blank).</p>"
    params = ", ".join(f"{k} = {v:g}" for k, v in asdict(p.decisions).items())
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in dash.notes)
    return (f"{best}<p>Rules, tried in order (the first that fires decides; its numbers are in the <i>reason</i> "
            f"column):</p><ol id='rule-list'>{items}</ol><p>Parameters: <code>{html.escape(params)}</code>.</p>{gain}"
            "<p>corr_best: mean over classes of the Spearman correlation between the row's OOF scores and the best "
            "row's, on the labelled soundscape windows in a fold (low: worth stacking). worst_slice: the lowest-AUC "
            f"stored site / hour-bucket / overlap slice with at least {p.min_slice_windows} windows; gap = its AUC - "
            "fold mean. per_file_s / kaggle_minutes: the predict cost measured once on real audio by the planner "
            "(submit.plan) and stored on the row; blank until measured (python -m pipelines.dashboard --audio DIR)."
            f"</p>{notes}")


def _plot_svg(rows: list[DashboardRow]) -> str:
    """Fold mean vs predict seconds per 60-s file, the Pareto front (cheapest way to each score) in red and joined."""
    pts = [(r.head_id, r.per_file_s, r.fold_mean) for r in rows if r.per_file_s is not None and r.fold_mean is not None]
    if not pts:
        return ("<p class='none'>no row has both a fold mean and a measured predict cost: run "
                "<code>python -m pipelines.dashboard --store DIR --out FILE --audio DIR</code></p>")
    front = pareto_front(pts)
    W, H, L, B, T, R = 640, 360, 70, 40, 15, 20
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 == x0 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.01, y1 + 0.01) if y1 == y0 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

    def X(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * (W - L - R)

    def Y(v: float) -> float:
        return H - B - (v - y0) / (y1 - y0) * (H - B - T)

    parts = [f"<svg id='pareto-plot' xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
             f"viewBox='0 0 {W} {H}'><rect x='{L}' y='{T}' width='{W - L - R}' height='{H - B - T}' fill='none' "
             "stroke='#999'/>"]
    for v in np.linspace(x0, x1, 5):
        parts.append(f"<text x='{X(v):.1f}' y='{H - B + 14}' text-anchor='middle'>{v:.2f}</text>")
    for v in np.linspace(y0, y1, 5):
        parts.append(f"<text x='{L - 4}' y='{Y(v) + 4:.1f}' text-anchor='end'>{v:.3f}</text>")
    parts.append(f"<text x='{(L + W - R) / 2}' y='{H - 6}' text-anchor='middle'>predict seconds per 60-s file</text>")
    parts.append(f"<text x='14' y='{(T + H - B) / 2}' text-anchor='middle' transform='rotate(-90 14 "
                 f"{(T + H - B) / 2})'>fold mean</text>")
    line = sorted((c, s) for pid, c, s in pts if pid in front)
    parts.append("<polyline fill='none' stroke='#c33' stroke-dasharray='4 3' points='"
                 + " ".join(f"{X(c):.1f},{Y(s):.1f}" for c, s in line) + "'/>")
    for pid, c, s in pts:
        cls = "point pareto" if pid in front else "point"
        parts.append(f"<circle class='{cls}' data-head='{html.escape(pid)}' cx='{X(c):.1f}' cy='{Y(s):.1f}' r='5'>"
                     f"<title>{html.escape(pid)}: fold mean {s:.4f}, {c:.3f} s per file"
                     f"{' (Pareto front)' if pid in front else ''}</title></circle>")
    parts.append("</svg>")
    listing = "".join(f"<li><code>{html.escape(pid)}</code>: {s:.4f} at {c:.3f} s/file</li>"
                      for pid, c, s in sorted(pts, key=lambda p: p[1]) if pid in front)
    return ("<p>Each measured row; red, joined: the Pareto front (no other row is both cheaper and better).</p>"
            + "".join(parts) + f"<ul id='pareto-front'>{listing}</ul>")


def _search_log_html(log: list[dict]) -> str:
    if not log:
        return ("<p class='none'>no question recorded: pass --question \"...\" to train, tune, stack, pseudo, "
                "selftrain, distill or cnn, and record what was learned with python -m pipelines.answer</p>")
    body = "".join(f"<tr><td><code>{html.escape(r['head_id'])}</code></td><td>{html.escape(str(r['kind'] or ''))}</td>"
                   f"<td>{html.escape(config_hash_of(r['head_id']))}</td><td>{html.escape(r['question'] or '')}</td>"
                   f"<td>{html.escape(r['answer'] or '')}</td><td>{html.escape(r['verdict'] or '')}</td>"
                   f"<td>{html.escape(str(r['answered_at'] or ''))}</td></tr>" for r in log)
    return ("<div class='scroll'><table id='search-log-table'><thead><tr><th>head_id / run</th><th>kind</th><th>config hash</th>"
            "<th>question</th><th>answer</th><th>verdict</th><th>answered at</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _ideas_html(log: list[dict]) -> str:
    from models.experiments import ANSWER_VERDICTS

    out = []
    for verdict in ANSWER_VERDICTS:
        items = "".join(f"<li>{html.escape(r['question'] or '(no question)')} - {html.escape(r['answer'] or '')} "
                        f"(<code>{html.escape(r['head_id'])}</code>)</li>" for r in log if r["verdict"] == verdict)
        out.append(f"<h3>{verdict}</h3><ul class='ideas' data-verdict='{verdict}'>"
                   f"{items or '<li class=none>none</li>'}</ul>")
    return "".join(out)


def _tracks_html(rows: list[DashboardRow], params: DecisionParams) -> str:
    tracked = [r for r in rows if r.track_info]
    if not tracked:
        return "<p class='none'>no head exported on a track yet: python -m pipelines.export --track safe|bold</p>"
    body = []
    for r in tracked:
        t = r.track_info or {}
        minutes = finite_or_none(t.get("kaggle_minutes"))
        headroom = "" if minutes is None else f"{params.budget_minutes - minutes:.1f}"
        body.append(f"<tr data-track='{html.escape(str(t.get('track')))}'><td>{html.escape(str(t.get('track')))}</td>"
                    f"<td><code>{html.escape(r.head_id)}</code></td><td>{_fixed(4)(r.fold_mean)}</td>"
                    f"<td>{html.escape(str(t.get('bundle') or ''))}</td>"
                    f"<td>{'' if minutes is None else f'{minutes:.1f}'}</td><td>{headroom}</td>"
                    f"<td>{html.escape(str(t.get('exported_at') or ''))}</td><td>{html.escape(r.decision)}</td></tr>")
    return (f"<div class='scroll'><table id='tracks-table'><thead><tr><th>track</th><th>head_id</th><th>fold mean</th>"
            f"<th>bundle</th><th>Kaggle minutes</th><th>headroom of {params.budget_minutes:g} min</th>"
            f"<th>exported at</th><th>decision</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _students_html(rows: list[DashboardRow]) -> str:
    students = [r for r in rows if r.teacher_id]
    if not students:
        return "<p class='none'>no student (distill, selftrain) recorded with its teacher</p>"
    fm = {r.head_id: r.fold_mean for r in rows}
    body = "".join(f"<tr class='{'flagged' if r.flagged else ''}'><td><code>{html.escape(r.head_id)}</code></td>"
                   f"<td><code>{html.escape(r.teacher_id or '')}</code></td><td>{_fixed(4)(r.fold_mean)}</td>"
                   f"<td>{_fixed(4)(fm.get(r.teacher_id or ''))}</td><td class='student'>"
                   f"{html.escape(r.student_flag or '')}</td></tr>" for r in students)
    return ("<p>A student is flagged when its worst slice (site, hour bucket, taxon group, frequency bucket) drops "
            "more against its teacher than its headline does (models.subgroups.compare_slices).</p>"
            "<div class='scroll'><table id='students-table'><thead><tr><th>student</th><th>teacher</th>"
            "<th>student fold mean</th><th>teacher fold mean</th><th>subgroup check</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def render_html(dash: Dashboard) -> str:
    """The self-contained page (inline CSS, JS and SVG: nothing is fetched)."""
    full = [r for r in dash.rows if r.mode == "full"]
    other = [r for r in dash.rows if r.mode != "full"]
    bodies = {
        "rules": _rules_html(dash),
        "models": _table(full, "models-table"),
        "other-runs": ("<p>Fast and replay runs were trained on a subset (not comparable with full CV); CNN students "
                       "are fully cross-validated but are used through --extractor cnn.</p>" + _table(other, "other-table")),
        "pareto": _plot_svg(dash.rows),
        "search-log": _search_log_html(dash.log),
        "ideas": _ideas_html(dash.log),
        "tracks": _tracks_html(dash.rows, dash.params.decisions),
        "students": _students_html(dash.rows) + SORT_JS,
    }
    counts = {d: sum(r.decision == d for r in dash.rows) for d in DECISIONS}
    lead = EXTRA_CSS + ("<p id='decision-counts'>" + ", ".join(f"{d}: {n}" for d, n in counts.items())
                        + f" ({len(dash.rows)} rows, store <code>{html.escape(str(dash.store))}</code>)</p>")
    return render_page("Campaign dashboard", "python -m pipelines.dashboard",
                       [(sid, title, bodies[sid]) for sid, title in SECTIONS], lead=lead)


def write_dashboard(store_dir: str | os.PathLike, out_path: str | os.PathLike, *, fmt: str = "html",
                    params: DashboardParams = DashboardParams()) -> tuple[Path, Dashboard]:
    """Build the dashboard and write it (``fmt`` html or csv) atomically to ``out_path`` (its folder must exist:
    checked before any work); returns the path and the dashboard."""
    if fmt not in FORMATS:
        raise UserInputError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_out(out_path)
    dash = build_dashboard(store_dir, params)
    text = render_html(dash) if fmt == "html" else render_csv(dash)
    return write_page(out_path, text), dash


def summary_line(path: Path, dash: Dashboard) -> str:
    counts = ", ".join(f"{d} {n}" for d in DECISIONS if (n := sum(r.decision == d for r in dash.rows)))
    best = f"best {dash.best.head_id} {dash.best.fold_mean:.4f}" if dash.best else "no scored full-CV row"
    unmeasured = sum(r.per_file_s is None for r in dash.rows)
    return (f"dashboard written to {path}: {len(dash.rows)} rows ({counts}); {best}"
            + (f"; {unmeasured} without a measured predict cost (--audio DIR)" if unmeasured else ""))
